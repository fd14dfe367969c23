"""Every Redis key Convoy uses is spelled here, and only here.

Keys that one operation touches together share a hash tag (the part in braces), so a Redis
Cluster puts them in one slot and multi-key scripts stay legal:

- ``{conv:<id>}`` groups a conversation's record, mailbox, ownership lease and fencing epoch;
- a run's record and chunk stream live under its conversation's tag too, so the owner's fenced
  scripts can check the epoch and write the run in one step; ``runref`` maps a run id to it.

Lifetimes (nothing lives forever by accident):

- agents, conversations, history (and its messages' references): owned by their record; deleted
  with it.
- run records and run streams: expire ``stream_ttl_s`` after the run ends.
- leases: expire on their own (``lease_ttl_ms``) unless their owner renews them.
- idempotency entries: expire with the run they point to.
- API keys: until revoked; a key's rate-limit state expires once the key is idle, and its
  active-run entries expire on their own if a run's end never removed them (see ``runtime.store.api_keys``).
- the mailbox: entries are trimmed once processed.
- the stream-token secret: kept for good, shared by every replica (deleting it voids every stream
  token; see ``runtime.store.stream_tokens``).
"""

from __future__ import annotations

PREFIX = "convoy"


def agent(agent_id: str) -> str:
    return f"{PREFIX}:{{agent:{agent_id}}}"


def agents_index(tenant: str) -> str:
    """Sorted set of a tenant's agent ids by creation time (ms)."""
    return f"{PREFIX}:tenant:{tenant}:agents"


def agent_conversations(agent_id: str) -> str:
    """Sorted set of an agent's conversation ids by creation time (ms)."""
    return f"{PREFIX}:{{agent:{agent_id}}}:conversations"


def conversation(conversation_id: str) -> str:
    return f"{PREFIX}:{{conv:{conversation_id}}}"


def conversations_index(tenant: str) -> str:
    """Sorted set of a tenant's conversation ids by creation time (ms)."""
    return f"{PREFIX}:tenant:{tenant}:conversations"


def conversations_activity(tenant: str) -> str:
    """Sorted set of a tenant's conversation ids by the time of their last message (ms)."""
    return f"{PREFIX}:tenant:{tenant}:conversations:activity"


def agent_conversations_activity(agent_id: str) -> str:
    """Sorted set of an agent's conversation ids by the time of their last message (ms)."""
    return f"{PREFIX}:{{agent:{agent_id}}}:conversations:activity"


def mailbox(conversation_id: str) -> str:
    """Redis stream: accepted messages of one conversation, in acceptance order."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:mailbox"


def mailbox_cursor(conversation_id: str) -> str:
    """Stream id of the last mailbox entry whose run reached a terminal state."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:cursor"


def lease(conversation_id: str) -> str:
    """Which activation owns the conversation; expires unless renewed."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:lease"


def epoch(conversation_id: str) -> str:
    """Fencing counter: bumped by every new owner; writes carrying an older epoch are refused."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:epoch"


def history(conversation_id: str) -> str:
    """Redis stream: the conversation's persisted messages (user, assistant, tools...)."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:history"


def history_index(conversation_id: str) -> str:
    """Hash: message id -> "<first entry id> <last entry id>" of its parts (for paging by message id)."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:history:index"


def pending_approval(conversation_id: str) -> str:
    """Hash: the approval request the conversation waits on (``request``), and the run that
    answered it (``answered``) once an answer is accepted. Absent when nothing is pending."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:approval"


def idempotency(conversation_id: str, key: str) -> str:
    """Maps a client's otid / Idempotency-Key to the run it started."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:idem:{key}"


def run(conversation_id: str, run_id: str) -> str:
    """Hash: a run's record. Lives in its conversation's slot so owner scripts can fence it."""
    return f"{run_prefix(conversation_id)}{run_id}"


def run_prefix(conversation_id: str) -> str:
    """What ``run`` puts before a run id: for scripts that find a run's id in Redis (same slot)."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:run:"


def run_stream(conversation_id: str, run_id: str) -> str:
    """Redis stream of a run's SSE items; entry id ``0-<seq>`` is the item's seq id."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:run:{run_id}:stream"


def run_steps(conversation_id: str, run_id: str) -> str:
    """List of a run's step traces (JSON), in order; expires with the run."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:run:{run_id}:steps"


def runs_index(tenant: str) -> str:
    """Sorted set of a tenant's run ids by creation time (ms)."""
    return f"{PREFIX}:tenant:{tenant}:runs"


def hosts() -> str:
    """Hash of live conversation hosts: name -> JSON heartbeat."""
    return f"{PREFIX}:hosts"


def run_ref(run_id: str) -> str:
    """Which conversation a run belongs to (runs live in their conversation's hash slot)."""
    return f"{PREFIX}:runref:{run_id}"


def message_ref(message_id: str) -> str:
    """Which conversation a stored message belongs to (``GET /v1/messages/{id}``)."""
    return f"{PREFIX}:msgref:{message_id}"


def message_copies(message_id: str) -> str:
    """Set of the conversations (forks) holding a copy of a message first stored in another."""
    return f"{PREFIX}:msgcopies:{message_id}"


def agent_runs(agent_id: str) -> str:
    """Sorted set of an agent's run ids by creation time (ms)."""
    return f"{PREFIX}:{{agent:{agent_id}}}:runs"


def conversation_runs(conversation_id: str) -> str:
    """Sorted set of a conversation's run ids by creation time (ms)."""
    return f"{PREFIX}:{{conv:{conversation_id}}}:runs"


def host_conversations(host_name: str) -> str:
    """Set of conversations a host (any incarnation of it) holds leases for; used for takeover."""
    return f"{PREFIX}:host:{host_name}:conversations"


def host_bell(host_name: str) -> str:
    """Redis stream the API rings to wake a conversation already active on that host (no Ray call).
    Owned by the host: capped, and deleted when a dedicated host leaves."""
    return f"{PREFIX}:host:{host_name}:bell"


def api_key(digest: str) -> str:
    """A key's record (JSON), found by the SHA-256 digest of its secret."""
    return f"{PREFIX}:{{apikey:{digest}}}"


def api_key_rate(digest: str) -> str:
    """A key's rate-limit state (GCRA: the theoretical arrival time, ms); same slot as the record."""
    return f"{PREFIX}:{{apikey:{digest}}}:rate"


def api_keys() -> str:
    """Hash of every key: key id -> digest (for listing and revoking by id)."""
    return f"{PREFIX}:apikeys"


def api_key_runs(key_id: str) -> str:
    """Sorted set of a key's unfinished runs (run id -> expiry ms), for its concurrency limit."""
    return f"{PREFIX}:apikey-runs:{key_id}"


def auth_closed() -> str:
    """Set once the first API key is created, and never unset: from then on every request needs a key."""
    return f"{PREFIX}:auth:closed"


def stream_token_secret() -> str:
    """The HMAC secret every API replica signs and checks stream tokens with (made once, never expires)."""
    return f"{PREFIX}:stream-token:secret"
