"""What the soak's clients did and saw: the record the invariants are checked against.

Every run a client saw accepted is recorded with the terminal statuses that are consistent with
what the client did to it (``expect``); every conversation keeps its runs in acceptance order
(one client owns a conversation and sends one message at a time, except the queued pairs, which
are sent one after the other). Anything a client noticed on the spot that breaks an invariant is
recorded under that invariant's name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

# The invariants, in the order they are reported.
RUNS_TERMINAL = "every run terminal"
STREAMS_END = "every stream read ended with its terminal sequence"
RESUMES_EXACT = "resumes yield exactly the items after the cursor"
ACCEPTED_PROCESSED = "messages accepted == processed, status as the client acted"
HISTORY = "history holds the completed turns' inputs, in order"
ANSWERS = "valid requests 2xx, bad inputs 4xx, never a 5xx"
PASSIVATED = "idle conversations passivated (no lease, no host entry)"
KEYS = "no leaked keys (each has a TTL or a live owner; nothing unbounded)"
MEMORY = "memory flat"
INVARIANTS = (RUNS_TERMINAL, STREAMS_END, RESUMES_EXACT, ACCEPTED_PROCESSED, HISTORY, ANSWERS, PASSIVATED, KEYS, MEMORY)

COMPLETED = frozenset({"completed"})
CANCELLED = frozenset({"cancelled"})


@dataclass
class Conversation:
    id: str
    model: str  # "echo" or "bench"
    run_ids: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    run_id: str
    conversation_id: str
    op: str
    input_text: str | None  # the user input it carried; None for an approval answer
    expect: frozenset[str] = COMPLETED
    left_at_s: float | None = None  # wall clock when a foreground client left before the end


@dataclass
class StreamTally:
    read: int = 0  # responses read to their end
    ended: int = 0  # ... whose ending was right
    abandoned: int = 0  # closed on purpose before the end (each one is resumed later to its end)


@dataclass
class Ledger:
    conversations: dict[str, Conversation] = field(default_factory=dict)
    runs: dict[str, RunRecord] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    bad: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    streams: StreamTally = field(default_factory=StreamTally)
    ttft_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cancel_ms: list[float] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def conversation(self, conversation_id: str, model: str) -> Conversation:
        conv = Conversation(conversation_id, model)
        self.conversations[conversation_id] = conv
        return conv

    def accept(self, run_id: str, conv: Conversation, op: str, text: str | None, expect: frozenset[str]) -> RunRecord:
        record = RunRecord(run_id, conv.id, op, text, expect)
        if run_id in self.runs:
            self.violate(ACCEPTED_PROCESSED, f"{op}: run {run_id} was accepted twice")
        self.runs[run_id] = record
        conv.run_ids.append(run_id)
        return record

    def answer(self, request: str, status: int, body: str = "") -> bool:
        """Count the answer to a valid request; anything but a 2xx breaks ``ANSWERS``."""
        self.answers[request][status] += 1
        if 200 <= status < 300:
            return True
        self.violate(ANSWERS, f"{request}: HTTP {status}: {body[:200]}")
        return False

    def violate(self, invariant: str, text: str) -> None:
        self.violations[invariant].append(text)

    def count_violations(self) -> int:
        return sum(len(v) for v in self.violations.values())
