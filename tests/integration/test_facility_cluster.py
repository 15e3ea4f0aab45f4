"""`FacilityCluster`, the notebook's side, against a stand-in of the operator's user API.

The stand-in is a real aiohttp server in the test that answers as operators/README.md ("User
API") says, and does what the operator would do with the cluster: POST starts the real scheduler
program (`python -m facility_client.scheduler`, SLURM backend, on the one-machine SLURM of
tests/integration/slurm.py), GET reports Pending until the scheduler answers, PATCH writes the
scheduler's annotations file, DELETE stops it. The real API is tested elsewhere
(tests/integration/test_operator_api.py); the edge is not under test here, so the client and the
workers dial the scheduler's loopback port with the cluster's name as SNI (`edge_host`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import facility_client.cluster as facility_cluster
import pytest
import yaml
from aiohttp import web
from distributed import Client
from facility_client.cluster import FacilityCluster, FacilityError, ScaleRange
from facility_operator.certs import ClusterIdentity

from tests.conftest import ROOT, free_port, http_get, serve_app, wait_for
from tests.integration.slurm import (
    SchedulerProgram,
    SlurmCluster,
    scheduler_program,
    slurm_cluster,
    write_identity,
)

TOKEN = "jupyterhub-token-of-alice"
CLUSTER_ID = "alice-q3z9w"
DOMAIN = "dask.test"
DASHBOARD = f"/user/alice/proxy/dask/{CLUSTER_ID}/status"


@dataclass
class StandInAPI:
    """The user API's answers for one user and one cluster, and what it was asked."""

    slurm: SlurmCluster
    workdir: Path
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    identity: ClusterIdentity | None = None
    scheduler: SchedulerProgram | None = None
    scheduler_exit: int | None = None
    _running: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _ports: dict[str, int] = field(default_factory=dict)
    _starting: asyncio.Future[None] | None = None

    @property
    def address(self) -> str:
        return f"tls://{CLUSTER_ID}.{DOMAIN}:{self._ports['scheduler']}"

    def view(self) -> dict[str, Any]:
        running = self.scheduler is not None and http_get(
            f"http://127.0.0.1:{self._ports['dashboard']}/health"
        )
        return {
            "id": CLUSTER_ID,
            "owner": "alice",
            "backend": "slurm",
            "worker": self.spec["worker"],
            "minWorkers": self.spec["minWorkers"],
            "maxWorkers": self.spec["maxWorkers"],
            "idleTimeout": 3600,
            "address": self.address,
            "phase": "Running" if running else "Pending",
            "workers": 0,
            "dashboardLink": DASHBOARD if running else "",
            "message": "",
            "created": "2026-01-01T00:00:00Z",
        }

    def start_scheduler(self) -> None:
        """What the operator's reconcile amounts to here: the TLS Secret and the scheduler."""
        directory = self.workdir / CLUSTER_ID
        self.identity = write_identity(directory / "tls", CLUSTER_ID, f"{CLUSTER_ID}.{DOMAIN}")
        self.scheduler = self._running.enter_context(
            scheduler_program(
                self.slurm,
                directory,
                cluster_id=CLUSTER_ID,
                namespace="users",
                contact_address=self.address,
                edge_host="127.0.0.1",
                port=self._ports["scheduler"],
                dashboard_port=self._ports["dashboard"],
            )
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        if request.headers.get("Authorization") != f"token {TOKEN}":
            return web.json_response({"error": "unknown token", "field": None}, status=401)
        path = request.path
        if request.method == "POST" and path == "/clusters":
            if body.get("worker", {}).get("cores", 1) > 8:
                message = "quota exceeded: at most 8 cores for alice"
                return web.json_response({"error": message, "field": "worker.cores"}, status=403)
            self.spec = {"worker": body.get("worker", {}), "minWorkers": 0, "maxWorkers": 0}
            self._ports.update(scheduler=free_port(), dashboard=free_port())
            # The operator makes the scheduler pod after the API has answered.
            self._starting = asyncio.get_running_loop().run_in_executor(None, self.start_scheduler)
            return web.json_response(self.view(), status=201)
        if not path.startswith(f"/clusters/{CLUSTER_ID}") or not self.spec:
            return web.json_response({"error": "no such cluster", "field": None}, status=404)
        if request.method == "PUT" and path.endswith("/token"):
            return web.Response(status=204)
        if path.endswith("/credentials"):
            if self.identity is None:
                return web.json_response({"error": "not made yet", "field": None}, status=409)
            return web.json_response(
                {
                    "ca": self.identity.facility_ca,
                    "tls_cert": self.identity.tls_cert,
                    "tls_key": self.identity.tls_key,
                    "address": self.address,
                }
            )
        if request.method == "GET":
            return web.json_response(self.view())
        if request.method == "PATCH":
            self.spec.update(body)
            assert self.scheduler is not None
            self.scheduler.scale(self.spec["minWorkers"], self.spec["maxWorkers"])
            return web.json_response(self.view())
        if request.method == "DELETE":
            assert self.scheduler is not None
            self.scheduler_exit = await asyncio.to_thread(self.scheduler.stop)
            return web.Response(status=204)
        return web.json_response({"error": "not allowed", "field": None}, status=405)

    def close(self) -> None:
        self._running.close()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), free_port(), free_port()) as cluster:
        yield cluster


@pytest.fixture
def api(slurm: SlurmCluster, tmp_path: Path) -> Iterator[tuple[StandInAPI, str]]:
    """The stand-in, served on a loopback port from a thread of its own; its base URL."""
    stand_in = StandInAPI(slurm, tmp_path)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    try:
        with serve_app(app) as url:
            yield stand_in, url
    finally:
        stand_in.close()


def cluster_jobs(slurm: SlurmCluster) -> list[tuple[str, str, str]]:
    return [row for row in slurm.squeue() if row[2] == f"facility:users/{CLUSTER_ID}"]


def test_lifecycle(
    api: tuple[StandInAPI, str],
    slurm: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stand_in, url = api
    bearer = tmp_path / "bt_u1000"  # the notebook's token file, kept fresh by facility-token
    bearer.write_text("eyJ.first.sig\n")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(bearer))
    monkeypatch.setattr(facility_cluster, "TOKEN_CHECK_SECONDS", 0.2)
    options = {"edge_host": "127.0.0.1", "api_url": url, "api_token": TOKEN, "timeout": 60}
    with FacilityCluster(cores=1, memory="256 MiB", **options) as cluster:
        assert stand_in.requests[0] == (
            "POST",
            "/clusters",
            {"worker": {"cores": 1, "memory": "256Mi"}},
        )
        assert cluster.name == CLUSTER_ID
        assert cluster.dashboard_link == DASHBOARD

        # The bearer token reaches the cluster's pods at start, and again when it is refreshed.
        put = ("PUT", f"/clusters/{CLUSTER_ID}/token")
        shared = [r[2] for r in stand_in.requests if r[:2] == put]
        assert shared == [{"token": "eyJ.first.sig"}]
        bearer.write_text("eyJ.second.sig\n")
        os.utime(bearer, ns=(time.time_ns(), time.time_ns() + 10**9))
        wait_for(
            lambda: (
                [r[2] for r in stand_in.requests if r[:2] == put][-1] == {"token": "eyJ.second.sig"}
            ),
            "the refreshed token shared",
            30,
        )

        cluster.scale(2)
        assert stand_in.spec["minWorkers"] == stand_in.spec["maxWorkers"] == 2
        with cluster.get_client() as client:
            client.wait_for_workers(2, timeout=120)
            assert client.submit(sum, range(10)).result(timeout=60) == 45
        wait_for(lambda: len(cluster.scheduler_info["workers"]) == 2, "the cluster's worker view")

        # Another session of the same user finds the cluster by its id.
        again = FacilityCluster.from_name(CLUSTER_ID, **options)
        assert len(again.scheduler_info["workers"]) == 2
        assert not [r for r in stand_in.requests if r[0] == "POST"][1:]

        assert cluster.adapt(minimum=0, maximum=3) == ScaleRange(0, 3)
        assert (stand_in.spec["minWorkers"], stand_in.spec["maxWorkers"]) == (0, 3)

    assert stand_in.requests[-1][:2] == ("DELETE", f"/clusters/{CLUSTER_ID}")
    assert stand_in.scheduler_exit == 0
    wait_for(lambda: not cluster_jobs(slurm), "the cluster's jobs to go", 60)
    # The second handle's close finds the cluster gone already (404), which is what it wants.
    again.close()


def test_refusal_names_the_field(api: tuple[StandInAPI, str]) -> None:
    _, url = api
    with pytest.raises(FacilityError, match="at most 8 cores") as refused:
        FacilityCluster(cores=64, api_url=url, api_token=TOKEN)
    assert refused.value.status == 403
    assert refused.value.field == "worker.cores"


def test_asynchronous_as_dask_labextension_uses_it(api: tuple[StandInAPI, str]) -> None:
    stand_in, url = api

    async def session() -> None:
        cluster = await FacilityCluster(
            edge_host="127.0.0.1", api_url=url, api_token=TOKEN, timeout=60, asynchronous=True
        )
        assert cluster.scheduler_address == f"tls://127.0.0.1:{stand_in.address.rsplit(':', 1)[1]}"
        await cluster.scale(1)
        assert stand_in.spec["maxWorkers"] == 1
        async with Client(cluster, asynchronous=True) as client:
            await client.wait_for_workers(1, timeout=120)
        await cluster.close()

    asyncio.run(session())
    assert stand_in.scheduler_exit == 0


def test_dask_labextension_makes_facility_clusters() -> None:
    config = yaml.safe_load((ROOT / "images/analysis/dask-labextension.yaml").read_text())
    factory = config["labextension"]["factory"]
    module = importlib.import_module(factory["module"])
    assert getattr(module, factory["class"]) is FacilityCluster
    assert "dask-labextension.yaml /etc/dask/" in (ROOT / "images/analysis/Dockerfile").read_text()
