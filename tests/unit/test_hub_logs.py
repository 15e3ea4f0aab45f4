"""The hub's access log (hub_config.logs): the servers' activity reports and Prometheus'
scrapes at DEBUG when they succeed; every other request, and any that fails, keeps its line."""

from __future__ import annotations

import logging

import pytest

from hub_config import logs


@pytest.mark.parametrize(
    ("line", "quiet"),
    [
        ("200 POST /hub/api/users/alice/activity (alice@10.0.0.7) 3.10ms", True),
        ("200 POST /jhub/hub/api/users/alice/activity (alice@10.0.0.7) 3.10ms", True),
        ("200 GET /hub/metrics (@10.0.0.9) 12.00ms", True),
        ("200 GET /hub/metrics?name=x (@10.0.0.9) 12.00ms", True),
        ("403 POST /hub/api/users/bob/activity (alice@10.0.0.7) 1.00ms", False),
        ("200 GET /hub/api/users/alice (alice@10.0.0.7) 2.00ms", False),
        ("201 POST /hub/api/users/alice/tokens (admin@127.0.0.1) 9.00ms", False),
        ("302 GET /hub/ -> /hub/home (alice@10.0.0.7) 1.00ms", False),
    ],
)
def test_only_the_routine_is_quiet(line: str, quiet: bool) -> None:
    assert logs.routine(line) is quiet


def test_the_filter_moves_the_routine_to_debug(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = logging.getLogger("tornado.access")
    # Captured at the logger itself, and the other tests' logger stays as it was: a hub
    # configured in this process before re-parents tornado's loggers under JupyterHub's own,
    # which does not propagate to the root (where caplog listens by default).
    monkeypatch.setattr(access, "filters", [])
    monkeypatch.setattr(access, "handlers", [caplog.handler])
    monkeypatch.setattr(access, "propagate", False)
    monkeypatch.setattr(access, "disabled", False)
    caplog.set_level(logging.INFO, logger="tornado.access")
    logs.quiet_routine()
    logs.quiet_routine()  # the configuration may be loaded twice: one filter
    assert sum(isinstance(f, logs.QuietRoutine) for f in access.filters) == 1
    access.info("200 GET /hub/metrics (@10.0.0.9) 12.00ms")
    access.info("200 GET /hub/home (alice@10.0.0.7) 5.00ms")
    assert [r.getMessage() for r in caplog.records] == ["200 GET /hub/home (alice@10.0.0.7) 5.00ms"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="tornado.access")
    access.info("200 GET /hub/metrics (@10.0.0.9) 12.00ms")
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
