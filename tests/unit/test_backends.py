"""The operator's worker backends, field by field: the HTCondor submit description read back by
HTCondor's own parser (`htcondor2.Submit`, its expressions evaluated with `classad2` as the
schedd would), the SLURM job script, and the Kubernetes worker pod.

No HTCondor pool runs here (FIELD-NOTES.md: no daemon is packaged for this machine), so the
submit itself goes to a stand-in schedd that records what the bindings were asked; the live
SLURM backend is tests/integration/test_backend_slurm.py, the pods' admission
tests/integration/test_backend_kubernetes.py.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import classad2
import htcondor2
import pytest
from facility_operator.backends import backend_for
from facility_operator.backends.base import ClusterWorkers, WorkerGroup
from facility_operator.backends.htcondor import HTCondorBackend, NoUserToken
from facility_operator.backends.kubernetes import worker_pod
from facility_operator.backends.slurm import SLURMBackend, SlurmError, walltime_minutes
from facility_operator.batch_users import NoBatchUser, batch_user
from facility_operator.certs import new_cluster_identity, new_facility_ca

from harness.chart import restricted_violations

CLUSTER_ID = "alice-x7k2p"
CONTACT = f"tls://{CLUSTER_ID}.dask.example.org:443"
IMAGE = "registry.example.org/facility/worker:1.2.3"
TLS = new_cluster_identity(new_facility_ca("test"), CLUSTER_ID, CONTACT).secret_data()


def cluster(token: str = "") -> ClusterWorkers:
    return ClusterWorkers(
        cluster_id=CLUSTER_ID, namespace="users", owner="alice", owner_slug="alice",
        uid="uid-1", instance="af", contact_address=CONTACT, tls=TLS,
        xcache="root://xcache.users.svc:1094", token=token,
    )  # fmt: skip


def group(gpus: int = 0, name: str = "default") -> WorkerGroup:
    return WorkerGroup(name, 4, "8Gi", "20Gi", gpus, IMAGE, 0, 2)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- HTCondor


def job_ad(submit: htcondor2.Submit) -> classad2.ClassAd:
    """The job attributes the description sets (MY.x / +x), as a ClassAd to evaluate in."""
    requests = {"request_cpus": "RequestCpus", "request_memory": "RequestMemory",
                "request_disk": "RequestDisk", "request_gpus": "RequestGPUs"}  # fmt: skip
    ad = classad2.ClassAd()
    for key, value in submit.items():
        name = key.removeprefix("MY.")
        if name != key or key in requests:
            ad[requests.get(key, name)] = classad2.ExprTree(value)
    return ad


def parsed(backend: HTCondorBackend, token: str = "", gpus: int = 0) -> htcondor2.Submit:
    workers = cluster(token)
    inputs = backend.write_job_files(workers)
    description = backend.submit_description(
        workers, group(gpus), f"{CLUSTER_ID}-default-3", inputs
    )
    return htcondor2.Submit(description)


def arguments(submit: htcondor2.Submit) -> list[str]:
    """argv after the executable, from the new-syntax `Arguments`."""
    text = submit["Arguments"]
    assert text.startswith('"')
    assert text.endswith('"')
    return shlex.split(text[1:-1].replace('""', '"'))


@pytest.mark.parametrize("universe", ["docker", "vanilla"])
def test_submit_description(universe: str, tmp_path: Path) -> None:
    backend = HTCondorBackend({"universe": universe, "work_dir": str(tmp_path)})
    submit = parsed(backend, token="the-users-token")
    ad = job_ad(submit)

    assert submit["universe"] == universe
    if universe == "docker":
        assert submit["docker_image"] == IMAGE
        assert "MY.SingularityImage" not in submit
    else:
        assert ad.eval("SingularityImage") == f"docker://{IMAGE}"
        assert "docker_image" not in submit
    assert ad.eval("RequestCpus") == 4
    assert ad.eval("RequestMemory") == 8 * 1024  # MiB
    assert ad.eval("RequestDisk") == 20 * 1024 * 1024  # KiB
    assert "RequestGPUs" not in ad
    assert ad.eval("FacilityCluster") == f"users/{CLUSTER_ID}"
    assert ad.eval("FacilityWorker") == f"{CLUSTER_ID}-default-3"

    # The TLS files and the user's token travel with the job, written for the operator alone.
    directory = tmp_path / CLUSTER_ID
    inputs = [item.strip() for item in submit.expand("transfer_input_files").split(",")]
    assert inputs == [
        str(directory / n) for n in ("cluster-ca.crt", "tls.crt", "tls.key", "bearer_token")
    ]
    assert (directory / "tls.key").read_text() == TLS["tls.key"]
    assert (directory / "tls.key").stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
    assert submit["should_transfer_files"] == "YES"
    environment = dict(item.split("=", 1) for item in submit["environment"].strip('"').split())
    assert environment == {
        "FACILITY_XCACHE": "'root://xcache.users.svc:1094'",
        "BEARER_TOKEN_FILE": "'bearer_token'",
    }
    # Output and error come back to the operator's folder: the reason of a failed worker.
    assert submit["output"] == str(directory / f"{CLUSTER_ID}-default-3.out")
    assert submit["error"] == str(directory / f"{CLUSTER_ID}-default-3.err")

    assert submit["executable"] == "/opt/venv/bin/python"
    argv = arguments(submit)
    assert argv[:3] == ["-m", "facility_client.worker", CONTACT]
    assert option(argv, "--name") == f"{CLUSTER_ID}-default-3"
    assert option(argv, "--death-timeout") == "120"
    assert option(argv, "--nthreads") == "4"
    assert option(argv, "--tls-ca-file") == "./cluster-ca.crt"
    assert option(argv, "--tls-cert") == "./tls.crt"
    assert option(argv, "--tls-key") == "./tls.key"
    assert "--scheduler-sni" not in argv


def test_gpus_become_request_gpus_and_a_dask_resource(tmp_path: Path) -> None:
    submit = parsed(HTCondorBackend({"work_dir": str(tmp_path)}), gpus=2)
    assert job_ad(submit).eval("RequestGPUs") == 2
    assert option(arguments(submit), "--resources") == "GPU=2"


def test_apptainer_image_and_edge_host(tmp_path: Path) -> None:
    backend = HTCondorBackend({
        "universe": "vanilla",
        "apptainer_image": "/cvmfs/unpacked.cern.ch/facility/worker:1.2.3",
        "edge_host": "edge.example.org",
        "death_timeout": 300,
        "work_dir": str(tmp_path),
        "extra_directives": {"+AccountingGroup": '"group_cms.alice"'},
    })  # fmt: skip
    submit = parsed(backend)
    ad = job_ad(submit)
    assert ad.eval("SingularityImage") == "/cvmfs/unpacked.cern.ch/facility/worker:1.2.3"
    assert ad.eval("AccountingGroup") == "group_cms.alice"
    assert "BEARER_TOKEN_FILE" not in submit["environment"]  # no token shared
    argv = arguments(submit)
    # Without wildcard DNS: the edge's own name, the cluster's name as SNI, no Nanny.
    assert argv[2] == "tls://edge.example.org:443"
    assert option(argv, "--scheduler-sni") == f"{CLUSTER_ID}.dask.example.org"
    assert "--no-nanny" in argv
    assert option(argv, "--death-timeout") == "300"


class StandInSchedd:
    """Records what the bindings are asked (no schedd runs here: see the module)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[dict[str, str], int, bool]] = []
        self.spooled = 0
        self.tokens: list[str | None] = []
        self.token_dirs: list[tuple[str, str]] = []  # (method, the token folder's one token)

    def submit(self, description: htcondor2.Submit, count: int, spool: bool) -> str:
        self.submitted.append((dict(description.items()), count, spool))
        self.tokens.append(htcondor2.param.get("SCITOKENS_FILE"))
        methods = htcondor2.param.get("SEC_CLIENT_AUTHENTICATION_METHODS", "")
        if methods == "IDTOKENS":
            (token,) = Path(htcondor2.param["SEC_TOKEN_DIRECTORY"]).iterdir()
            self.token_dirs.append((methods, token.read_text()))
        return "result"

    def spool(self, result: str) -> None:
        self.spooled += 1


def test_start_submits_one_job_per_worker_with_the_users_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedd = StandInSchedd()
    backend = HTCondorBackend({"work_dir": str(tmp_path), "schedd": "schedd.example.org"})
    monkeypatch.setattr(backend, "_schedd", lambda: schedd)
    names = [f"{CLUSTER_ID}-default-0", f"{CLUSTER_ID}-default-1"]
    backend.start(cluster(token="tok"), group(), names)
    assert [s[0]["MY.FacilityWorker"] for s in schedd.submitted] == [f'"{n}"' for n in names]
    assert {(count, spool) for _, count, spool in schedd.submitted} == {(1, True)}
    assert schedd.spooled == 2  # a named (remote) schedd gets the input files spooled
    # The submit authenticates with the user's own token; the setting does not outlive it.
    assert schedd.tokens == [str(tmp_path / CLUSTER_ID / "bearer_token")] * 2
    assert htcondor2.param.get("SCITOKENS_FILE") != str(tmp_path / CLUSTER_ID / "bearer_token")


def test_a_users_jobs_carry_their_token_or_none_is_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credential "user" (the default): an owner who shared no token gets no job (the site's
    credential does not stand in); "site": the operator's own credential submits."""
    schedd = StandInSchedd()
    backend = HTCondorBackend({"work_dir": str(tmp_path)})
    monkeypatch.setattr(backend, "_schedd", lambda: schedd)
    with pytest.raises(NoUserToken, match=r"credential: site"):
        backend.start(cluster(), group(), [f"{CLUSTER_ID}-default-0"])
    assert schedd.submitted == []
    site = HTCondorBackend({"work_dir": str(tmp_path), "credential": "site"})
    monkeypatch.setattr(site, "_schedd", lambda: schedd)
    site.start(cluster(), group(), [f"{CLUSTER_ID}-default-0"])
    assert schedd.tokens == [None]  # the process's own (site) credential


def test_a_site_secret_per_user_carries_each_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credential "secret": the site's Secret for the owner's batch user is the one credential
    presented (IDTOKENS only, a token folder holding it alone); without it, no job, and the
    reason names the Secret and the value."""
    schedd = StandInSchedd()
    backend = HTCondorBackend({
        "work_dir": str(tmp_path), "credential": "secret",
        "user_token_secret": "condor-{user}", "batch_users": {"rule": "table",
                                                              "table": {"alice": "cms042"}},
    })  # fmt: skip
    monkeypatch.setattr(backend, "_schedd", lambda: schedd)
    assert backend.credential_secret("alice") == "condor-cms042"
    with pytest.raises(NoUserToken, match=r"Secret condor-cms042 .*userTokenSecret"):
        backend.start(cluster(token="scitoken"), group(), [f"{CLUSTER_ID}-default-0"])
    assert schedd.submitted == []
    owned = dataclasses.replace(cluster(token="scitoken"), submit_token="alices-idtoken")
    backend.start(owned, group(), [f"{CLUSTER_ID}-default-0"])
    assert schedd.token_dirs == [("IDTOKENS", "alices-idtoken")]
    # The process's own settings are back once the submit is done.
    assert htcondor2.param.get("SEC_CLIENT_AUTHENTICATION_METHODS") != "IDTOKENS"
    # The user's bearer token still travels with the job (for XCache).
    environment = schedd.submitted[0][0]["environment"]
    assert "BEARER_TOKEN_FILE='bearer_token'" in environment


def test_jobs_are_charged_to_the_owners_batch_user(tmp_path: Path) -> None:
    backend = HTCondorBackend({
        "work_dir": str(tmp_path), "accounting_group": "group_cms",
        "batch_users": {"rule": "table", "table": {"alice": "cms042"}},
    })  # fmt: skip
    submit = parsed(backend, token="tok")  # parsed by HTCondor's own Submit
    assert (submit["accounting_group"], submit["accounting_group_user"]) == ("group_cms", "cms042")


def test_job_states_from_the_schedds_attributes() -> None:
    def ad(**attributes: Any) -> classad2.ClassAd:
        return classad2.ClassAd({
            "ClusterId": 7, "ProcId": 0, "FacilityCluster": f"users/{CLUSTER_ID}",
            "FacilityWorker": f"{CLUSTER_ID}-gpu-4", **attributes,
        })  # fmt: skip

    held = HTCondorBackend._job(ad(JobStatus=5, HoldReason="docker image not found"))
    assert held is not None
    assert (held.state, held.reason, held.group, held.id) == (
        "held",
        "docker image not found",
        "gpu",
        "7.0",
    )
    failed = HTCondorBackend._job(ad(JobStatus=4, ExitCode=127))
    assert failed is not None
    assert (failed.state, failed.reason) == ("failed", "exit code 127")
    evicted = HTCondorBackend._job(ad(JobStatus=1, NumJobStarts=1))
    assert evicted is not None
    assert evicted.state == "evicted"
    assert HTCondorBackend._job(ad(JobStatus=3)) is None  # removed: gone
    running = HTCondorBackend._job(ad(JobStatus=2))
    assert running is not None
    assert running.state == "running"


# --- SLURM


def test_slurm_job_description_and_script() -> None:
    backend = SLURMBackend({
        "partition": "short", "account": "cms", "walltime": "08:00:00",
        "edge_host": "edge.example.org", "log_dir": "/scratch/logs",
        "extra_properties": {"qos": "short"},
    })  # fmt: skip
    name = f"{CLUSTER_ID}-gpu-0"
    assert backend.description(cluster(), group(gpus=1, name="gpu"), name) == {
        "name": name,
        "comment": f"facility:users/{CLUSTER_ID}",
        "nodes": 1,
        "tasks": 1,
        "cpus_per_task": 4,
        "memory_per_node": 8192,
        "current_working_directory": "/scratch/logs",
        "standard_output": f"/scratch/logs/{name}-%j.out",
        "environment": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "FACILITY_XCACHE": "root://xcache.users.svc:1094",
        },
        "gres": "gpu:1",
        "partition": "short",
        "account": "cms",
        "time_limit": 480,
        "qos": "short",
    }
    script = backend.job_script(cluster(), group(gpus=1, name="gpu"), name)
    assert "#SBATCH" not in script  # slurmrestd reads no directives: the description says it
    assert TLS["tls.key"].strip() in script  # the job writes it on the node, for itself alone
    assert "umask 077" in script
    command = shlex.split(script.splitlines()[-1])
    assert command[3] == "tls://edge.example.org:443"
    assert option(command, "--resources") == "GPU=1"
    assert option(command, "--scheduler-sni") == f"{CLUSTER_ID}.dask.example.org"


@pytest.mark.parametrize(
    ("walltime", "minutes"),
    [("30", 30), ("1:30", 2), ("08:00:00", 480), ("1-00:00:00", 1440), ("2-12", 3600),
     ("0:00:01", 1)],
)  # fmt: skip
def test_slurm_walltime_in_minutes(walltime: str, minutes: int) -> None:
    assert walltime_minutes(walltime) == minutes


def test_slurm_states() -> None:
    record = {
        "job_id": 12, "name": f"{CLUSTER_ID}-default-1", "job_state": "FAILED",
        "exit_code": 127 << 8, "end_time": 1796167540, "state_reason": "NonZeroExitCode",
        "user_name": "alice",
    }  # fmt: skip
    failed = SLURMBackend._job(record, CLUSTER_ID)
    assert failed is not None
    assert (failed.state, failed.reason, failed.group, failed.account, failed.since) == (
        "failed",
        "FAILED (NonZeroExitCode), exit code 127",
        "default",
        "alice",
        "2026-12-01T23:25:40+00:00",
    )
    killed = SLURMBackend._job(record | {"exit_code": 9}, CLUSTER_ID)
    assert killed is not None
    assert killed.reason.endswith("exit code 0, signal 9")
    pending = SLURMBackend._job(
        record | {"job_state": "PENDING", "state_reason": "Resources"}, CLUSTER_ID
    )
    assert pending is not None
    assert (pending.state, pending.reason) == ("pending", "Resources")
    assert SLURMBackend._job(record | {"job_state": "CANCELLED"}, CLUSTER_ID) is None


def test_slurm_without_rest_url_or_key_names_the_value() -> None:
    with pytest.raises(SlurmError, match=r"backends\.slurm\.jwtKeySecret"):
        SLURMBackend({"rest_url": "http://slurmrestd:6820"}).token("alice")
    with pytest.raises(SlurmError, match=r"backends\.slurm\.restUrl"):
        SLURMBackend({})._url("jobs")


def test_batch_users_by_name_or_table() -> None:
    assert batch_user("alice", {}) == "alice"
    table = {"batch_users": {"rule": "table", "table": {"alice": "cms042"}}}
    assert batch_user("alice", table) == "cms042"
    with pytest.raises(NoBatchUser, match=r"add them to operator\.batchUsers\.table"):
        batch_user("bob", table)
    with pytest.raises(NoBatchUser, match="one of name, table"):
        batch_user("bob", {"batch_users": {"rule": "ldap"}})


# --- Kubernetes


def test_worker_pod() -> None:
    backend = backend_for(
        "kubernetes", {"edge_host": "edge.facility.svc", "node_selector": {"gpu": "yes"}}
    )
    command = backend.worker_command(
        cluster(), group(gpus=1, name="gpu"), f"{CLUSTER_ID}-gpu-0", "/etc/facility/tls"
    )
    pod = worker_pod(
        cluster(), group(gpus=1, name="gpu"), f"{CLUSTER_ID}-gpu-0", command, backend.config
    )
    assert restricted_violations(pod["spec"]) == []
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["restartPolicy"] == "Never"  # the operator replaces, not the kubelet
    assert pod["metadata"]["labels"] == {
        "facility.hep.io/cluster": CLUSTER_ID, "facility.hep.io/owner": "alice",
        "facility.hep.io/worker-group": "gpu", "app.kubernetes.io/managed-by": "facility-operator",
        "app.kubernetes.io/component": "dask-worker", "app.kubernetes.io/instance": "af",
    }  # fmt: skip
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("DaskCluster", "uid-1", True)
    (container,) = pod["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert limits == {
        "cpu": "4",
        "memory": "8Gi",
        "ephemeral-storage": "20Gi",
        "nvidia.com/gpu": "1",
    }
    assert container["resources"]["requests"] == limits
    assert option(container["command"], "--resources") == "GPU=1"
    assert option(container["command"], "--tls-key") == "/etc/facility/tls/tls.key"
    assert pod["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert container["image"] == IMAGE


def test_a_worker_pod_trusts_xcaches_ca_when_the_cache_speaks_tls() -> None:
    backend = backend_for("kubernetes", {"edge_host": "edge.facility.svc"})
    name = f"{CLUSTER_ID}-default-0"
    tls_cluster = dataclasses.replace(cluster(), xcache_tls_secret="xcache-tls")
    for workers, trusted in ((cluster(), False), (tls_cluster, True)):
        command = backend.worker_command(workers, group(), name, "/etc/facility/tls")
        pod = worker_pod(workers, group(), name, command, backend.config)
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert ("xcache-ca" in volumes) is trusted
        assert (env.get("X509_CERT_FILE") == "/etc/facility/xcache-ca/ca.crt") is trusted
        if trusted:
            assert volumes["xcache-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
            assert {
                "name": "xcache-ca",
                "mountPath": "/etc/facility/xcache-ca",
                "readOnly": True,
            } in (container["volumeMounts"])
        assert restricted_violations(pod["spec"]) == []


def test_only_jobs_named_as_the_operator_names_them_are_a_clusters_workers() -> None:
    """Any batch user can set a job's cluster key and name: one that claims a cluster but is not
    named `<cluster-id>-<group>-<n>` is not its worker, and no log path is made from it."""
    from facility_operator.backends.base import is_worker_of

    assert is_worker_of(f"{CLUSTER_ID}-default-3", CLUSTER_ID)
    assert is_worker_of(f"{CLUSTER_ID}-gpu-0", CLUSTER_ID)
    for name in (
        "../bob-x1y2z/bob-x1y2z-default-0",
        f"{CLUSTER_ID}-default-3/../../x",
        "bob-x1y2z-default-0",
        f"{CLUSTER_ID}-Default-3",
        f"{CLUSTER_ID}-default-",
        "",
    ):
        assert not is_worker_of(name, CLUSTER_ID), name
    record = {"job_id": 9, "name": "../bob-x1y2z/bob-x1y2z-default-0", "job_state": "RUNNING",
              "comment": f"facility:users/{CLUSTER_ID}"}  # fmt: skip
    backend = SLURMBackend({})
    backend._records = lambda: [record]  # type: ignore[method-assign]
    assert backend.jobs(f"users/{CLUSTER_ID}") == []
    # Named right, but submitted by another batch user: not alice's worker either.
    mine = record | {"name": f"{CLUSTER_ID}-default-0", "user_name": "alice"}
    theirs = mine | {"job_id": 10, "user_name": "bob"}
    backend._records = lambda: [mine, theirs]  # type: ignore[method-assign]
    assert [job.id for job in backend.jobs(f"users/{CLUSTER_ID}", "alice")] == ["9"]
    assert len(backend.jobs(f"users/{CLUSTER_ID}")) == 2  # the sweep's view: every job
    table = SLURMBackend({"batch_users": {"rule": "table", "table": {}}})
    table._records = lambda: [mine]  # type: ignore[method-assign]
    assert table.jobs(f"users/{CLUSTER_ID}", "alice") == []  # no batch user: no job of hers
