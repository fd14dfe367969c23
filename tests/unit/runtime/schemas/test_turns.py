"""How a send describes its turn and its run (``runtime.schemas.turns``): no Redis needed."""

from __future__ import annotations

from runtime.schemas.agents import ConversationRef
from runtime.schemas.requests import SendMessageRequest
from runtime.schemas.turns import run_of, turn_of

CONVERSATION = ConversationRef(id="conv-1", tenant="acme", agent_id="agent-1")


def test_a_reply_read_whole_asks_for_no_token_deltas() -> None:
    streamed = SendMessageRequest(input="hi", stream_tokens=True)
    whole = SendMessageRequest(input="hi", stream_tokens=True, streaming=False)
    assert turn_of(CONVERSATION, streamed, "run-1").stream_tokens
    assert not turn_of(CONVERSATION, whole, "run-1").stream_tokens


def test_the_run_starts_created_in_its_conversations_tenant_with_its_type() -> None:
    body = SendMessageRequest(input="hi", background=True, include_return_message_types=["assistant_message"])
    run = run_of(CONVERSATION, body, "run-1", run_type=None, callback_url=None)
    assert (run.id, run.conversation_id, run.agent_id, run.tenant) == ("run-1", "conv-1", "agent-1", "acme")
    assert run.status == "created" and run.background
    assert run.metadata == {"run_type": "streaming"}
    assert run.request_config is not None and run.request_config.include_return_message_types == ["assistant_message"]
    blocking = SendMessageRequest(input="hi", streaming=False)
    assert run_of(CONVERSATION, blocking, "run-2", run_type=None, callback_url=None).metadata == {"run_type": "blocking"}
    typed = run_of(CONVERSATION, blocking, "run-3", run_type="send_message_async", callback_url="https://example.com/done")
    assert typed.metadata == {"run_type": "send_message_async"} and typed.callback_url == "https://example.com/done"
