"""What the operator asks a cluster's scheduler, through Dask's own HTTP API on the dashboard
port (`distributed.http.scheduler.api`, enabled by facility_client.scheduler).

The scheduler runs the user's code, so its answers are wishes, never orders: the operator keeps
every number it reads within the cluster's range and the owner's quotas.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

ASK_TIMEOUT = aiohttp.ClientTimeout(total=5)
# Retiring moves the workers' results to the others first: it may take a while.
RETIRE_TIMEOUT = aiohttp.ClientTimeout(total=120)


class SchedulerAPI:
    """One scheduler's HTTP API at base_url (http://<id>-scheduler.<namespace>.svc:8787)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def _get(self, path: str) -> Any:
        async with self.session.get(self.base_url + path, timeout=ASK_TIMEOUT) as response:
            response.raise_for_status()
            return json.loads(await response.text())

    async def workers(self) -> dict[str, str] | None:
        """Connected workers, {name: address}; None while the scheduler does not answer."""
        try:
            found = await self._get("/api/v1/get_workers")
            return {str(w["name"]): str(w["address"]) for w in found["workers"]}
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            return None

    async def adaptive_target(self) -> int | None:
        """How many workers the scheduler wants for its load; None while it does not answer
        or answers nonsense."""
        try:
            target = (await self._get("/api/v1/adaptive_target"))["workers"]
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            log.warning("%s: adaptive target %r is not a worker count", self.base_url, target)
            return None
        return target

    async def retire(self, addresses: list[str]) -> set[str] | None:
        """Retire these workers: the scheduler moves their results elsewhere and closes them.
        The addresses it retired (a worker whose data has nowhere to go it keeps, and leaves
        out); None when it could not be asked (the workers then keep running)."""
        url = self.base_url + "/api/v1/retire_workers"
        try:
            async with self.session.post(
                url, data=json.dumps({"workers": addresses}), timeout=RETIRE_TIMEOUT
            ) as response:
                response.raise_for_status()
                retired = json.loads(await response.text())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            log.warning(
                "%s: retiring %d workers failed", self.base_url, len(addresses), exc_info=True
            )
            return None
        return set(retired) & set(addresses) if isinstance(retired, dict) else set()
