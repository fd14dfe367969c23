"""The Anthropic Messages request a history becomes (``runtime.providers.anthropic_messages``)."""

from __future__ import annotations

from anthropic import AsyncAnthropic

from runtime.providers.anthropic_messages import AnthropicAdapter
from runtime.providers.events import ChatMessage, LLMRequest, ReasoningBlock


def test_an_answer_of_whitespace_alone_is_not_sent_back() -> None:
    """Anthropic refuses a text block of whitespace alone and an empty assistant turn (400): a
    stored answer like that must not make every later request of the conversation fail."""
    adapter = AnthropicAdapter(AsyncAnthropic(api_key="unused"), provider="anthropic", default_max_tokens=1024)
    history = [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", " \n "),
        ChatMessage("user", "still there?"),
        ChatMessage("assistant", "  ", reasoning=(ReasoningBlock("thinking aloud"),)),  # unsigned: not sent back
        ChatMessage("user", "hello?"),
    ]
    body = adapter.payload(LLMRequest(model="claude-x", system="s", messages=history))
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "still there?"},
        {"role": "user", "content": "hello?"},
    ]
