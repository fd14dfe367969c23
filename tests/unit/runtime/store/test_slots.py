"""Which keys share a hash slot (no Redis needed: the slot is a CRC of the key's hash tag)."""

from __future__ import annotations

import pytest

from runtime.settings import Settings
from runtime.store import keyspace
from runtime.store.connection import cluster_seeds, connect, is_cluster, is_cluster_url
from runtime.store.slots import by_slot, slot_of


def test_every_key_of_a_conversation_and_its_runs_shares_one_slot() -> None:
    conv, run = "conv-1", "run-1"
    keys = [
        keyspace.conversation(conv),
        keyspace.mailbox(conv),
        keyspace.mailbox_cursor(conv),
        keyspace.lease(conv),
        keyspace.epoch(conv),
        keyspace.history(conv),
        keyspace.history_index(conv),
        keyspace.pending_approval(conv),
        keyspace.idempotency(conv, "key:abc"),
        keyspace.run(conv, run),
        keyspace.run_stream(conv, run),
        keyspace.run_steps(conv, run),
        keyspace.conversation_runs(conv),
    ]
    assert {slot_of(k) for k in keys} == {slot_of(keyspace.conversation(conv))}
    assert slot_of(keyspace.conversation("conv-2")) != slot_of(keyspace.conversation(conv))


def test_an_agents_record_and_indexes_share_one_slot_and_an_api_keys_record_and_rate_too() -> None:
    agent = "agent-1"
    assert slot_of(keyspace.agent(agent)) == slot_of(keyspace.agent_conversations(agent)) == slot_of(keyspace.agent_runs(agent))
    assert slot_of(keyspace.api_key("d")) == slot_of(keyspace.api_key_rate("d"))


def test_by_slot_groups_by_hash_tag_in_order_of_first_appearance() -> None:
    keys = [keyspace.lease("a"), keyspace.lease("b"), keyspace.epoch("a"), keyspace.lease("c"), keyspace.mailbox("b")]
    groups = by_slot(keys, lambda k: k)
    assert groups == [[keys[0], keys[2]], [keys[1], keys[4]], [keys[3]]]


@pytest.mark.parametrize(
    ("url", "seeds", "options"),
    [
        ("redis+cluster://10.0.0.1:7000", [("10.0.0.1", 7000)], {"ssl": False}),
        ("redis+cluster://a:7000,b:7001,[::1]:7002/", [("a", 7000), ("b", 7001), ("::1", 7002)], {"ssl": False}),
        ("rediss+cluster://user:p%40ss@a:7000/0", [("a", 7000)], {"ssl": True, "username": "user", "password": "p@ss"}),
        ("redis+cluster://:secret@a:7000", [("a", 7000)], {"ssl": False, "username": None, "password": "secret"}),
    ],
)
def test_a_cluster_url_names_its_seed_nodes_and_options(url: str, seeds: list[tuple[str, int]], options: dict[str, object]) -> None:
    assert is_cluster_url(url)
    assert cluster_seeds(url) == (seeds, options)


@pytest.mark.parametrize("url", ["redis+cluster://a", "redis+cluster://a:7000,b", "redis+cluster://a:7000/3"])
def test_a_malformed_cluster_url_is_refused_with_what_is_wrong(url: str) -> None:
    with pytest.raises(ValueError, match="cluster URL"):
        cluster_seeds(url)


def test_a_plain_url_is_one_server_and_a_cluster_url_a_cluster_client() -> None:
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    assert not is_cluster(connect(Settings(redis_url="redis://127.0.0.1:6379/0")))
    assert is_cluster(connect(Settings(redis_url="redis+cluster://127.0.0.1:7000")))
