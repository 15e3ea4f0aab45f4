"""Probes and polls leave the logs of the real programs as they were: the scheduler program
(facility_client.scheduler, with its cluster's TLS) probed as the kubelet probes the pod the
operator makes; Traefik with the chart's arguments, pinged and polling the operator's real
routes app every second; the hub as the chart configures it, probed, scraped and told of a
server's activity. No cluster: the programs run on loopback.

Each test also shows that its log does record what it should (a bare TCP connection to the
scheduler's TLS port, a poll that fails, a user's API request), so an empty diff means quiet,
not deaf.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from aiohttp import web
from facility_client import contract
from facility_operator import resources as res
from facility_operator.certs import new_cluster_identity, new_facility_ca
from facility_operator.edge_routes import EdgeRoutes
from facility_operator.settings import Settings

from harness import dask_edge
from harness.commands import stop, tool
from harness.hub import run_hub
from harness.net import free_port, http_get, serve_app
from harness.operator_stack import hub_values, user_tokens
from harness.paths import CHART, ROOT
from harness.wait import wait_for

PROBES = 10
CLUSTER_ID = "alice-qu1et"
HANDSHAKE_FAILED = "TLS handshake failed"


def settings() -> Settings:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return Settings.from_values(values, "af", "facility")


def body() -> dict[str, object]:
    return {
        "metadata": {"name": CLUSTER_ID, "namespace": "facility", "uid": "u"},
        "spec": {"owner": "alice", "backend": "kubernetes", "idleTimeout": 0,
                 "worker": {}, "minWorkers": 0, "maxWorkers": 0},
    }  # fmt: skip


@dataclass
class Scheduler:
    log: Path
    ports: dict[str, int]  # by the container port's name in the operator's pod

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    """`python -m facility_client.scheduler` as the scheduler pod runs it, its cluster's TLS
    files as the Secret is mounted, on loopback ports."""
    identity = new_cluster_identity(new_facility_ca("test"), CLUSTER_ID, f"{CLUSTER_ID}.example")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, text in identity.secret_data().items():
        (tls / name).write_text(text)
    ports = {"tls": free_port(), "dashboard": free_port()}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("client", "operators", ".")),
        contract.ENV_CLUSTER_ID: CLUSTER_ID,
        contract.ENV_CONTACT_ADDRESS: f"tls://{CLUSTER_ID}.example:443",
        contract.ENV_TLS_DIR: str(tls),
        "FACILITY_SCHEDULER_HOST": "127.0.0.1",
        "FACILITY_SCHEDULER_PORT": str(ports["tls"]),
        "FACILITY_DASHBOARD_PORT": str(ports["dashboard"]),
    }
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", contract.SCHEDULER_MODULE], stdout=out, stderr=out, env=env
        )
    try:
        wait_for(lambda: "up, contact" in log.read_text(), f"the scheduler ({log})", 60)
        yield Scheduler(log, ports)
    finally:
        stop(process)


def test_the_scheduler_pods_probe_adds_no_line_to_its_log(scheduler: Scheduler) -> None:
    container = res.scheduler_pod(settings(), body())["spec"]["containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    url = f"http://127.0.0.1:{scheduler.ports[probe['port']]}{probe['path']}"
    before = scheduler.lines()
    for _ in range(PROBES):
        assert http_get(url) == (200, "ok")
    # The operator's own questions (every tick) and Prometheus' scrapes are as quiet.
    base = f"http://127.0.0.1:{scheduler.ports['dashboard']}"
    for path in ("/api/v1/get_workers", "/api/v1/adaptive_target", "/metrics"):
        status, _ = http_get(base + path) or (None, "")
        assert status == 200, path
    # What a TCP probe of the TLS port did: a warning per probe. It is also the mark that the
    # scheduler has handled every request before it, so the log is complete up to here.
    with socket.create_connection(("127.0.0.1", scheduler.ports["tls"])):
        pass
    wait_for(lambda: HANDSHAKE_FAILED in scheduler.log.read_text(), "the handshake's warning", 30)
    added = scheduler.lines()[len(before) :]
    assert len(added) == 1, added
    assert HANDSHAKE_FAILED in added[0]


def test_the_edges_ping_and_its_polls_of_the_operator_add_no_line(tmp_path: Path) -> None:
    """Traefik with the chart's arguments (its default log level) and its HTTP provider polling
    the operator's routes app every second (edge.routesPollInterval)."""
    polls: list[str] = []
    failing: list[bool] = []
    routes = EdgeRoutes(settings())
    app = routes.app()

    @web.middleware
    async def count(request: web.Request, handler: object) -> web.StreamResponse:
        polls.append(request.path)
        if failing:
            raise web.HTTPServiceUnavailable()
        return await handler(request)  # type: ignore[operator]

    app.middlewares.append(count)
    chart_args, files = dask_edge.chart_edge()
    folder = tmp_path / "edge"
    dask_edge.write_edge_files(folder, files, "http://127.0.0.1:9")
    log = tmp_path / "traefik.log"
    with serve_app(app) as url:
        port, api_port = free_port(), free_port()
        args = dask_edge.local_edge_args(chart_args, port, api_port, folder, f"{url}/routes")
        with log.open("wb") as out:
            traefik = subprocess.Popen([tool("traefik"), *args], stdout=out, stderr=out)
        try:
            ping = f"http://127.0.0.1:{api_port}/ping"
            wait_for(lambda: http_get(ping) == (200, "OK") and polls, f"Traefik ({log})", 30)
            # A cluster's route: its loading is news (a router appears), not its polls.
            routes.observe(body(), deleted=False)
            wait_for(lambda: dask_edge.enabled_routers(api_port, "tcp"), "the Dask route", 30)
            before = log.read_text()
            seen = len(polls)
            for _ in range(PROBES):
                assert http_get(ping) == (200, "OK")
            wait_for(lambda: len(polls) >= seen + 3, "three more polls", 30)
            assert log.read_text() == before
            # A poll that fails is news, and shows.
            failing.append(True)
            wait_for(
                lambda: " ERR " in log.read_text(), f"the failed poll in Traefik's log ({log})"
            )
        finally:
            stop(traefik)


# JupyterHub's access lines (jupyterhub.log.log_request): "[I <time> JupyterHub log:1] 200 GET /"
HUB_ACCESS = re.compile(r"\] (\d{3}) ([A-Z]+) (\S+)")


def test_the_hubs_probe_scrapes_and_activity_reports_add_no_line(tmp_path: Path) -> None:
    values = hub_values()
    values["hub"]["config"]["JupyterHub"]["authenticate_prometheus"] = False
    with run_hub(tmp_path, values, free_port()) as hub:
        token = user_tokens(hub, ("alice",))["alice"]
        before = len(hub.log().splitlines())
        for _ in range(PROBES):
            for path in ("/hub/health", "/hub/metrics"):
                status, _ = http_get(hub.url + path) or (None, "")
                assert status == 200, path
        # What each user's server sends every five minutes (jupyterhub-singleuser).
        for _ in range(3):
            answer = requests.post(
                f"{hub.url}/hub/api/users/alice/activity",
                json={"last_activity": "2026-01-01T00:00:00Z", "servers": {}},
                headers={"Authorization": f"token {token}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
        # A person's request: its line is the mark that the log is complete up to here.
        assert http_get(f"{hub.url}/hub/api") is not None
        wait_for(lambda: " GET /hub/api " in hub.log(), f"the hub's line ({hub.log_path})", 30)
        added = [HUB_ACCESS.search(line) for line in hub.log().splitlines()[before:]]
        assert [m.group(2, 3) for m in added if m] == [("GET", "/hub/api")]
