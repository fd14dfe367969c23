"""What ``convoy serve`` says about the hosts it finds on a Ray cluster (``actors.supervisor``)."""

from __future__ import annotations

from actors.supervisor import host_warnings
from runtime.settings import Settings


def test_hosts_started_with_other_settings_or_beyond_the_count_are_named() -> None:
    now, before = Settings(hosts=2, echo_delay_ms=5), Settings(hosts=3, echo_delay_ms=50)
    stats = [{"name": "convoy-host-0", "settings": before.fingerprint()}, {"name": "convoy-host-1", "settings": now.fingerprint()}]
    stale, extra = host_warnings(now, stats, ["convoy-host-0", "convoy-host-1", "convoy-host-2", "something-else"])
    assert stale.startswith("hosts convoy-host-0 run with the settings of an earlier start")
    assert extra.startswith("hosts convoy-host-2 still run beyond CONVOY_HOSTS=2")


def test_hosts_started_with_these_settings_say_nothing() -> None:
    settings = Settings(hosts=2)
    stats = [{"name": f"convoy-host-{i}", "settings": Settings(hosts=2).fingerprint()} for i in range(2)]
    assert host_warnings(settings, stats, ["convoy-host-0", "convoy-host-1"]) == []
