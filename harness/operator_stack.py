"""The real operator, run as a process against the local cluster's real API server, with what
it needs around it to drive real Dask workers on loopback.

- `Operator`: `python -m facility_operator` with the chart's values (and overrides), its log.
- `SchedulerPods`: the kubelet's part for scheduler pods. kwok marks the operator's scheduler
  pods Running but runs no container, so this runs each one's program itself: it reads the
  pod's environment and the cluster's TLS Secret from the API server, starts
  `python -m facility_client.scheduler` on free loopback ports, adds the cluster's SNI route to
  the real Traefik's file provider (the operator's route leads to the scheduler's Service,
  which has no reachable endpoint under kwok), stops the program when the pod is deleted, and
  marks the pod Succeeded when the program ends by itself (Dask's idle timeout).
- The operator reaches each scheduler's dashboard (Dask's HTTP API) through a loopback
  forwarder, `FACILITY_SCHEDULER_URL=http://127.0.0.1:<port>/{cluster_id}`, since the pod's
  Service address leads nowhere under kwok.

- `running_facility`: all of the above with a real JupyterHub (users' tokens), each user's
  server pod (as KubeSpawner labels it; kwok runs it) and the operator's user API, so that
  `FacilityCluster` walks a user's whole path (tests/integration/test_facility_cluster.py,
  bench/workers).

Workers are started by the operator alone (SLURM jobs on this host, or pods that kwok runs).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
import yaml
from aiohttp import web
from facility_client import contract
from kubernetes import client, config

from harness import HarnessError, dask_edge
from harness.chart import merge_values
from harness.commands import kubectl, stop, tool
from harness.hub import Hub, run_hub
from harness.net import free_port, http_get, serve_app
from harness.paths import CHART, KUBECONFIG, ROOT
from harness.wait import wait_for
from hub_config import services

LOOPBACK = "127.0.0.1"


class Operator:
    """One `python -m facility_operator` process for one namespace; its log on failure."""

    def __init__(
        self,
        workdir: Path,
        namespace: str,
        values: dict[str, Any],
        *,
        fullname: str = "t-op",
        kubeconfig: Path = KUBECONFIG,
        env: dict[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.log = workdir / "operator.log"
        api_port, health_port, routes_port = free_port(), free_port(), free_port()
        metrics_port = free_port()
        chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
        ports = {
            "operator": {
                "apiPort": api_port,
                "edgeRoutesPort": routes_port,
                "metricsPort": metrics_port,
            }
        }
        merged = merge_values(chart_values, merge_values(ports, values))
        config_dir = workdir / "values"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "values.yaml").write_text(yaml.safe_dump(merged))
        (config_dir / "release.yaml").write_text(yaml.safe_dump({"name": fullname}))
        self.health = f"http://127.0.0.1:{health_port}/healthz"
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.routes_url = f"http://127.0.0.1:{routes_port}/routes"  # the edge's HTTP provider
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # the site's scraper
        self.env = {
            **os.environ,
            **(env or {}),
            "KUBECONFIG": str(kubeconfig),
            "FACILITY_VALUES_DIR": str(config_dir),
            "FACILITY_FULLNAME": fullname,
            "FACILITY_NAMESPACE": namespace,
            "FACILITY_LIVENESS_URL": self.health,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "facility_operator"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.alive() and http_get(self.health), "the operator's health endpoint")

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise HarnessError(f"the operator is not running:\n{self.log.read_text()[-4000:]}")
        return True

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last patch; as a node loss or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process)


@dataclass
class RunningScheduler:
    cluster_id: str
    process: subprocess.Popen[bytes]
    port: int
    dashboard_port: int
    log: Path


@dataclass
class SchedulerPods:
    """Runs the scheduler program of every scheduler pod of `namespace` (see the module)."""

    namespace: str
    workdir: Path
    routes: Path  # this namespace's file in the edge's file-provider folder
    env: dict[str, str] = field(default_factory=dict)  # more environment (e.g. SLURM_CONF)
    running: dict[str, RunningScheduler] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(config.new_client_from_config(str(KUBECONFIG)))

    def dashboard(self, cluster_id: str) -> int | None:
        with self._lock:
            found = self.running.get(cluster_id)
            return found.dashboard_port if found else None

    def _write_routes(self) -> None:
        schedulers = {
            f"{cid}.{dask_edge.DOMAIN}": f"{LOOPBACK}:{run.port}"
            for cid, run in self.running.items()
        }
        config = dask_edge.routes_config(schedulers)
        # Written beside the folder, then moved in: Traefik never reads half a file.
        temporary = self.routes.parent.with_name(f".{self.routes.name}")
        temporary.write_text(yaml.safe_dump(config))
        temporary.replace(self.routes)

    def _start(self, pod: client.V1Pod) -> None:
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        cluster_id = env[contract.ENV_CLUSTER_ID]
        secret = self.core.read_namespaced_secret(f"{cluster_id}-tls", self.namespace)
        tls = self.workdir / cluster_id / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        for name, value in secret.data.items():
            (tls / name).write_bytes(base64.b64decode(value))
        port, dashboard_port = free_port(), free_port()
        log = self.workdir / cluster_id / "scheduler.log"
        program_env = {
            **os.environ,
            **self.env,
            **env,
            contract.ENV_TLS_DIR: str(tls),
            "FACILITY_SCHEDULER_HOST": LOOPBACK,
            "FACILITY_SCHEDULER_PORT": str(port),
            "FACILITY_DASHBOARD_PORT": str(dashboard_port),
        }
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", contract.SCHEDULER_MODULE],
                env=program_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        with self._lock:
            self.running[cluster_id] = RunningScheduler(
                cluster_id, process, port, dashboard_port, log
            )
            self._write_routes()

    def _stop_one(self, cluster_id: str) -> None:
        with self._lock:
            run = self.running.pop(cluster_id)
            self._write_routes()
        if run.process.poll() is None:
            stop(run.process)

    def _sync(self) -> None:
        selector = f"{contract.LABEL_COMPONENT}={contract.SCHEDULER}"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        live = {
            pod.metadata.labels[contract.LABEL_CLUSTER]: pod
            for pod in pods
            if pod.metadata.deletion_timestamp is None
        }
        for cluster_id, pod in live.items():
            run = self.running.get(cluster_id)
            if run is None and pod.status.phase == "Running":
                self._start(pod)
            elif (
                run is not None and run.process.poll() is not None and pod.status.phase == "Running"
            ):
                # Ended by itself (idle): as the kubelet reports a container that exited 0.
                phase = "Succeeded" if run.process.returncode == 0 else "Failed"
                self.core.patch_namespaced_pod_status(
                    pod.metadata.name, self.namespace, {"status": {"phase": phase}}
                )
        for cluster_id in set(self.running) - set(live):
            self._stop_one(cluster_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as error:  # the API server restarting: try again
                print(f"scheduler pods: {error}")
            self._stop.wait(0.3)

    @contextmanager
    def run(self) -> Iterator[SchedulerPods]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)
            for cluster_id in list(self.running):
                self._stop_one(cluster_id)


@contextmanager
def dashboard_forwarder(pods: SchedulerPods) -> Iterator[str]:
    """HTTP on loopback: /<cluster-id>/<path> is the path of that cluster's dashboard. Yields the
    operator's FACILITY_SCHEDULER_URL template."""

    async def forward(request: web.Request) -> web.StreamResponse:
        port = pods.dashboard(request.match_info["cluster"])
        if port is None:
            return web.Response(status=502, text="no such scheduler")
        url = f"http://{LOOPBACK}:{port}/{request.match_info['path']}"
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, url, data=await request.read()) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type)  # fmt: skip

    app = web.Application()
    app.router.add_route("*", "/{cluster}/{path:.*}", forward)
    with serve_app(app) as url:
        yield url + "/{cluster_id}"


@dataclass(frozen=True)
class FileEdge:
    """The real Traefik with the chart's public entrypoint, its routes from a watched folder
    (one file per SchedulerPods)."""

    edge: dask_edge.Edge
    routes: Path

    def routes_file(self, namespace: str) -> Path:
        return self.routes / f"{namespace}.yaml"

    def routers(self) -> list[str]:
        return [r["name"] for r in dask_edge.enabled_routers(self.edge.api_port, "tcp")]

    def serves(self, cluster_id: str) -> bool:
        return any(name.startswith(f"{cluster_id}@") for name in self.routers())


@contextmanager
def file_edge(workdir: Path) -> Iterator[FileEdge]:
    """Traefik watching the folder `workdir/routes` (written by SchedulerPods)."""
    routes = workdir / "routes"
    chart_args, files = dask_edge.chart_edge()
    # The chart's hub route (to nowhere: no hub here), so the edge starts as the chart's does.
    dask_edge.write_edge_files(routes, files, "http://127.0.0.1:9")
    port, api_port, metrics_port = free_port(), free_port(), free_port()
    log = workdir / "traefik.log"
    args = dask_edge.local_edge_args(chart_args, port, api_port, routes, None, metrics_port)
    with log.open("wb") as out:
        process = subprocess.Popen([tool("traefik"), *args], stdout=out, stderr=out)
    edge = dask_edge.Edge(process, port, api_port, log, metrics_port)
    try:
        wait_for(lambda: dask_edge.enabled_routers(api_port, "http"), f"Traefik ({log})", 30)
        yield FileEdge(edge, routes)
    finally:
        stop(process)


# --- the whole path of a user: a real JupyterHub, the user's server, the operator's API

ADMIN_TOKEN = secrets.token_hex(32)


def hub_values() -> dict[str, Any]:
    """A development hub, plus a service that plays the site's admin and makes users' tokens."""
    admin = {"name": "test-admin", "api_token": ADMIN_TOKEN}
    role = {"name": "test-admin", "services": ["test-admin"],
            "scopes": ["admin:users", "tokens", "admin:groups"]}  # fmt: skip
    return {
        "devMode": True,
        "culler": {"enabled": False},
        "hub": {
            "tokenServicePort": free_port(),
            "config": {"JupyterHub": {"services": [admin], "load_roles": [role]}},
        },
    }


def hub_api(hub: Hub, method: str, path: str, body: Any = None) -> Any:
    answer = requests.request(
        method, f"{hub.url}/hub/api{path}", json=body, timeout=10,
        headers={"Authorization": f"token {ADMIN_TOKEN}"},
    )  # fmt: skip
    assert answer.ok, answer.text
    return answer.json()


def user_tokens(
    hub: Hub, users: tuple[str, ...], scopes: list[str] | None = None
) -> dict[str, str]:
    """A JupyterHub token of each user, with no more scope than a notebook server's own (the
    facility's services and activity), or with `scopes`."""
    if scopes is None:
        scopes = ["users:activity!user", *services.USER_SERVICE_SCOPES]
    out = {}
    for name in users:
        hub_api(hub, "POST", f"/users/{name}")
        made = hub_api(hub, "POST", f"/users/{name}/tokens", {"expires_in": 3600, "scopes": scopes})
        out[name] = made["token"]
    return out


def get(kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    done = kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(done.stdout) if done.stdout.strip() else None


def start_server(user: str, namespace: str) -> dict[str, Any]:
    """A pod as KubeSpawner makes a user's server (its labels and annotation), running."""
    name = f"jupyter-{user}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "component": "singleuser-server",
                "hub.jupyter.org/username": user,
                "app.kubernetes.io/component": "singleuser-server",
            },
            "annotations": {"hub.jupyter.org/username": user},
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "notebook",
                    "image": "facility/analysis:test",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    running = wait_for(
        lambda: (p := get("pod", name, namespace)) and p["status"].get("phase") == "Running" and p,
        f"{name} to run",
    )
    return running  # type: ignore[return-value]


@dataclass
class Facility:
    """A user's whole path on loopback: hub, API, operator, schedulers, edge, workers."""

    namespace: str
    hub: Hub
    operator: Operator
    pods: SchedulerPods
    edge: FileEdge
    tokens: dict[str, str]

    @property
    def api_url(self) -> str:
        return self.operator.api_url


@contextmanager
def running_facility(
    workdir: Path,
    namespace: str,
    values: dict[str, Any],
    env: dict[str, str] | None = None,
    users: tuple[str, ...] = ("alice",),
) -> Iterator[Facility]:
    """The real hub, each user's server pod (kwok), the operator with its API and these values,
    the scheduler programs and the edge (whose port and the Dask domain the values get)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/daskclusters.facility.hep.io")
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(run_hub(workdir / "hub", hub_values(), free_port()))
        tokens = user_tokens(hub, users)
        for user in users:
            start_server(user, namespace)
        edge = stack.enter_context(file_edge(workdir / "edge"))
        pods = SchedulerPods(
            namespace, workdir / "schedulers", edge.routes_file(namespace), dict(env or {})
        )
        stack.enter_context(pods.run())
        scheduler_url = stack.enter_context(dashboard_forwarder(pods))
        public = {
            "edge": {"service": {"port": edge.edge.port}, "dask": {"domain": dask_edge.DOMAIN}}
        }
        operator = Operator(
            workdir / "operator", namespace, merge_values(public, values),
            env={**(env or {}), "FACILITY_SCHEDULER_URL": scheduler_url,
                 "FACILITY_HUB_API_URL": f"{hub.url}/hub/api"},
        )  # fmt: skip
        operator.start()
        try:
            yield Facility(namespace, hub, operator, pods, edge, tokens)
        finally:
            kubectl("delete", "daskclusters.facility.hep.io", "--all", "-n", namespace,
                    "--timeout=90s", check=False)  # fmt: skip
            operator.stop()
            print(operator.log.read_text()[-6000:])
