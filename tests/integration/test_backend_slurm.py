"""The SLURM backend, live: the real operator makes, watches and removes real SLURM jobs whose
Dask workers reach their real scheduler through the real Traefik edge by SNI.

The parts (harness/operator_stack.py): the operator process against the local
cluster's API server (kwok nodes); each scheduler pod's program run on loopback by
`SchedulerPods` (kwok runs no container); a one-machine SLURM (harness/slurm.py:
munged, slurmctld, slurmd, slurmrestd with auth/jwt, 2 CPUs, 2 GiB) whose jobs run as two local
accounts, the batch users of alice and bob (operator.batchUsers.table); Traefik with the
chart's entrypoint, its SNI routes from a file. The clusters are DaskCluster objects written
here as the user API writes them (the API's own tests are tests/integration/test_operator_api.py);
a user's client connects through the edge with the cluster's credentials, as FacilityCluster
does.

No wildcard DNS resolves `<id>.<domain>` here, so the backend's `edgeHost` is 127.0.0.1:
workers dial Traefik's loopback address and send the cluster's name by
`dask worker --scheduler-sni`; the client sets the same SNI.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.comm.core import FatalCommClosedError
from facility_client.security import client_security
from facility_operator.backends import backend_for
from facility_operator.backends.slurm import SLURMBackend, SlurmError

from harness import dask_edge
from harness.commands import kubectl
from harness.net import free_port
from harness.operator_stack import (
    FileEdge,
    Operator,
    SchedulerPods,
    dashboard_forwarder,
    file_edge,
)
from harness.paths import CHART
from harness.slurm import SlurmCluster, batch_system
from harness.wait import wait_for

pytestmark = pytest.mark.cluster

DASK_CLUSTERS = "daskclusters.facility.hep.io"
QUOTA = 3  # workers and cores of every user (the SLURM node has 2 CPUs: a third job queues)
WORKER = {"cores": 1, "memory": "256Mi", "disk": "100Mi"}
# Each JupyterHub user's batch user, by the site's table.
BATCH_USERS = {"alice": "facility-test-alice", "bob": "facility-test-bob"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slurm-backend")


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    with batch_system(BATCH_USERS.values(), (free_port(), free_port(), free_port())) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def edge(workdir: Path) -> Iterator[FileEdge]:
    with file_edge(workdir / "edge") as running:
        yield running


@pytest.fixture(scope="module")
def module_namespace(cluster: Path) -> Iterator[str]:
    name = "t-slurm-workers"
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def slurm_values(
    edge: FileEdge, slurm: SlurmCluster, log_dir: Path, **backend: Any
) -> dict[str, Any]:
    operator = slurm.operator_values(log_dir, BATCH_USERS, **backend)
    return {
        "edge": {"dask": {"domain": dask_edge.DOMAIN}, "service": {"port": edge.edge.port}},
        "operator": operator
        | {
            "statusInterval": 1,
            "sweepInterval": 5,
            "workers": {"interval": 1, "maxStartFailures": 3},
            "quotas": {"default": {"clusters": 10, "workers": QUOTA, "cores": QUOTA}},
        },
    }


@dataclass
class Stack:
    namespace: str
    operator: Operator
    pods: SchedulerPods
    slurm: SlurmCluster
    edge: FileEdge


@pytest.fixture(scope="module")
def stack(
    workdir: Path, slurm: SlurmCluster, edge: FileEdge, module_namespace: str
) -> Iterator[Stack]:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", f"crd/{DASK_CLUSTERS}")
    jobs = slurm.job_folder("jobs")
    pods = SchedulerPods(
        module_namespace, workdir / "schedulers", edge.routes_file(module_namespace)
    )
    with pods.run(), dashboard_forwarder(pods) as scheduler_url:
        operator = Operator(
            workdir / "operator",
            module_namespace,
            slurm_values(edge, slurm, jobs),
            env={**slurm.operator_env, "FACILITY_SCHEDULER_URL": scheduler_url},
        )
        operator.start()
        try:
            yield Stack(module_namespace, operator, pods, slurm, edge)
        finally:
            kubectl("delete", DASK_CLUSTERS, "--all", "-n", module_namespace, "--timeout=90s")
            operator.stop()
            print(operator.log.read_text()[-8000:])


def make_cluster(stack: Stack, cluster_id: str, owner: str = "alice", **spec: Any) -> str:
    """A DaskCluster as the user API writes it for `owner`."""
    manifest = {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {
            "name": cluster_id,
            "namespace": stack.namespace,
            "labels": {"facility.hep.io/cluster": cluster_id, "facility.hep.io/owner": owner},
            "annotations": {"facility.hep.io/owner-groups": "[]"},
        },
        "spec": {"owner": owner, "backend": "slurm", "worker": WORKER, "idleTimeout": 0} | spec,
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: stack.pods.dashboard(cluster_id), f"the scheduler of {cluster_id}", 60)
    wait_for(lambda: stack.edge.serves(cluster_id), f"the edge's route to {cluster_id}", 30)
    return cluster_id


def patch_spec(stack: Stack, cluster_id: str, spec: dict[str, Any]) -> None:
    kubectl(
        "patch", DASK_CLUSTERS, cluster_id, "-n", stack.namespace, "--type=merge",
        "-p", json.dumps({"spec": spec}),
    )  # fmt: skip


def status(stack: Stack, cluster_id: str) -> dict[str, Any]:
    done = kubectl("get", DASK_CLUSTERS, cluster_id, "-n", stack.namespace, "-o", "json")
    return json.loads(done.stdout).get("status") or {}


def delete(stack: Stack, cluster_id: str) -> None:
    kubectl("delete", DASK_CLUSTERS, cluster_id, "-n", stack.namespace, "--timeout=90s")
    wait_for(lambda: not active_jobs(stack.slurm, stack.namespace, cluster_id), "no job left", 60)


def active_jobs(slurm: SlurmCluster, namespace: str, cluster_id: str | None = None) -> list[str]:
    """(id) of the cluster's (or the namespace's) jobs that have not ended."""
    prefix = f"facility:{namespace}/{cluster_id}" if cluster_id else f"facility:{namespace}/"
    return [
        job for job, _, comment in slurm.squeue()
        if (comment == prefix if cluster_id else comment.startswith(prefix))
    ]  # fmt: skip


def job_names(slurm: SlurmCluster, jobs: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%j", "--jobs", ",".join(jobs)],
        env=slurm.env, check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(line.split("|", 1) for line in out.splitlines())


def batch_script(slurm: SlurmCluster, job: str, as_user: str = "root") -> str:
    """The job's script as `as_user` reads it with scontrol (SLURM's words when it refuses)."""
    done = subprocess.run(
        ["runuser", "-u", as_user, "--", "scontrol", "write", "batch_script", job, "-"],
        env=slurm.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout + done.stderr


def job_record(slurm: SlurmCluster, job: str) -> dict[str, str]:
    """What slurmctld holds of one job (scontrol show job, as root), as key=value fields."""
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job],
        env=slurm.env, check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def as_user(slurm: SlurmCluster, user: str, *command: str) -> subprocess.CompletedProcess[str]:
    """A SLURM command run by a batch user on the node (munge says who they are)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", *command],
        env=slurm.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@contextmanager
def user_client(stack: Stack, cluster_id: str) -> Iterator[Client]:
    """alice's client, through the edge by SNI with the cluster's credentials."""
    done = kubectl("get", "secret", f"{cluster_id}-tls", "-n", stack.namespace, "-o", "json")
    data = {k: base64.b64decode(v).decode() for k, v in json.loads(done.stdout)["data"].items()}
    sni = f"{cluster_id}.{dask_edge.DOMAIN}"
    security = client_security(data["cluster-ca.crt"], data["tls.crt"], data["tls.key"], sni)

    def connected() -> Client | None:
        # Traefik's API lists a new route a moment before its TCP router takes connections;
        # a handshake in that moment ends in EOF (FatalCommClosedError), and Dask gives up.
        try:
            return Client(stack.edge.edge.address, security=security, timeout=30)
        except FatalCommClosedError:
            return None

    with wait_for(connected, f"alice's client connected to {cluster_id}", 30) as client:
        yield client


class MostJobs:
    """The largest number of a namespace's active jobs seen while the block runs."""

    def __init__(self, slurm: SlurmCluster, namespace: str) -> None:
        self.slurm, self.namespace, self.most = slurm, namespace, 0
        self._stop = threading.Event()

    def __enter__(self) -> MostJobs:
        def watch() -> None:
            while not self._stop.is_set():
                self.most = max(self.most, len(active_jobs(self.slurm, self.namespace)))
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_the_operator_makes_the_workers_and_they_join_through_the_edge(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-join0", minWorkers=2, maxWorkers=2)
    jobs = wait_for(
        lambda: len(found := active_jobs(stack.slurm, stack.namespace, cluster_id)) == 2 and found,
        "2 jobs, submitted by the operator",
    )
    names = job_names(stack.slurm, jobs)  # type: ignore[arg-type]
    assert sorted(names.values()) == [f"{cluster_id}-default-0", f"{cluster_id}-default-1"]
    key = f"{stack.namespace}/{cluster_id}"
    for job in jobs:  # type: ignore[union-attr]
        record = job_record(stack.slurm, job)
        assert record["UserId"].startswith("facility-test-alice(")  # alice's batch user
        assert record["Comment"] == f"facility:{key}"
        assert record["JobName"] == names[job]
        assert record["NumCPUs"] == "1"
        assert record["MinMemoryNode"] == "256M"
        assert record["Partition"] == "debug"
        assert record["TimeLimit"] == "UNLIMITED"  # no walltime set: the partition's default
        script = batch_script(stack.slurm, job)
        # The workers know only the edge: its address, and the cluster's name as SNI.
        assert f"tls://127.0.0.1:{stack.edge.edge.port}" in script
        assert f"--scheduler-sni {cluster_id}.{dask_edge.DOMAIN}" in script
        # The TLS files come in the script itself (no shared file system), for the job alone.
        assert "umask 077" in script
        assert "--tls-ca-file $FACILITY_TLS/cluster-ca.crt" in script
        assert f"--name {names[job]}" in script

    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
        assert sorted(w["name"] for w in client.scheduler_info()["workers"].values()) == sorted(
            names.values()
        )
        assert client.submit(sum, range(100)).result(timeout=60) == 4950
    wait_for(
        lambda: status(stack, cluster_id).get("workerStates", {}).get("connected") == 2,
        "the status to count 2 connected workers",
    )
    assert status(stack, cluster_id)["workers"] == 2
    delete(stack, cluster_id)


def test_each_users_jobs_are_theirs_alone(stack: Stack) -> None:
    """alice's and bob's workers run as their own batch users; bob, logged in on the batch
    system or holding a token of his own for slurmrestd, can neither read alice's job script
    (with her cluster's TLS key) nor cancel or hold her job."""
    alice = make_cluster(stack, "alice-mine0", minWorkers=1, maxWorkers=1)
    bob = make_cluster(stack, "bob-mine0", owner="bob", minWorkers=1, maxWorkers=1)
    alice_job, bob_job = (
        wait_for(lambda c=c: active_jobs(stack.slurm, stack.namespace, c), f"{c}'s job")[0]
        for c in (alice, bob)
    )
    assert job_record(stack.slurm, alice_job)["UserId"].startswith("facility-test-alice(")
    assert job_record(stack.slurm, bob_job)["UserId"].startswith("facility-test-bob(")
    mallory = BATCH_USERS["bob"]
    # Her script holds her cluster's key: SLURM shows it to her alone.
    assert "PRIVATE KEY" in batch_script(stack.slurm, alice_job, as_user=BATCH_USERS["alice"])
    stolen = batch_script(stack.slurm, alice_job, as_user=mallory)
    assert "job script retrieval failed: Invalid user id" in stolen
    assert "PRIVATE KEY" not in stolen
    cancel = as_user(stack.slurm, mallory, "scancel", alice_job)
    assert "Access/permission denied" in cancel.stderr
    hold = as_user(stack.slurm, mallory, "scontrol", "hold", alice_job)
    assert hold.returncode != 0
    assert f"Invalid user id for job {alice_job}" in hold.stderr
    # Through slurmrestd, with a valid token of bob's own: refused by slurmctld alike.
    backend = backend_for(
        "slurm", {"rest_url": stack.slurm.rest_url, "jwt_key_file": str(stack.slurm.jwt_key)}
    )
    with pytest.raises(SlurmError, match="Access/permission denied"):
        backend.call("DELETE", f"job/{alice_job}", mallory)
    with pytest.raises(SlurmError, match="Invalid user id"):
        backend.call("POST", f"job/{alice_job}", mallory, {"hold": True})
    # A token signed with any other key is no token: slurmctld drops the connection.
    forged = SLURMBackend({"rest_url": stack.slurm.rest_url, "jwt_key_file": __file__})
    with pytest.raises(SlurmError, match="Zero Bytes were transmitted or received"):
        forged.call("DELETE", f"job/{alice_job}", BATCH_USERS["alice"])
    assert job_record(stack.slurm, alice_job)["JobState"] in ("PENDING", "RUNNING")
    assert job_record(stack.slurm, alice_job)["Priority"] != "0"  # not held
    delete(stack, bob)
    delete(stack, alice)


def test_killed_and_restarted_workers_are_replaced_and_the_result_is_right(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-kill0", minWorkers=2, maxWorkers=2)
    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
        before = set(active_jobs(stack.slurm, stack.namespace, cluster_id))
        # Work that takes a while, so that a job dies in the middle of it. A lambda: cloudpickle
        # sends it by value (the workers cannot import this test module).
        futures = client.map(lambda x: (__import__("time").sleep(0.5), x * x)[1], range(40))
        wait_for(lambda: sum(f.done() for f in futures) >= 4, "the computation under way")
        victim = sorted(before)[0]
        subprocess.run(["scancel", victim], env=stack.slurm.env, check=True, timeout=30)
        assert client.submit(sum, futures).result(timeout=180) == sum(x * x for x in range(40))
        wait_for(
            lambda: (
                len(now := set(active_jobs(stack.slurm, stack.namespace, cluster_id))) == 2
                and victim not in now
            ),
            "a replacement job, made by the operator",
        )
        client.wait_for_workers(2, timeout=120)

        # client.restart(): the workers (no Nanny) close; the operator brings the cluster back.
        first = set(active_jobs(stack.slurm, stack.namespace, cluster_id))
        client.restart(timeout=60, wait_for_workers=False)
        wait_for(
            lambda: (
                len(now := set(active_jobs(stack.slurm, stack.namespace, cluster_id))) == 2
                and not now & first
            ),
            "two new jobs after client.restart()",
        )
        client.wait_for_workers(2, timeout=120)
        assert client.submit(sum, range(10)).result(timeout=60) == 45
    delete(stack, cluster_id)


def test_scale_down_retires_workers_before_their_jobs_go(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-down0", minWorkers=2, maxWorkers=2)
    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
        workers = list(client.scheduler_info()["workers"])
        # Scattered data has no lineage: a worker killed with it would lose it for good.
        pieces = [
            client.scatter(list(range(i, i + 100)), workers=[w]) for i, w in enumerate(workers)
        ]
        patch_spec(stack, cluster_id, {"minWorkers": 1, "maxWorkers": 1})
        wait_for(
            lambda: len(active_jobs(stack.slurm, stack.namespace, cluster_id)) == 1,
            "one job left",
        )
        assert len(client.scheduler_info()["workers"]) == 1
        assert [sum(p) for p in client.gather(pieces)] == [sum(range(i, i + 100)) for i in range(2)]
    delete(stack, cluster_id)


def test_adapt_stays_within_max_whatever_the_scheduler_asks(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-adapt", minWorkers=0, maxWorkers=0)
    with MostJobs(stack.slurm, stack.namespace) as seen, user_client(stack, cluster_id) as client:
        # The user's code runs in the scheduler: it may claim any target it likes.
        client.run_on_scheduler(
            lambda dask_scheduler: setattr(dask_scheduler, "adaptive_target", lambda *a, **k: 50)
        )
        patch_spec(stack, cluster_id, {"minWorkers": 0, "maxWorkers": 2})
        held = wait_for(
            lambda: "maxWorkers" in (s := status(stack, cluster_id)).get("heldBack", "") and s,
            "the status to say that maxWorkers holds the cluster back",
        )
        assert "50" in held["heldBack"]  # type: ignore[index]
        client.wait_for_workers(2, timeout=120)
    assert seen.most == 2
    delete(stack, cluster_id)


def test_quotas_hold_over_all_of_a_users_clusters(stack: Stack) -> None:
    """Spec patches straight to the API server (past what the user API would allow): the
    operator still starts no worker past the owner's quota, counted as the workers exist."""
    with MostJobs(stack.slurm, stack.namespace) as seen:
        first = make_cluster(stack, "alice-quota", minWorkers=2, maxWorkers=2)
        wait_for(lambda: len(active_jobs(stack.slurm, stack.namespace, first)) == 2, "2 jobs")
        second = make_cluster(stack, "alice-quotb", minWorkers=5, maxWorkers=5)
        held = wait_for(
            lambda: (s := status(stack, second)).get("heldBack") and s, "the second held back"
        )
        assert "operator.quotas.default.workers" in held["heldBack"]  # type: ignore[index]
        assert "1 of 5" in held["heldBack"]  # type: ignore[index]
        assert len(active_jobs(stack.slurm, stack.namespace, second)) == 1
        # From inside the second cluster's scheduler: no way past the quota either.
        with user_client(stack, second) as client:
            client.run_on_scheduler(
                lambda dask_scheduler: setattr(
                    dask_scheduler, "adaptive_target", lambda *a, **k: 99
                )
            )
            patch_spec(stack, second, {"minWorkers": 0, "maxWorkers": 10})
            wait_for(
                lambda: "quota" in status(stack, second).get("heldBack", ""),
                "the adaptive cluster held back by the quota",
            )
        delete(stack, second)
        delete(stack, first)
    assert seen.most == QUOTA


def test_two_worker_groups(stack: Stack) -> None:
    cluster_id = make_cluster(
        stack, "alice-group", minWorkers=1, maxWorkers=1,
        workerGroups=[
            {"name": "big", "cores": 1, "memory": "300Mi", "disk": "100Mi", "minWorkers": 1,
             "maxWorkers": 1}
        ],
    )  # fmt: skip
    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
        names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
    assert [n.rsplit("-", 1)[0] for n in names] == [f"{cluster_id}-big", f"{cluster_id}-default"]
    jobs = job_names(stack.slurm, active_jobs(stack.slurm, stack.namespace, cluster_id))
    memory = {name: job_record(stack.slurm, job)["MinMemoryNode"] for job, name in jobs.items()}
    assert sorted(memory.values()) == ["256M", "300M"]
    assert next(size for name, size in memory.items() if "-big-" in name) == "300M"
    delete(stack, cluster_id)


def test_operator_killed_in_a_scale_up_makes_no_duplicate(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-crash", minWorkers=0, maxWorkers=0)
    patch_spec(stack, cluster_id, {"minWorkers": 2, "maxWorkers": 2})
    wait_for(lambda: active_jobs(stack.slurm, stack.namespace, cluster_id), "the first job", 30)
    stack.operator.kill()
    stack.operator.start()
    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
    jobs = active_jobs(stack.slurm, stack.namespace, cluster_id)
    assert len(jobs) == 2
    assert len(set(job_names(stack.slurm, jobs).values())) == 2
    delete(stack, cluster_id)


def test_operator_killed_in_a_scale_down_loses_no_worker(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-crdwn", minWorkers=2, maxWorkers=2)
    with user_client(stack, cluster_id) as client:
        client.wait_for_workers(2, timeout=120)
        data = client.scatter(list(range(1000)), broadcast=False)
        patch_spec(stack, cluster_id, {"minWorkers": 1, "maxWorkers": 1})
        stack.operator.kill()  # before, during or after the retirement: whichever it hits
        stack.operator.start()
        wait_for(
            lambda: len(active_jobs(stack.slurm, stack.namespace, cluster_id)) == 1,
            "one job left after the restart",
        )
        assert len(client.scheduler_info()["workers"]) == 1
        assert sum(client.gather(data)) == sum(range(1000))
        # And up again: a new name, no second worker of an old one.
        patch_spec(stack, cluster_id, {"minWorkers": 2, "maxWorkers": 2})
        client.wait_for_workers(2, timeout=120)
        names = job_names(stack.slurm, active_jobs(stack.slurm, stack.namespace, cluster_id))
        assert len(set(names.values())) == 2
    delete(stack, cluster_id)


def test_idle_timeout_ends_the_cluster_and_its_jobs(stack: Stack) -> None:
    cluster_id = make_cluster(stack, "alice-idle0", minWorkers=1, maxWorkers=1, idleTimeout=5)
    wait_for(lambda: active_jobs(stack.slurm, stack.namespace, cluster_id), "the job")
    wait_for(
        lambda: (
            kubectl(
                "get", DASK_CLUSTERS, cluster_id, "-n", stack.namespace, "--ignore-not-found"
            ).stdout
            == ""
        ),
        "the idle cluster to be deleted by the operator",
        120,
    )
    wait_for(lambda: not active_jobs(stack.slurm, stack.namespace, cluster_id), "no job left")


def test_workers_failing_before_they_connect_are_reported_then_stopped(
    workdir: Path, slurm: SlurmCluster, edge: FileEdge, namespace: str
) -> None:
    """A worker command that cannot run (exit code 127): the reason and the end of the job's
    output reach the cluster's status, and after maxStartFailures the operator stops trying."""
    jobs = slurm.job_folder("broken-jobs")
    operator = Operator(
        workdir / "broken-operator", namespace,
        slurm_values(edge, slurm, jobs, python="/nonexistent/python3"), env=slurm.operator_env,
    )  # fmt: skip
    operator.start()
    try:
        stack = Stack(namespace, operator, SchedulerPods(namespace, workdir, workdir), slurm, edge)
        manifest_id = "alice-broke"
        kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "facility.hep.io/v1alpha1", "kind": "DaskCluster",
            "metadata": {"name": manifest_id, "namespace": namespace,
                         "labels": {"facility.hep.io/owner": "alice"}},
            "spec": {"owner": "alice", "backend": "slurm", "worker": WORKER,
                     "minWorkers": 1, "maxWorkers": 1, "idleTimeout": 0},
        }))  # fmt: skip
        stopped = wait_for(
            lambda: (
                (s := status(stack, manifest_id)).get("startFailures", {}).get("default", 0) >= 3
                and "before they connected" in s.get("heldBack", "")
                and s
            ),
            "three failed starts, then none",
            180,
        )
        failure = stopped["recentFailures"][-1]  # type: ignore[index]
        assert failure["state"] == "failed"
        assert "exit code 127" in failure["reason"]
        assert "/nonexistent/python3" in failure["log"]
        assert not active_jobs(slurm, namespace, manifest_id)
        # A new size is a new chance.
        patch_spec(stack, manifest_id, {"minWorkers": 2, "maxWorkers": 2})
        before = stopped["nextWorker"]  # type: ignore[index]
        wait_for(
            lambda: status(stack, manifest_id).get("nextWorker", 0) > before,
            "a new worker started after the new size",
        )
        kubectl("delete", DASK_CLUSTERS, manifest_id, "-n", namespace, "--timeout=90s")
    finally:
        operator.stop()
        print(operator.log.read_text()[-6000:])


def test_remove_all_removes_one_cluster_only(slurm: SlurmCluster) -> None:
    backend = backend_for("slurm", {"rest_url": slurm.rest_url, "jwt_key_file": str(slurm.jwt_key)})
    mine, other = "t-slurm/bob-aaaaa", "t-other/bob-aaaaa"
    for key in (mine, mine, other):
        submitted = as_user(
            slurm, BATCH_USERS["bob"], "sbatch", f"--comment=facility:{key}", "--mem=8M",
            "--output=/dev/null", "--chdir=/tmp", "--job-name=bob-aaaaa-default-0",
            "--wrap", "sleep 600",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
    assert len(backend.jobs(mine)) == 2
    # The sweep lists one namespace: another facility's jobs on the same batch system stay.
    assert {key: len(jobs) for key, jobs in backend.list_all("t-slurm").items()} == {mine: 2}
    assert {key: len(jobs) for key, jobs in backend.list_all("t-other").items()} == {other: 1}

    assert backend.remove_all(mine) == 2
    wait_for(lambda: not backend.list_all("t-slurm"), "the jobs of one cluster to go", 30)
    assert len(backend.list_all("t-other")[other]) == 1
    assert backend.remove_all(other) == 1
    wait_for(lambda: not slurm.squeue(), "every job to go", 30)
