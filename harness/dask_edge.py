"""Dask clusters behind the edge, as the chart and the operator make them, all on loopback.

The real Traefik runs with the chart's own arguments and files (the hub's HTTPS route), its
public entrypoint (`websecure`) on a free loopback port. The operator's Dask routes
(facility_operator.edge_routes: per cluster a TCP router `HostSNI(`<id>.<domain>`)` with TLS
passthrough to the scheduler) are written as one more file, with the schedulers' loopback
addresses. Each cluster is a real `distributed` Scheduler in its own process (as its pod runs
it), with its own TLS identity (facility_operator.certs) and `scheduler_security`; workers are
`dask worker` processes, as batch jobs run them.

No wildcard DNS resolves `<id>.<domain>` here, so clients and workers dial the edge's loopback
address and set the cluster's name as the SNI by hand (`ClusterSecurity(sni=...)`,
`dask worker --scheduler-sni`): on the wire this is what a connection to
`tls://<id>.<domain>:<port>` sends. Workers run without a Nanny for the same reason: the Nanny's
own connections to the scheduler do not carry `--scheduler-sni` (FIELD-NOTES.md), which only
matters without DNS.

Shared by tests/integration/test_dask_edge.py and bench/dask_edge/run.py. This module is also the
scheduler process: `python -m harness.dask_edge <tls-dir> <port> <contact-address>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import string
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from distributed import Scheduler, get_worker
from facility_client.security import ClusterSecurity, client_security, scheduler_security
from facility_operator import edge_routes
from facility_operator.certs import ClusterIdentity, KeyPair, new_cluster_identity

from harness.chart import VALUES_DIR, objects, render
from harness.commands import stop, tool
from harness.net import free_port
from harness.paths import ROOT
from harness.wait import wait_for

DOMAIN = "dask.example.org"
LOOPBACK = "127.0.0.1"
ENTRYPOINT = "websecure"  # the chart's one public entrypoint


def chart_edge(*settings: str) -> tuple[list[str], dict[str, str]]:
    """The edge container's arguments and its files (the edge ConfigMap's data), as the chart
    renders them with its default values and these `--set` settings."""
    extra = [arg for setting in settings for arg in ("--set", setting)]
    rendered = objects(render(VALUES_DIR / "defaults.yaml", "facility", *extra))
    (edge,) = [
        o for o in rendered
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-edge")
    ]  # fmt: skip
    (files,) = [
        o for o in rendered
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-edge")
    ]  # fmt: skip
    return edge["spec"]["template"]["spec"]["containers"][0]["args"], files["data"]


def edge_files(files: dict[str, str], folder: Path, hub: str) -> dict[str, str]:
    """The chart's edge files for a Traefik on loopback that reads them from `folder`: the
    hub's route pointing at `hub` (a URL), the certificate's paths (the SNI list's and the
    default's) in `folder`."""
    local = {}
    for name, text in files.items():
        config = yaml.safe_load(text)
        for service in (config.get("http") or {}).get("services", {}).values():
            service["loadBalancer"]["servers"] = [{"url": hub}]
        tls = config.get("tls") or {}
        stores = [store.get("defaultCertificate") for store in tls.get("stores", {}).values()]
        for certificate in [*tls.get("certificates", []), *filter(None, stores)]:
            for key in ("certFile", "keyFile"):
                certificate[key] = str(folder / Path(certificate[key]).name)
        local[name] = yaml.safe_dump(config)
    return local


def write_edge_files(folder: Path, files: dict[str, str], hub: str) -> None:
    """The chart's edge files into `folder` (edge_files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in edge_files(files, folder, hub).items():
        (folder / name).write_text(text)


def local_edge_args(
    chart_args: list[str],
    port: int,
    api_port: int,
    files: Path,
    routes_url: str | None = None,
    metrics_port: int | None = None,
    *,
    route_files: bool | None = None,
) -> list[str]:
    """The chart's arguments for a process on loopback: the public entrypoint, Traefik's own
    (ping, and the API that shows the loaded routers) and the metrics' on free loopback ports
    (metrics_port, or one of its own), its files from `files`, the operator's routes from
    `routes_url` (None: no HTTP provider), and without the plain-HTTP redirect, which is not
    under test.

    route_files (by default: when there is no routes_url): the test writes the Dask routes as
    files of their own into `files`, so the file provider reads that whole folder instead of the
    chart's one file.
    """
    if route_files is None:
        route_files = routes_url is None
    address = {
        ENTRYPOINT: f"{LOOPBACK}:{port}",
        "traefik": f"{LOOPBACK}:{api_port}",
        # Never the chart's port on every interface: two edges at once would collide.
        "metrics": f"{LOOPBACK}:{metrics_port or free_port()}",
    }
    args = []
    for arg in chart_args:
        option, _, value = arg.partition("=")
        if option.startswith("--entryPoints.web.") or (
            option.startswith("--providers.http.") and routes_url is None
        ):
            continue
        entrypoint = option.split(".")[1] if option.startswith("--entryPoints.") else None
        if entrypoint in address and option.endswith(".address"):
            arg = f"{option}={address.pop(entrypoint)}"
        elif option == "--providers.file.filename":
            local = files if route_files else files / Path(value).name
            arg = f"--providers.file.{'directory' if route_files else 'filename'}={local}"
        elif option == "--providers.http.endpoint":
            arg = f"{option}={routes_url}"
        args.append(arg)
    if address:
        raise ValueError(f"the chart's edge has no address for {sorted(address)}: {chart_args}")
    return [*args, "--api.insecure=true", "--api.dashboard=false"]


def routes_config(schedulers: dict[str, str]) -> dict[str, Any]:
    """The operator's Dask routes (facility_operator.edge_routes) for schedulers on loopback.

    schedulers: SNI name -> the scheduler's host:port.
    """
    return edge_routes.traefik_config(
        {sni.split(".", 1)[0]: (sni, address) for sni, address in schedulers.items()}
    )


def traefik_api(api_port: int, path: str) -> list[dict[str, Any]]:
    """A listing of Traefik's own API (e.g. tcp/routers); empty while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{api_port}/api/{path}", timeout=5) as got:
            return list(json.load(got))
    except OSError:
        return []


def enabled_routers(api_port: int, kind: str) -> list[dict[str, Any]]:
    return [r for r in traefik_api(api_port, f"{kind}/routers") if r.get("status") == "enabled"]


@dataclass(frozen=True)
class Edge:
    process: subprocess.Popen[bytes]
    port: int
    api_port: int
    log: Path
    metrics_port: int

    @property
    def address(self) -> str:
        """Where every client and worker dials: one loopback port for every cluster."""
        return f"tls://{LOOPBACK}:{self.port}"


@contextlib.contextmanager
def running_edge(workdir: Path, port: int, schedulers: dict[str, str], hub: str) -> Iterator[Edge]:
    """Traefik with the chart's entrypoint and these routes, once it has loaded all of them."""
    args, files = chart_edge()
    folder = workdir / "edge"
    write_edge_files(folder, files, hub)
    (folder / "dask.yaml").write_text(yaml.safe_dump(routes_config(schedulers)))
    api_port, metrics_port = free_port(), free_port()
    log = workdir / "traefik.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [tool("traefik"), *local_edge_args(args, port, api_port, folder, None, metrics_port)],
            stdout=out,
            stderr=out,
        )
    edge = Edge(process, port, api_port, log, metrics_port)
    try:
        wait_for(
            lambda: (
                len(enabled_routers(api_port, "tcp")) == len(schedulers)
                and enabled_routers(api_port, "http")
            ),
            f"Traefik's routers (its log: {log})",
            30,
        )
        yield edge
    finally:
        stop(process)


def cluster_id(user: str) -> str:
    """`<user-slug>-<5 random [a-z0-9]>`, as the operator names a cluster."""
    alphabet = string.ascii_lowercase + string.digits
    return f"{user}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


@dataclass(frozen=True)
class Cluster:
    """One user's Dask cluster: its identity (the Secret's files) and its scheduler's ports."""

    id: str
    identity: ClusterIdentity
    tls_dir: Path
    scheduler_port: int
    edge_port: int

    @property
    def sni(self) -> str:
        return f"{self.id}.{DOMAIN}"

    @property
    def public_address(self) -> str:
        """What the operator publishes and gives the scheduler as its contact address.
        (distributed 2026.8.0 keeps the scheduler's `contact_address` but reports its listen
        address to clients: the published address comes from the operator, not the scheduler.)
        """
        return f"tls://{self.sni}:{self.edge_port}"

    @property
    def direct_address(self) -> str:
        return f"tls://{LOOPBACK}:{self.scheduler_port}"

    def security(self, through_edge: bool) -> ClusterSecurity:
        """The user's client settings (the user API's credentials: the cluster's own CA), with the
        SNI for the edge."""
        identity = self.identity
        sni = self.sni if through_edge else None
        return client_security(identity.cluster_ca, identity.tls_cert, identity.tls_key, sni)


def new_cluster(facility_ca: KeyPair, user: str, workdir: Path, edge_port: int) -> Cluster:
    """A cluster's identity written as its Secret would be mounted, and a port for its scheduler."""
    name = cluster_id(user)
    identity = new_cluster_identity(facility_ca, name, f"{name}.{DOMAIN}")
    tls_dir = workdir / name / "tls"
    tls_dir.mkdir(parents=True)
    for filename, text in identity.secret_data().items():
        path = tls_dir / filename
        path.touch(mode=0o600)
        path.write_text(text)
    return Cluster(name, identity, tls_dir, free_port(), edge_port)


def process_env() -> dict[str, str]:
    """Scheduler and workers import this module (the scheduler, the test's task functions)."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def running_scheduler(cluster: Cluster, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The cluster's scheduler process (its pod), once its log says where it listens: a probe
    connection would show in the log that the tests read."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "harness.dask_edge",
                str(cluster.tls_dir), str(cluster.scheduler_port), cluster.public_address,
            ],
            stdout=out, stderr=out, cwd=ROOT, env=process_env(),
        )  # fmt: skip
    try:
        wait_for(lambda: "Scheduler at:" in log.read_text(), f"scheduler {cluster.id} ({log})", 30)
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def running_worker(
    cluster: Cluster, name: str, log: Path, edge: Edge | None, nthreads: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """`dask worker` as a batch job runs it, with the cluster's credentials (the facility CA as
    its trust anchor): through the edge by SNI, or straight at the scheduler without an edge."""
    tls = cluster.tls_dir
    target = [cluster.direct_address]
    if edge is not None:
        target = [edge.address, "--scheduler-sni", cluster.sni]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dask"), "worker", *target,
                "--name", name, "--no-nanny", "--nthreads", str(nthreads),
                "--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0",
                "--local-directory", str(log.parent / name),
                "--tls-ca-file", str(tls / "ca.crt"),
                "--tls-cert", str(tls / "tls.crt"),
                "--tls-key", str(tls / "tls.key"),
            ],
            stdout=out, stderr=out, cwd=ROOT, env=process_env(),
        )  # fmt: skip
    try:
        yield process
    finally:
        stop(process)


def worker_name(_: object = None) -> str:
    """A task: the name of the worker that runs it."""
    return str(get_worker().name)


async def serve_scheduler(tls_dir: Path, port: int, contact_address: str) -> None:
    async with Scheduler(
        host=LOOPBACK,
        port=port,
        dashboard_address=f"{LOOPBACK}:0",
        security=scheduler_security(tls_dir),
        contact_address=contact_address,
    ) as scheduler:
        await scheduler.finished()


if __name__ == "__main__":
    directory, scheduler_port, contact = sys.argv[1:]
    asyncio.run(serve_scheduler(Path(directory), int(scheduler_port), contact))
