"""Stream entries read from either shape an XREAD reply reaches the tailer in."""

from __future__ import annotations

import redis.asyncio as aioredis

from runtime.stream.items import StoredItem, raw_item

RAW_REPLY = [[b"test:{s}", [[b"0-7", [b"k", b"error", b"p", b'{"error_type":"x"}']]]]]  # XREAD as Redis sends it (RESP2)


def test_an_entry_reads_the_same_from_the_raw_reply_and_from_redis_pys_parsed_one() -> None:
    """Regression: a read redirected by a Redis Cluster is answered by redis-py's cluster client,
    which parses it (the fields as a dict); ``raw_item`` took only Redis's flat list and failed."""
    parsed = aioredis.Redis(protocol=2).response_callbacks["XREAD"](RAW_REPLY)  # what the cluster client returns
    expected = StoredItem(7, "error", b'{"error_type":"x"}')
    [[_, [(parsed_id, parsed_fields)]]] = parsed
    assert isinstance(parsed_fields, dict)
    assert raw_item(parsed_id, parsed_fields) == expected
    [[_, [[raw_id, raw_fields]]]] = RAW_REPLY
    assert raw_item(raw_id, raw_fields) == expected
