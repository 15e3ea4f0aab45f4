"""`FacilityCluster`, the notebook's side, on the whole path: a real JupyterHub says whose the
token is, the operator's real user API makes the DaskCluster, the operator makes the scheduler
(its program run on loopback, kwok runs no container) and the workers (real SLURM jobs on the
one-machine SLURM), and the client and the workers reach the scheduler through the real
Traefik by SNI (harness/operator_stack.py, `running_facility`).

No wildcard DNS resolves `<id>.<domain>` here: the client and the workers dial the edge's
loopback address (`edge_host`) and send the cluster's name as SNI.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import facility_client.cluster as facility_cluster
import pytest
import yaml
from distributed import Client
from facility_client.cluster import FacilityCluster, FacilityError, ScaleRange

from harness.net import free_port
from harness.operator_stack import Facility, get, running_facility
from harness.paths import ROOT
from harness.slurm import SlurmCluster, batch_system
from harness.wait import wait_for

pytestmark = pytest.mark.cluster


BATCH_USERS = {"alice": "facility-test-alice"}  # her batch user, by the site's table


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    with batch_system(BATCH_USERS.values(), (free_port(), free_port(), free_port())) as cluster:
        yield cluster


@pytest.fixture
def facility(slurm: SlurmCluster, namespace: str, tmp_path: Path) -> Iterator[Facility]:
    operator = slurm.operator_values(slurm.job_folder(namespace), BATCH_USERS)
    values = {"operator": operator | {"statusInterval": 1, "workers": {"interval": 1}}}
    with running_facility(tmp_path, namespace, values, env=slurm.operator_env) as running:
        yield running


def options(facility: Facility) -> dict[str, object]:
    return {
        "edge_host": "127.0.0.1",
        "api_url": facility.api_url,
        "api_token": facility.tokens["alice"],
        "timeout": 90,
    }


def jobs_of(slurm: SlurmCluster, namespace: str, cluster_id: str) -> list[str]:
    return [job for job, _, c in slurm.squeue() if c == f"facility:{namespace}/{cluster_id}"]


def test_lifecycle(
    facility: Facility, slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = facility.namespace
    bearer = tmp_path / "bt_u1000"  # the notebook's token file, kept fresh by facility-token
    bearer.write_text("eyJ.first.sig\n")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(bearer))
    monkeypatch.setattr(facility_cluster, "TOKEN_CHECK_SECONDS", 0.2)
    with FacilityCluster(cores=1, memory="256 MiB", disk="100Mi", **options(facility)) as cluster:
        cluster_id = cluster.name
        stored = get("daskcluster", cluster_id, namespace)
        assert stored is not None
        assert stored["spec"]["worker"] == {
            "cores": 1, "memory": "256Mi", "disk": "100Mi", "image": "", "gpus": 0,
        }  # fmt: skip
        assert cluster.dashboard_link.startswith(f"/user/alice/proxy/{cluster_id}-scheduler.")
        # The dashboard port admits alice's own notebook pod (by its KubeSpawner labels) and,
        # by the chart's policy, the operator: nobody else's.
        policy = wait_for(
            lambda: get("networkpolicy", f"{cluster_id}-dashboard", namespace), "its policy", 30
        )
        (rule,) = policy["spec"]["ingress"]  # type: ignore[index]
        assert rule["ports"] == [{"port": 8787, "protocol": "TCP"}]
        (peer,) = rule["from"]
        assert peer["podSelector"]["matchLabels"]["hub.jupyter.org/username"] == "alice"
        assert policy["spec"]["podSelector"]["matchLabels"] == {  # type: ignore[index]
            "facility.hep.io/cluster": cluster_id,
            "app.kubernetes.io/component": "dask-scheduler",
        }

        # The bearer token reaches the cluster's Secret at start, and again when refreshed.
        def shared() -> str:
            secret = get("secret", f"{cluster_id}-token", namespace) or {"data": {"token": ""}}
            return base64.b64decode(secret["data"]["token"]).decode()

        assert shared() == "eyJ.first.sig"
        bearer.write_text("eyJ.second.sig\n")
        os.utime(bearer, ns=(time.time_ns(), time.time_ns() + 10**9))
        wait_for(lambda: shared() == "eyJ.second.sig", "the refreshed token shared", 30)

        cluster.scale(2)
        with cluster.get_client() as client:
            client.wait_for_workers(2, timeout=120)
            assert client.submit(sum, range(10)).result(timeout=60) == 45
        wait_for(lambda: len(cluster.scheduler_info["workers"]) == 2, "the cluster's worker view")

        # The workers as the operator sees them, and the end of one's log (SLURM's output file).
        workers = wait_for(
            lambda: (
                len(found := [w for w in cluster.workers() if w["state"] == "connected"]) == 2
                and found
            ),
            "two connected workers in the operator's view",
        )
        first = sorted(w["name"] for w in workers)[0]  # type: ignore[union-attr]
        assert first == f"{cluster_id}-default-0"
        assert "Starting Worker" in cluster.logs(first)
        with pytest.raises(FacilityError, match="no worker") as missing:
            cluster.logs(f"{cluster_id}-default-99")
        assert missing.value.status == 404

        # Another session of the same user finds the cluster by its id.
        again = FacilityCluster.from_name(cluster_id, **options(facility))
        assert len(again.scheduler_info["workers"]) == 2

        assert cluster.adapt(minimum=0, maximum=3) == ScaleRange(0, 3)
        spec = get("daskcluster", cluster_id, namespace)["spec"]  # type: ignore[index]
        assert (spec["minWorkers"], spec["maxWorkers"]) == (0, 3)

    wait_for(lambda: get("daskcluster", cluster_id, namespace) is None, "the cluster to go")
    wait_for(lambda: not jobs_of(slurm, namespace, cluster_id), "the cluster's jobs to go", 60)
    # The second handle's close finds the cluster gone already (404), which is what it wants.
    again.close()


def test_refusal_names_the_field(facility: Facility) -> None:
    with pytest.raises(FacilityError, match=r"worker\.cores must be an integer") as refused:
        FacilityCluster(cores=500, **options(facility))
    assert refused.value.status == 400
    assert refused.value.field == "worker.cores"


def test_asynchronous_as_dask_labextension_uses_it(facility: Facility, slurm: SlurmCluster) -> None:
    async def session() -> str:
        cluster = await FacilityCluster(
            memory="256Mi", disk="100Mi", asynchronous=True, **options(facility)
        )
        assert cluster.scheduler_address == f"tls://127.0.0.1:{facility.edge.edge.port}"
        await cluster.scale(1)
        async with Client(cluster, asynchronous=True) as client:
            await client.wait_for_workers(1, timeout=120)
        await cluster.close()
        return str(cluster.name)

    cluster_id = asyncio.run(session())
    wait_for(lambda: not jobs_of(slurm, facility.namespace, cluster_id), "no job left", 60)


def test_dask_labextension_makes_facility_clusters() -> None:
    config = yaml.safe_load((ROOT / "images/analysis/dask-labextension.yaml").read_text())
    factory = config["labextension"]["factory"]
    module = importlib.import_module(factory["module"])
    assert getattr(module, factory["class"]) is FacilityCluster
    assert "dask-labextension.yaml /etc/dask/" in (ROOT / "images/analysis/Dockerfile").read_text()
