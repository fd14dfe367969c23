"""The embedded Redis of ``convoy serve`` (``runtime.store.embedded``) in the homes users have."""

from __future__ import annotations

from pathlib import Path

import redis

from runtime.store.embedded import EmbeddedRedis, recorded_url


def test_a_home_whose_path_holds_spaces_and_quotes_serves_and_keeps_its_data(tmp_path: Path) -> None:
    """macOS's ``~/Library/Application Support`` is such a path; the server refused its
    configuration file (one argument per word) and Convoy could not start there."""
    home = tmp_path / 'Application Support' / 'my "convoy"'
    server = EmbeddedRedis(home)
    try:
        url = server.start()
        assert recorded_url(home) == url
        client = redis.Redis.from_url(url)
        try:
            assert client.set("kept", "yes")
        finally:
            client.close()
    finally:
        server.stop()
    assert (home / "redis" / "appendonlydir").is_dir(), "its data lives in the home"
    again = EmbeddedRedis(home)
    try:
        client = redis.Redis.from_url(again.start())
        try:
            assert client.get("kept") == b"yes", "the append-only file was found and replayed"
        finally:
            client.close()
    finally:
        again.stop()
