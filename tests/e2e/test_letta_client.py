"""The real ``letta-client`` SDK, unchanged, against a real ``convoy serve``."""

from __future__ import annotations

from letta_client import Letta

from tests.conftest import Convoy


def test_stream_a_reply_with_letta_client(convoy: Convoy) -> None:
    client = Letta(base_url=convoy.url, api_key="unused-in-open-mode")
    agent = client.agents.create(name="e2e-echo", system="You repeat what you hear.")
    assert agent.llm_config.model == "echo"
    conversation = client.conversations.create(agent_id=agent.id)
    assert conversation.agent_id == agent.id

    text = "the quick brown fox jumps over the lazy dog"
    events = list(client.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": text}]))

    kinds = [e.message_type for e in events]
    assert kinds[0] == "ping"
    assert kinds[-2:] == ["stop_reason", "usage_statistics"]
    (answer,) = [e for e in events if e.message_type == "assistant_message"]
    assert answer.content == text, "step streaming, Letta's default: the whole message at once"
    stop = events[-2]
    assert stop.stop_reason == "end_turn"
    usage = events[-1]
    assert usage.completion_tokens == len(text.split())

    run_id = events[0].run_id
    assert run_id and all(e.run_id == run_id for e in events)
    run = client.runs.retrieve(run_id)
    assert run.status == "completed"
    assert run.stop_reason == "end_turn"
    assert run.conversation_id == conversation.id
    assert run.ttft_ns and run.total_duration_ns and run.ttft_ns <= run.total_duration_ns

    assert client.agents.retrieve(agent.id).name == "e2e-echo"
    assert agent.id in [a.id for a in client.agents.list()]
    assert client.conversations.retrieve(conversation.id).id == conversation.id

    tokens = list(
        client.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": text}], stream_tokens=True)
    )
    deltas = [e for e in tokens if e.message_type == "assistant_message"]
    # One delta per word, but words that reach the host together may come as one (runtime.stream.writer).
    assert 1 <= len(deltas) <= len(text.split()), "stream_tokens: word deltas"
    assert "".join(d.content for d in deltas) == text
    assert len({d.id for d in deltas}) == 1 and len({d.otid for d in deltas}) == 1, "deltas of one message share id and otid"
