"""What the soak's clients did and saw: the record the invariants are checked against.

Every run a client saw accepted is recorded with the terminal statuses that are consistent with
what the client did to it (``expect``); every conversation keeps its runs in acceptance order
(one client owns a conversation and sends one message at a time, except the queued pairs, which
are sent one after the other). Anything a client noticed on the spot that breaks an invariant is
recorded under that invariant's name. A run the client saw fail ``owner_lost`` (or
``store_unavailable``) is marked ``lost`` instead: whether a fault (or the Redis outage) excuses it
is only known at the end (``faults.excused``, ``outage.excused``).
"""

from __future__ import annotations

import json
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
FAULTS = "every fault survived (host back with a new pid, then a turn on a conversation it held completed)"
OUTAGE = "the Redis outage survived (serve restarted Redis, the API healthy again, then a fresh turn completed)"
INVARIANTS = (
    RUNS_TERMINAL,
    STREAMS_END,
    RESUMES_EXACT,
    ACCEPTED_PROCESSED,
    HISTORY,
    ANSWERS,
    PASSIVATED,
    KEYS,
    MEMORY,
    FAULTS,
    OUTAGE,
)

COMPLETED = frozenset({"completed"})
CANCELLED = frozenset({"cancelled"})
LOST_ONLY: frozenset[str] = frozenset()  # a fault's canary: only failing owner_lost in its fault is right
OWNER_LOST = "owner_lost"
STORE_UNAVAILABLE = "store_unavailable"
LOST_STATUS = 503  # how a non-streaming send answers when its run failed owner_lost (or store_unavailable)


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
    lost: bool = False  # the client saw it fail owner_lost or store_unavailable (judged at the end)


@dataclass
class Fault:
    """One conversation host SIGKILLed by the soak (``faults``), and what became of it."""

    host: str
    pid: int
    at_s: float  # into the timed workload
    killed_at_s: float  # wall clock, to compare with the server's run timestamps
    held: frozenset[str]  # the conversations the host held when it died
    new_pid: int | None = None
    recovered_s: float | None = None  # kill -> a new pid heartbeating
    probe_s: float | None = None  # kill -> a fresh turn on one of ``held`` completed
    problem: str | None = None

    @property
    def survived(self) -> bool:
        return self.problem is None and self.probe_s is not None


@dataclass
class Outage:
    """The soak's Redis outage (``outage``), and what became of it."""

    seconds: float
    pid: int
    at_s: float  # into the timed workload
    frozen_at_s: float  # wall clock, to compare with the server's run timestamps
    killed_at_s: float | None = None  # wall clock
    new_pid: int | None = None
    back_s: float | None = None  # kill -> serve recorded a new Redis
    healthy_s: float | None = None  # kill -> the API answered healthy
    probe_s: float | None = None  # kill -> a fresh turn completed
    problem: str | None = None

    @property
    def survived(self) -> bool:
        return self.problem is None and self.probe_s is not None


def near_kill(faults: list[Fault], at_s: float, what: str) -> str:
    """For a violation's text: ``at_s`` (wall clock) next to the nearest fault's kill, if any."""
    if not faults:
        return ""
    fault = min(faults, key=lambda f: abs(f.killed_at_s - at_s))
    return f"; {what} {1000 * (at_s - fault.killed_at_s):+.0f} ms from the SIGKILL of {fault.host}"


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
    faults: list[Fault] = field(default_factory=list)
    outage: Outage | None = None
    store_refusals: Counter[str] = field(default_factory=Counter)  # requests refused 503 store_unavailable, sent again

    def conversation(self, conversation_id: str, model: str) -> Conversation:
        conv = Conversation(conversation_id, model)
        self.conversations[conversation_id] = conv
        return conv

    def accept(
        self, run_id: str, conv: Conversation, op: str, text: str | None, expect: frozenset[str], *, lost: bool = False
    ) -> RunRecord:
        record = RunRecord(run_id, conv.id, op, text, expect, lost=lost)
        if run_id in self.runs:
            self.violate(ACCEPTED_PROCESSED, f"{op}: run {run_id} was accepted twice")
        self.runs[run_id] = record
        conv.run_ids.append(run_id)
        return record

    def answer(self, request: str, status: int, body: str = "") -> bool:
        """Count the answer to a valid request; anything but a 2xx breaks ``ANSWERS``, except the
        answer to a send whose run failed ``owner_lost`` or ``store_unavailable`` (``lost_run``):
        that run is judged at the end, against the faults and the outage (a client that does not
        record it leaves a run no client saw)."""
        self.answers[request][status] += 1
        if 200 <= status < 300:
            return True
        if lost_run(status, body) is None:
            self.violate(ANSWERS, f"{request}: HTTP {status}: {body[:200]}")
        return False

    def violate(self, invariant: str, text: str) -> None:
        self.violations[invariant].append(text)

    def count_violations(self) -> int:
        return sum(len(v) for v in self.violations.values())


def lost_run(status: int, body: str) -> str | None:
    """The run a non-streaming send was answered for, if it failed ``owner_lost`` or
    ``store_unavailable`` (``LOST_STATUS``, the run's error item in ``error``); None for any other
    answer."""
    if status != LOST_STATUS:
        return None
    try:
        error = json.loads(body)["error"]
        return str(error["run_id"]) if error["error_type"] in (OWNER_LOST, STORE_UNAVAILABLE) else None
    except (ValueError, KeyError, TypeError):
        return None
