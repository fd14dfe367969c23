"""The soak's model: the one fake provider (``bench.upstream``), answering by what it is asked.

- a request offering tools whose last message is the user's calls the first tool once (the
  soak offers a client tool, so the run stops with ``requires_approval``);
- otherwise it answers with one word per word of the last user message (at least
  ``MIN_REPLY_WORDS``), at ``rate_hz`` words per second, so a client decides how long a turn lasts.

It counts what happened, so the report can show that cancels reached the model: a response whose
connection Convoy closed before the end is ``cut``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.upstream import Call, FakeProvider, Reply, Stream, chat_text, chat_tool_calls, paced

MIN_REPLY_WORDS = 3


@dataclass(frozen=True)
class UpstreamCounts:
    requests: int = 0
    tool_calls: int = 0
    finished: int = 0
    cut: int = 0


class ScriptedUpstream:
    def __init__(self, rate_hz: float) -> None:
        self._rate_hz = rate_hz
        self._tool_calls = 0
        self._fake = FakeProvider(respond=self._respond)
        self.url = ""

    def start(self) -> None:
        self.url = self._fake.start().url

    def stop(self) -> None:
        self._fake.stop()

    @property
    def counts(self) -> UpstreamCounts:
        calls = self._fake.all_calls()
        return UpstreamCounts(
            requests=len(calls),
            tool_calls=self._tool_calls,
            finished=sum(c.finished.is_set() for c in calls),
            cut=sum(c.disconnected.is_set() for c in calls),
        )

    def _respond(self, call: Call) -> Reply:
        body = call.body
        model, last, tools = body["model"], body["messages"][-1], body.get("tools") or []
        if tools and last["role"] == "user":
            self._tool_calls += 1
            name = tools[0]["function"]["name"]
            return Stream(chat_tool_calls(model, [(f"call-{len(self._fake.all_calls())}", name, '{"q": "soak"}')]))
        words = max(MIN_REPLY_WORDS, len(str(last.get("content") or "").split()))
        return Stream(paced(chat_text(model, [f"w{i} " for i in range(words)]), 1 / self._rate_hz))
