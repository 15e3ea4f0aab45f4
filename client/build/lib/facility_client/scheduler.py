"""The scheduler pod's program: `python -m facility_client.scheduler`.

It runs one Dask cluster's scheduler and nothing else: it makes no worker and holds no
Kubernetes or batch-system credential. The operator makes the workers; it asks this scheduler
how many it wants (Dask's HTTP API, `/api/v1/adaptive_target`) and to retire workers before it
removes them (`/api/v1/retire_workers`). See operators/README.md, "Scheduler pod".

Environment (facility_client.contract): FACILITY_CLUSTER_ID, FACILITY_CONTACT_ADDRESS,
FACILITY_TLS_DIR, FACILITY_IDLE_TIMEOUT (seconds, 0 for never). The scheduler listens with TLS
on 0.0.0.0:8786 and hands out the public contact address; the dashboard (Prometheus `/metrics`
and Dask's HTTP API) is on 8787. On SIGTERM, or when Dask's idle timeout closes the scheduler,
the program exits 0.

Tests override where it listens: FACILITY_SCHEDULER_HOST, FACILITY_SCHEDULER_PORT,
FACILITY_DASHBOARD_PORT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import dask
from distributed import Scheduler

from facility_client import contract
from facility_client.security import scheduler_security

log = logging.getLogger("facility_client.scheduler")


def http_routes() -> list[str]:
    """Dask's default dashboard routes and its HTTP API, which the operator calls."""
    routes = list(dask.config.get("distributed.scheduler.http.routes"))
    return (
        [*routes, contract.SCHEDULER_API_ROUTES]
        if contract.SCHEDULER_API_ROUTES not in routes
        else routes
    )


def scheduler_from_env(env: Mapping[str, str]) -> Scheduler:
    host = env.get("FACILITY_SCHEDULER_HOST", "0.0.0.0")
    idle = int(env.get(contract.ENV_IDLE_TIMEOUT) or 0)
    dashboard_port = env.get("FACILITY_DASHBOARD_PORT", str(contract.DASHBOARD_PORT))
    return Scheduler(
        host=host,
        port=int(env.get("FACILITY_SCHEDULER_PORT", contract.SCHEDULER_PORT)),
        dashboard_address=f"{host}:{dashboard_port}",
        contact_address=env[contract.ENV_CONTACT_ADDRESS],
        security=scheduler_security(Path(env[contract.ENV_TLS_DIR])),
        idle_timeout=idle or None,  # 0: never
    )


async def run(env: Mapping[str, str]) -> None:
    with dask.config.set({"distributed.scheduler.http.routes": http_routes()}):
        scheduler = scheduler_from_env(env)
        await scheduler
    cluster_id = env[contract.ENV_CLUSTER_ID]
    log.info("scheduler of %s up, contact %s", cluster_id, env[contract.ENV_CONTACT_ADDRESS])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.create_task(stop.wait())
    idle_closed = asyncio.create_task(scheduler.finished())
    try:
        await asyncio.wait({stopped, idle_closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, idle_closed):
            task.cancel()
        log.info(
            "closing the scheduler of %s (%s)", cluster_id, "signal" if stop.is_set() else "idle"
        )
        await scheduler.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(os.environ))


if __name__ == "__main__":
    main()
