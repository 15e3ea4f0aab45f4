"""Waiting on a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import HarnessError


def wait_for(
    condition: Callable[[], object],
    what: str,
    timeout: float = 60,
    interval: float = 0.5,
    details: Callable[[], str] | None = None,
) -> object:
    """Poll until condition() is truthy and return its value; fail naming `what` at the deadline
    (with details(), e.g. the logs of the daemons that did not come up)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f"\n{details()}" if details else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{shown}")
        time.sleep(interval)
