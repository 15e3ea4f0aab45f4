"""The HTCondor backend's submit description, read back by HTCondor's own parser.

No HTCondor pool runs here (FIELD-NOTES.md): the description that dask-jobqueue would hand to
`condor_submit` is parsed with `htcondor2.Submit`, and its expressions are evaluated with
`classad2` as the schedd would, field by field, for both universes.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path
from typing import Any

import classad2
import htcondor2
import pytest
from facility_client.backends import backend_for
from facility_client.backends.base import ClusterSpec
from facility_client.security import scheduler_security
from facility_operator.certs import new_cluster_identity, new_facility_ca

CLUSTER_ID = "alice-x7k2p"
CONTACT = f"tls://{CLUSTER_ID}.dask.example.org:443"
TOKEN = "/var/run/facility/token/bt_u1000"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    identity = new_cluster_identity(new_facility_ca("test"), CLUSTER_ID, CONTACT)
    for name, pem in identity.secret_data().items():
        (directory / name).write_text(pem)
    return directory


@pytest.fixture
def spec(tls_dir: Path) -> ClusterSpec:
    return ClusterSpec(
        cluster_id=CLUSTER_ID,
        namespace="users",
        contact_address=CONTACT,
        tls_dir=tls_dir,
        cores=4,
        memory="8Gi",
        disk="20Gi",
        image="registry.example.org/facility/worker:1.2.3",
        xcache="root://xcache.users.svc:1094",
    )


def submit_description(config: dict[str, Any], spec: ClusterSpec) -> htcondor2.Submit:
    """What the backend's cluster would give condor_submit, parsed by HTCondor."""

    async def job_script() -> str:
        cluster = backend_for("htcondor", config).make_cluster(
            spec, scheduler_security(spec.tls_dir), {"host": "127.0.0.1", "port": 0}
        )
        try:
            return cluster.job_script()
        finally:
            await cluster.close()

    return htcondor2.Submit(asyncio.run(job_script()))


def job_ad(submit: htcondor2.Submit) -> classad2.ClassAd:
    """The job attributes the description sets (MY.x / +x), as a ClassAd to evaluate in."""
    ad = classad2.ClassAd()
    for key, value in submit.items():
        name = key.removeprefix("MY.")
        if name != key or name in ("RequestCpus", "RequestMemory", "RequestDisk"):
            ad[name] = classad2.ExprTree(value)
    return ad


def worker_command(submit: htcondor2.Submit) -> list[str]:
    """argv of the `dask worker` command, from `Executable` and the new-syntax `Arguments`."""
    assert submit["Executable"] == "/bin/sh"
    arguments = submit["Arguments"]
    assert arguments.startswith('"')
    assert arguments.endswith('"')
    # New syntax: doubled double quotes inside; the command is one single-quoted argument.
    shell_args = shlex.split(arguments[1:-1].replace('""', '"'))
    assert shell_args[0] == "-c"
    return shlex.split(shell_args[1])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(autouse=True)
def _restore_condor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The backend points the HTCondor tools of the scheduler's process at the user's token.
    monkeypatch.delenv("_CONDOR_SCITOKENS_FILE", raising=False)


@pytest.mark.parametrize("universe", ["docker", "vanilla"])
def test_submit_description(universe: str, spec: ClusterSpec) -> None:
    submit = submit_description({"universe": universe, "token_file": TOKEN}, spec)
    ad = job_ad(submit)

    assert submit["universe"] == universe
    if universe == "docker":
        assert submit["docker_image"] == spec.image
        assert "MY.SingularityImage" not in submit
    else:
        assert ad.eval("SingularityImage") == f"docker://{spec.image}"
        assert "docker_image" not in submit

    assert ad.eval("RequestCpus") == 4
    assert ad.eval("RequestMemory") == 8 * 1024  # MiB
    assert ad.eval("RequestDisk") == 20 * 1024 * 1024  # KiB
    assert ad.eval("FacilityCluster") == f"users/{CLUSTER_ID}"

    # TLS files and the user's token travel with the job; the worker reads them in its sandbox.
    inputs = [item.strip() for item in submit.expand("transfer_input_files").split(",")]
    assert inputs == [str(spec.tls_dir / n) for n in ("cluster-ca.crt", "tls.crt", "tls.key")] + [
        TOKEN
    ]
    assert submit["should_transfer_files"] == "YES"
    environment = dict(item.split("=", 1) for item in submit["environment"].strip('"').split())
    assert environment == {
        "BEARER_TOKEN_FILE": "bt_u1000",
        "FACILITY_XCACHE": "root://xcache.users.svc:1094",
    }

    argv = worker_command(submit)
    assert argv[1:3] == ["-m", "facility_client.worker"]
    assert argv[3] == CONTACT
    assert option(argv, "--death-timeout") == "120"
    assert option(argv, "--nthreads") == "4"
    assert option(argv, "--tls-ca-file") == "./cluster-ca.crt"
    assert option(argv, "--tls-cert") == "./tls.crt"
    assert option(argv, "--tls-key") == "./tls.key"
    assert "--no-nanny" not in argv
    assert "--scheduler-sni" not in argv


def test_the_submit_authenticates_with_the_users_token(spec: ClusterSpec) -> None:
    submit_description({"token_file": TOKEN}, spec)
    assert os.environ["_CONDOR_SCITOKENS_FILE"] == TOKEN


def test_apptainer_image_and_edge_host(spec: ClusterSpec) -> None:
    config = {
        "universe": "vanilla",
        "apptainer_image": "/cvmfs/unpacked.cern.ch/facility/worker:1.2.3",
        "edge_host": "edge.example.org",
        "death_timeout": 300,
        "extra_directives": {"+AccountingGroup": '"group_cms.alice"'},
    }
    submit = submit_description(config, spec)
    ad = job_ad(submit)
    assert ad.eval("SingularityImage") == "/cvmfs/unpacked.cern.ch/facility/worker:1.2.3"
    assert ad.eval("AccountingGroup") == "group_cms.alice"
    assert "transfer_input_files" in submit
    assert "BEARER_TOKEN_FILE" not in submit["environment"]

    argv = worker_command(submit)
    # Without wildcard DNS: the edge's own name, the cluster's name as SNI, no Nanny.
    assert argv[3] == "tls://edge.example.org:443"
    assert option(argv, "--scheduler-sni") == f"{CLUSTER_ID}.dask.example.org"
    assert "--no-nanny" in argv
    assert option(argv, "--death-timeout") == "300"
