"""What the chart's PodMonitor of the schedulers scrapes: the scheduler program
(facility_client.scheduler), with its cluster's real TLS identity, serves Dask's Prometheus
metrics on its dashboard port in plain HTTP, while Dask itself listens with TLS alone. A local
process: no cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dask
from facility_client import contract
from facility_client.scheduler import http_routes, scheduler_from_env
from facility_operator.certs import new_facility_ca

from harness.dask_edge import LOOPBACK, new_cluster
from harness.net import free_port, http_get


def test_the_scheduler_serves_its_metrics_in_plain_http(tmp_path: Path) -> None:
    cluster = new_cluster(new_facility_ca("af"), "alice", tmp_path, free_port())
    dashboard = free_port()
    env = {
        contract.ENV_CLUSTER_ID: cluster.id,
        contract.ENV_CONTACT_ADDRESS: f"tls://{LOOPBACK}:{cluster.scheduler_port}",
        contract.ENV_TLS_DIR: str(cluster.tls_dir),
        "FACILITY_SCHEDULER_HOST": LOOPBACK,
        "FACILITY_SCHEDULER_PORT": str(cluster.scheduler_port),
        "FACILITY_DASHBOARD_PORT": str(dashboard),
    }

    async def scenario() -> None:
        with dask.config.set({"distributed.scheduler.http.routes": http_routes()}):
            scheduler = scheduler_from_env(env)
            await scheduler
        try:
            answer = await asyncio.to_thread(http_get, f"http://{LOOPBACK}:{dashboard}/metrics")
            assert answer is not None
            status, text = answer
            assert status == 200
            assert "dask_scheduler_workers" in text
            # Dask's own port, beside it, is TLS alone.
            assert scheduler.address == f"tls://{LOOPBACK}:{cluster.scheduler_port}"
        finally:
            await scheduler.close()

    asyncio.run(scenario())
