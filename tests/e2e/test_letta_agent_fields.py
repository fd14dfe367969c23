"""Letta's agent create and update bodies, through the real ``letta-client``: each field a Letta
program sets is honoured, or refused with a message naming it, never dropped (an agent built
without what the program asked for answers differently, with no error to say so)."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
from letta_client import BadRequestError, Letta, UnprocessableEntityError
from letta_client.types import AgentState

from bench import upstream as fp
from tests.conftest import Convoy


@pytest.fixture(scope="module")
def letta(convoy: Convoy) -> Letta:
    return Letta(base_url=convoy.url, api_key="unused-in-open-mode", max_retries=0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def llm_config(model: str, **more: Any) -> dict[str, Any]:
    """An ``llm_config`` as Letta programs write it (the fields Letta requires, and its endpoint)."""
    return {
        "model": model,
        "model_endpoint_type": "openai",
        "model_endpoint": "https://api.openai.com/v1",
        "context_window": 16_000,
        **more,
    }


def settings_of(agent: AgentState) -> dict[str, Any]:
    """The agent's ``model_settings`` as Convoy sent them."""
    return cast(dict[str, Any], agent.to_dict()["model_settings"])


REFUSED_ON_CREATE = [
    pytest.param({"agent_type": "memgpt_v2_agent"}, "agent_type 'memgpt_v2_agent'", id="agent_type"),
    pytest.param({"block_ids": ["block-0b7f"]}, "block_ids", id="block_ids"),
    pytest.param({"source_ids": ["source-1"]}, "source_ids", id="source_ids"),
    pytest.param({"folder_ids": ["folder-1"]}, "folder_ids", id="folder_ids"),
    pytest.param({"identity_ids": ["identity-1"]}, "identity_ids", id="identity_ids"),
    pytest.param({"include_default_source": True}, "include_default_source", id="include_default_source"),
    pytest.param({"from_template": "support-bot:latest"}, "from_template", id="from_template"),
    pytest.param({"enable_sleeptime": True}, "enable_sleeptime", id="enable_sleeptime"),
    pytest.param({"message_buffer_autoclear": True}, "message_buffer_autoclear", id="message_buffer_autoclear"),
    pytest.param({"secrets": {"API_KEY": "s3cret"}}, "secrets", id="secrets"),
    pytest.param(
        {"tool_exec_environment_variables": {"API_KEY": "s3cret"}}, "tool_exec_environment_variables", id="tool_exec_env"
    ),
    pytest.param({"compaction_settings": {"mode": "sliding_window"}}, "compaction_settings", id="compaction_settings"),
    pytest.param({"reasoning": True}, "reasoning", id="reasoning"),
    pytest.param({"max_reasoning_tokens": 2048}, "max_reasoning_tokens", id="max_reasoning_tokens"),
    pytest.param(
        {"llm_config": llm_config("gpt-4o-mini", frequency_penalty=0.5)}, "llm_config.frequency_penalty", id="llm_penalty"
    ),
    pytest.param({"llm_config": llm_config("gpt-4o-mini", return_logprobs=True)}, "llm_config.return_logprobs", id="llm_logprobs"),
    pytest.param(
        {"model": "echo/echo", "llm_config": llm_config("gpt-4o-mini")}, "model ('echo/echo') and llm_config.model", id="two_models"
    ),
    pytest.param(
        {"context_window_limit": 8_000, "llm_config": llm_config("gpt-4o-mini")}, "llm_config.context_window", id="two_windows"
    ),
    pytest.param(
        {"model_settings": {"temperature": 0.9}, "llm_config": llm_config("gpt-4o-mini", temperature=0.2)},
        "llm_config.temperature and model_settings.temperature",
        id="two_temperatures",
    ),
    pytest.param({"timezone": "Mars/Olympus_Mons"}, "'Mars/Olympus_Mons' is not an IANA time zone name", id="timezone"),
    pytest.param(
        {"initial_message_sequence": [{"role": "system", "content": "Always answer in French."}]},
        "role 'system'",
        id="initial_system_message",
    ),
    pytest.param(
        {
            "initial_message_sequence": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]}
            ]
        },
        "content parts of type image:",
        id="initial_image_part",
    ),
]


@pytest.mark.parametrize(("fields", "named"), REFUSED_ON_CREATE)
def test_create_refuses_what_would_change_the_agent(letta: Letta, fields: dict[str, Any], named: str) -> None:
    name = unique("refused")
    with pytest.raises(UnprocessableEntityError) as refused:
        letta.agents.create(name=name, **fields)
    assert named in str(refused.value)
    assert list(letta.agents.list(name=name)) == [], "nothing is created"


REFUSED_ON_UPDATE = [
    pytest.param({"message_buffer_autoclear": True}, "message_buffer_autoclear", UnprocessableEntityError, id="autoclear"),
    pytest.param({"block_ids": ["block-0b7f"]}, "block_ids", UnprocessableEntityError, id="block_ids"),
    pytest.param({"hidden": True}, "hidden", UnprocessableEntityError, id="hidden"),
    pytest.param({"last_stop_reason": "end_turn"}, "last_stop_reason", UnprocessableEntityError, id="last_stop_reason"),
    pytest.param({"llm_config": llm_config("gpt-4o-mini", strict=True)}, "llm_config.strict", UnprocessableEntityError, id="llm_strict"),
    pytest.param({"message_ids": []}, "message_ids cannot be changed", BadRequestError, id="message_ids"),
    pytest.param({"timezone": "Europe/Atlantis"}, "not an IANA time zone name", UnprocessableEntityError, id="timezone"),
    pytest.param(
        {"extra_body": {"initial_message_sequence": [{"role": "user", "content": "hi"}]}},  # not in Letta's update
        "initial_message_sequence",
        UnprocessableEntityError,
        id="initial_message_sequence",
    ),
]


@pytest.mark.parametrize(("fields", "named", "error"), REFUSED_ON_UPDATE)
def test_update_refuses_what_would_change_the_agent(
    letta: Letta, fields: dict[str, Any], named: str, error: type[Exception]
) -> None:
    agent = letta.agents.create(name=unique("kept"))
    with pytest.raises(error) as refused:
        letta.agents.update(agent.id, **fields)
    assert named in str(refused.value)
    assert letta.agents.retrieve(agent.id).updated_at == agent.updated_at, "nothing is changed"


def test_llm_config_gives_the_model_its_window_and_settings(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Hi."])))
    created = letta.agents.create(name=unique("llm"), llm_config=llm_config(model, max_tokens=300, temperature=0.2))  # type: ignore[arg-type]

    agent = letta.agents.retrieve(created.id)
    assert (agent.model, agent.llm_config.handle) == (f"openai/{model}", f"openai/{model}")
    assert (agent.llm_config.context_window, agent.llm_config.max_tokens) == (16_000, 300)
    assert settings_of(agent)["temperature"] == 0.2

    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hello"}])
    (call,) = fake_provider.calls(model)
    assert (call.body["temperature"], call.body["max_completion_tokens"]) == (0.2, 300)


def test_llm_config_on_update_keeps_the_other_settings(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["Hi."])))
    agent = letta.agents.create(name=unique("moved"), tools=["add"], parallel_tool_calls=False)
    assert agent.model == "echo/echo"

    letta.agents.update(agent.id, llm_config=llm_config(model, context_window=20_000, temperature=0.3))  # type: ignore[arg-type]
    moved = letta.agents.retrieve(agent.id)
    assert (moved.model, moved.llm_config.context_window) == (f"openai/{model}", 20_000)
    settings = settings_of(moved)
    assert (settings["temperature"], settings["parallel_tool_calls"]) == (0.3, False)

    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hello"}])
    (call,) = fake_provider.calls(model)
    assert (call.body["temperature"], call.body["parallel_tool_calls"]) == (0.3, False)


def test_fields_that_cannot_change_the_answer_are_accepted(letta: Letta) -> None:
    """What Letta's own examples send, and values that ask for what Convoy does anyway."""
    agent = letta.agents.create(
        name=unique("as-letta"),
        agent_type="letta_v1_agent",
        embedding="openai/text-embedding-3-small",
        embedding_config={"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": "openai", "embedding_dim": 1536},
        include_base_tools=True,
        include_base_tool_rules=False,
        timezone="Europe/Paris",
        memory_blocks=[{"label": "human", "value": "The human's name is Ada."}],
        block_ids=[],
        enable_sleeptime=False,
        message_buffer_autoclear=False,
        initial_message_sequence=[],
        max_files_open=5,
    )
    reply = letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hello there"}])
    assert [m.content for m in reply.messages if m.message_type == "assistant_message"] == ["hello there"]

    current = letta.agents.retrieve(agent.id)
    letta.agents.update(
        agent.id,
        message_ids=current.message_ids,
        llm_config=current.llm_config.model_dump(exclude_none=True),  # type: ignore[arg-type]
        project_id="project-1",
        enable_sleeptime=False,
    )
    after = letta.agents.retrieve(agent.id)
    assert (after.message_ids, after.llm_config.handle) == (current.message_ids, "echo/echo"), "as it read them back"


def test_memory_blocks_read_back_as_letta_blocks(letta: Letta) -> None:
    """A block's flags, metadata and tags come back as sent (Letta's ``Block``); Letta Cloud's
    template bookkeeping is accepted."""
    agent = letta.agents.create(
        name=unique("blocks"),
        memory_blocks=[
            {
                "label": "policy",
                "value": "Refunds within 30 days.",
                "description": "The store's refund policy",
                "limit": 500,
                "read_only": True,
                "metadata": {"source": "handbook", "version": 3},
                "tags": ["policy", "refunds"],
                "hidden": False,
                "is_template": False,
                "preserve_on_migration": True,
                "project_id": "project-1",
            },
            {"label": "human", "value": "The human's name is Ada."},
        ],
    )
    retrieved = letta.agents.retrieve(agent.id)
    for blocks in (retrieved.blocks, retrieved.memory.blocks):
        policy, human = blocks
        assert (policy.label, policy.value, policy.description, policy.limit) == (
            "policy", "Refunds within 30 days.", "The store's refund policy", 500
        )
        assert (policy.read_only, policy.metadata, policy.tags, policy.hidden) == (
            True, {"source": "handbook", "version": 3}, ["policy", "refunds"], False
        )
        assert (human.label, human.read_only, human.metadata, human.tags) == ("human", False, None, None)


def test_timezone_is_stored_and_shown(letta: Letta) -> None:
    agent = letta.agents.create(name=unique("tz"), timezone="Europe/Paris")
    assert letta.agents.retrieve(agent.id).timezone == "Europe/Paris"
    letta.agents.update(agent.id, timezone="America/New_York")
    assert letta.agents.retrieve(agent.id).timezone == "America/New_York"
    letta.agents.update(agent.id, name=unique("renamed"))
    assert letta.agents.retrieve(agent.id).timezone == "America/New_York", "left as it was when not sent"
    assert letta.agents.retrieve(letta.agents.create(name=unique("no-tz")).id).timezone is None


def _texts(content: Any) -> str:
    """A Chat Completions message's text, whether a string or parts."""
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_initial_message_sequence_starts_the_agents_history(letta: Letta, fake_provider: fp.FakeProvider) -> None:
    model = unique("gpt")
    fake_provider.script(model, fp.Stream(fp.chat_text(model, ["You are Ada."])))
    agent = letta.agents.create(
        name=unique("seeded"),
        model=f"openai/{model}",
        initial_message_sequence=[
            {"role": "user", "content": "My name is Ada.", "otid": "otid-seed-1"},
            {"role": "assistant", "content": [{"type": "text", "text": "Nice to meet you, "}, {"type": "text", "text": "Ada."}]},
        ],
    )

    listed = list(letta.agents.messages.list(agent.id, order="asc"))
    kinds = [(m.message_type, getattr(m, "content", None)) for m in listed[1:]]
    assert listed[0].message_type == "system_message"
    assert kinds == [("user_message", "My name is Ada."), ("assistant_message", "Nice to meet you, Ada.")]
    assert listed[1].otid == "otid-seed-1"
    assert letta.agents.retrieve(agent.id).message_ids == [m.id for m in listed], "the agent's in-context messages"

    letta.agents.messages.create(agent.id, messages=[{"role": "user", "content": "Who am I?"}])
    (call,) = fake_provider.calls(model)
    sent = [(m["role"], _texts(m["content"])) for m in call.body["messages"] if m["role"] != "system"]
    assert sent == [("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada."), ("user", "Who am I?")]
