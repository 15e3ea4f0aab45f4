"""The SLURM backend, live: the real scheduler program, real SLURM jobs, the real Traefik edge.

A one-machine SLURM (tests/integration/slurm.py: munged, slurmctld, slurmd, as root, on
loopback ports) runs the workers. The scheduler pod's program (`python -m
facility_client.scheduler`) runs as a process with the contract's environment and a TLS
identity from facility_operator.certs; Traefik routes `HostSNI(<id>.<domain>)` on its one
loopback entrypoint to the scheduler's port, with TLS passthrough, as the operator's
IngressRouteTCP does. The scheduler's own port is given to nobody but Traefik.

Name resolution: no wildcard DNS resolves `<id>.<domain>` here, so the backend's `edge_host`
is 127.0.0.1: the workers (SLURM jobs on this host) dial Traefik's loopback address and send
the cluster's name by `dask worker --scheduler-sni`, and the client sets the same SNI
(`client_security(..., sni=...)`). On the wire that is what a dial of the public name sends.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distributed import Client
from facility_client.backends import backend_for
from facility_client.security import client_security
from facility_operator.certs import ClusterIdentity

from tests.conftest import free_port, http_get, tool, wait_for
from tests.integration.slurm import (
    SchedulerProgram,
    SlurmCluster,
    scheduler_program,
    slurm_cluster,
    write_identity,
)

NAMESPACE = "t-slurm"
CLUSTER_ID = "alice-x7k2p"
KEY = f"{NAMESPACE}/{CLUSTER_ID}"
DOMAIN = "dask.test"
SNI = f"{CLUSTER_ID}.{DOMAIN}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slurm-backend")


@pytest.fixture(scope="module")
def slurm(workdir: Path) -> Iterator[SlurmCluster]:
    with slurm_cluster(workdir / "slurm", free_port(), free_port()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def identity(workdir: Path) -> ClusterIdentity:
    return write_identity(workdir / "scheduler" / "tls", CLUSTER_ID, SNI)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("edge", "traefik", "scheduler", "dashboard")}


def tcp_routers(api_port: int) -> list[str]:
    """Names of the TCP routers Traefik has enabled (empty while it is not answering)."""
    status = http_get(f"http://127.0.0.1:{api_port}/api/tcp/routers")
    if status is None or status[0] != 200:
        return []
    return [r["name"] for r in json.loads(status[1]) if r.get("status") == "enabled"]


@pytest.fixture(scope="module")
def edge(workdir: Path, ports: dict[str, int]) -> Iterator[Path]:
    """Traefik: one TCP router by SNI, TLS passthrough, to the scheduler's loopback port."""
    routes = workdir / "routes.yaml"
    router = {
        "entryPoints": ["websecure"],
        "rule": f"HostSNI(`{SNI}`)",
        "service": CLUSTER_ID,
        "tls": {"passthrough": True},
    }
    service = {"loadBalancer": {"servers": [{"address": f"127.0.0.1:{ports['scheduler']}"}]}}
    routes.write_text(
        yaml.safe_dump(
            {"tcp": {"routers": {CLUSTER_ID: router}, "services": {CLUSTER_ID: service}}}
        )
    )
    log = workdir / "traefik.log"
    args = [
        f"--entryPoints.websecure.address=127.0.0.1:{ports['edge']}",
        f"--entryPoints.traefik.address=127.0.0.1:{ports['traefik']}",
        f"--providers.file.filename={routes}",
        "--api.insecure=true",
        "--api.dashboard=false",
        # Prometheus metrics, for the count of TCP connections the edge carries.
        "--metrics.prometheus=true",
        "--metrics.prometheus.entryPoint=traefik",
        # No traffic leaves loopback.
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]
    with log.open("wb") as out:
        traefik = subprocess.Popen([tool("traefik"), *args], stdout=out, stderr=out)
    try:
        wait_for(lambda: tcp_routers(ports["traefik"]), f"Traefik's TCP router (log: {log})", 30)
        yield log
    finally:
        traefik.terminate()
        traefik.wait(timeout=30)


def edge_tcp_connections(api_port: int) -> float:
    """Open TCP connections on the public entrypoint, from Traefik's own metrics."""
    status = http_get(f"http://127.0.0.1:{api_port}/metrics")
    assert status is not None
    assert status[0] == 200
    for line in status[1].splitlines():
        if (
            line.startswith("traefik_open_connections{")
            and 'entrypoint="websecure"' in line
            and 'protocol="TCP"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def workers_metric(text: str) -> float:
    """Connected workers, by the scheduler's Prometheus metrics (summed over their states)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dask_scheduler_workers{")
    )


@pytest.fixture(scope="module")
def scheduler(
    workdir: Path,
    slurm: SlurmCluster,
    identity: ClusterIdentity,
    edge: Path,
    ports: dict[str, int],
) -> Iterator[SchedulerProgram]:
    with scheduler_program(
        slurm,
        workdir / "scheduler",
        cluster_id=CLUSTER_ID,
        namespace=NAMESPACE,
        contact_address=f"tls://{SNI}:{ports['edge']}",
        edge_host="127.0.0.1",
        port=ports["scheduler"],
        dashboard_port=ports["dashboard"],
    ) as program:
        yield program


@pytest.fixture(scope="module")
def client(
    scheduler: SchedulerProgram, identity: ClusterIdentity, ports: dict[str, int]
) -> Iterator[Client]:
    """A user's client, through the edge by SNI (no FacilityCluster: the API is not under test)."""
    security = client_security(identity.facility_ca, identity.tls_cert, identity.tls_key, SNI)
    with Client(f"tls://127.0.0.1:{ports['edge']}", security=security, timeout=30) as client:
        yield client


def cluster_jobs(slurm: SlurmCluster, key: str = KEY) -> list[tuple[str, str, str]]:
    return [row for row in slurm.squeue() if row[2] == f"facility:{key}"]


def batch_script(slurm: SlurmCluster, job: str) -> str:
    return subprocess.run(
        ["scontrol", "write", "batch_script", job, "-"],
        env=slurm.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def test_scale_up_workers_join_through_the_edge(
    slurm: SlurmCluster, scheduler: SchedulerProgram, client: Client, ports: dict[str, int]
) -> None:
    scheduler.scale(2)
    jobs = wait_for(lambda: len(cluster_jobs(slurm)) == 2 and cluster_jobs(slurm), "2 jobs", 60)

    # The workers know only the edge: its address, and the cluster's name as SNI.
    for job, _, _ in jobs:  # type: ignore[union-attr]
        script = batch_script(slurm, job)
        assert f"tls://127.0.0.1:{ports['edge']}" in script
        assert f"--scheduler-sni {SNI}" in script
        assert str(ports["scheduler"]) not in script
        assert "#SBATCH -p debug" in script
        assert f"#SBATCH --comment=facility:{KEY}" in script
        assert "#SBATCH --tmp=100M" in script
        assert "#SBATCH -t " not in script  # no walltime configured: the partition's default
        # The TLS files come in the script itself (no shared file system), for the job alone.
        assert "umask 077" in script
        assert "--tls-ca-file $FACILITY_TLS/cluster-ca.crt" in script

    client.wait_for_workers(2, timeout=120)
    # Each worker keeps its connection to the scheduler open, and so does the client: all
    # through Traefik's one entrypoint.
    assert edge_tcp_connections(ports["traefik"]) >= 3

    assert client.submit(sum, range(100)).result(timeout=60) == 4950
    futures = client.map(lambda x: x * x, range(20))
    assert client.submit(sum, futures).result(timeout=60) == sum(x * x for x in range(20))

    # The operator reads the worker count from the dashboard's Prometheus metrics.
    metrics = http_get(f"http://127.0.0.1:{ports['dashboard']}/metrics")
    assert metrics is not None
    assert metrics[0] == 200
    assert workers_metric(metrics[1]) == 2


def test_a_killed_worker_is_replaced_and_the_result_is_right(
    slurm: SlurmCluster, scheduler: SchedulerProgram, client: Client
) -> None:
    client.wait_for_workers(2, timeout=120)
    before = {job for job, _, _ in cluster_jobs(slurm)}
    # Work that takes a while, so that a job dies in the middle of it. A lambda: cloudpickle
    # sends it by value (the scheduler cannot import this test module).
    futures = client.map(lambda x: (__import__("time").sleep(0.5), x * x)[1], range(40))
    wait_for(lambda: sum(f.done() for f in futures) >= 4, "the computation under way", 60)
    victim = sorted(before)[0]
    subprocess.run(["scancel", victim], env=slurm.env, check=True, timeout=30)

    assert client.submit(sum, futures).result(timeout=120) == sum(x * x for x in range(40))
    # The scheduler starts a job in place of the lost one: two again, one of them new.
    wait_for(
        lambda: len(now := {job for job, _, _ in cluster_jobs(slurm)}) == 2 and now != before,
        "a replacement job",
        120,
    )
    assert victim not in {job for job, _, _ in cluster_jobs(slurm)}
    client.wait_for_workers(2, timeout=120)


def test_scale_to_zero_removes_the_jobs(
    slurm: SlurmCluster, scheduler: SchedulerProgram, client: Client
) -> None:
    scheduler.scale(0)
    wait_for(lambda: not cluster_jobs(slurm), "the cluster's jobs to go", 60)
    wait_for(lambda: not client.scheduler_info()["workers"], "the workers to leave", 60)


def test_remove_jobs_removes_one_cluster_only(
    slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    backend = backend_for("slurm", {})
    mine, other = "t-slurm/bob-aaaaa", "t-other/bob-aaaaa"
    for key in (mine, mine, other):
        subprocess.run(
            [
                "sbatch",
                f"--comment=facility:{key}",
                "--mem=8M",
                "--output=/dev/null",
                "--wrap",
                "sleep 600",
            ],
            env=slurm.env,
            check=True,
            capture_output=True,
            timeout=30,
        )
    assert len(backend.list_jobs(mine)) == 2
    # The sweep lists one namespace: another facility's jobs on the same batch system stay.
    assert {key: len(jobs) for key, jobs in backend.list_all("t-slurm").items()} == {mine: 2}
    assert {key: len(jobs) for key, jobs in backend.list_all("t-other").items()} == {other: 1}

    assert backend.remove_jobs(mine) == 2
    wait_for(lambda: not cluster_jobs(slurm, mine), "the jobs of one cluster to go", 30)
    assert len(backend.list_jobs(other)) == 1

    assert backend.remove_jobs(other) == 1
    wait_for(lambda: not slurm.squeue(), "every job to go", 30)


def test_sigterm_removes_the_jobs_and_exits_0(
    slurm: SlurmCluster, scheduler: SchedulerProgram, client: Client
) -> None:
    scheduler.scale(1)
    client.wait_for_workers(1, timeout=120)
    assert len(cluster_jobs(slurm)) == 1

    assert scheduler.stop() == 0, scheduler.log.read_text()[-3000:]
    wait_for(lambda: not cluster_jobs(slurm), "the cluster's jobs to go", 30)


def test_idle_timeout_ends_the_cluster(slurm: SlurmCluster, workdir: Path) -> None:
    """Dask's idle timeout closes the scheduler: the program removes the jobs and exits 0."""
    cluster_id = "alice-idle0"
    directory = workdir / cluster_id
    write_identity(directory / "tls", cluster_id, f"{cluster_id}.{DOMAIN}")
    port = free_port()
    with scheduler_program(
        slurm,
        directory,
        cluster_id=cluster_id,
        namespace=NAMESPACE,
        # No edge here: the contact port is the scheduler's own.
        contact_address=f"tls://{cluster_id}.{DOMAIN}:{port}",
        edge_host="127.0.0.1",
        port=port,
        dashboard_port=free_port(),
        idle_timeout=5,
    ) as program:
        program.scale(1)
        wait_for(lambda: cluster_jobs(slurm, f"{NAMESPACE}/{cluster_id}"), "the job", 60)
        assert program.process.wait(timeout=90) == 0, program.log.read_text()[-3000:]
    wait_for(lambda: not cluster_jobs(slurm, f"{NAMESPACE}/{cluster_id}"), "the job to go", 30)
