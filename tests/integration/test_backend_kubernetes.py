"""The Kubernetes backend (the operator's side) against the local cluster's real API server.

The operator's backend makes worker pods in a namespace that enforces the Pod Security Standard
"restricted": the API server's admission accepting them is part of the test, for a CPU and a
GPU group. The nodes are simulated (kwok), so the pods' containers never run; what is checked
is each pod as the API stores it, the states the backend reads back (Running, and Pending with
the scheduler's reason), removal, the sweep's listing, and the ownerReference (deleting the
DaskCluster deletes its pods).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from facility_operator.backends.base import ClusterWorkers, WorkerGroup
from facility_operator.backends.kubernetes import KubernetesBackend
from kubernetes import config

from harness.commands import kubectl
from harness.paths import CHART, KUBECONFIG
from harness.wait import wait_for

pytestmark = pytest.mark.cluster
CLUSTER_ID = "alice-k8s01"
CONTACT = f"tls://{CLUSTER_ID}.dask.test:443"


def pods(namespace: str) -> dict[str, dict[str, Any]]:
    done = kubectl(
        "get", "pods", "-n", namespace, "-o", "json", "-l", f"facility.hep.io/cluster={CLUSTER_ID}"
    )
    return {p["metadata"]["name"]: p for p in json.loads(done.stdout)["items"]}


def test_worker_pods(namespace: str, tmp_path: Path) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/daskclusters.facility.hep.io")
    owner = {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {"name": CLUSTER_ID, "namespace": namespace},
        "spec": {"owner": "alice", "backend": "kubernetes"},
    }
    kubectl("apply", "-f", "-", input=json.dumps(owner))
    uid = kubectl(
        "get", "daskcluster", CLUSTER_ID, "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    cluster = ClusterWorkers(
        cluster_id=CLUSTER_ID, namespace=namespace, owner="alice", owner_slug="alice", uid=uid,
        instance="af", contact_address=CONTACT, tls={}, xcache="root://xcache:1094",
    )  # fmt: skip
    backend = KubernetesBackend(
        {"edge_host": "edge.facility.svc"}, config.new_client_from_config(str(KUBECONFIG))
    )
    key = f"{namespace}/{CLUSTER_ID}"
    cpu = WorkerGroup("default", 2, "3Gi", "5Gi", 0, "localhost/facility/worker:test", 0, 2)
    gpu = WorkerGroup("gpu", 1, "1Gi", "1Gi", 1, "localhost/facility/worker:test", 0, 1)

    backend.start(cluster, cpu, [f"{CLUSTER_ID}-default-0", f"{CLUSTER_ID}-default-1"])
    backend.start(cluster, gpu, [f"{CLUSTER_ID}-gpu-2"])
    # A second start of the same name (after an operator restart) is no second pod.
    backend.start(cluster, cpu, [f"{CLUSTER_ID}-default-0"])
    made = pods(namespace)
    assert sorted(made) == [
        f"{CLUSTER_ID}-default-0",
        f"{CLUSTER_ID}-default-1",
        f"{CLUSTER_ID}-gpu-2",
    ]
    pod = made[f"{CLUSTER_ID}-default-0"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
    (container,) = pod["spec"]["containers"]
    assert container["command"][:4] == [
        "/opt/venv/bin/python", "-m", "facility_client.worker", "tls://edge.facility.svc:443",
    ]  # fmt: skip
    assert (
        made[f"{CLUSTER_ID}-gpu-2"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "1"
    )

    # kwok runs the CPU pods; its nodes have no GPU, so the GPU worker waits, and says why.
    def states() -> dict[str, tuple[str, str]]:
        return {job.name: (job.state, job.reason) for job in backend.jobs(key)}

    found = wait_for(
        lambda: (
            (now := states())[f"{CLUSTER_ID}-default-0"][0] == "running"
            and now[f"{CLUSTER_ID}-gpu-2"][0] == "pending"
            and "nvidia.com/gpu" in now[f"{CLUSTER_ID}-gpu-2"][1]
            and now
        ),
        "the CPU workers running, the GPU worker pending with the scheduler's reason",
    )
    assert found
    assert sorted(backend.list_all(namespace)[key]) == sorted(made)

    (gpu_job,) = [job for job in backend.jobs(key) if job.group == "gpu"]
    backend.remove(key, [gpu_job])
    wait_for(lambda: f"{CLUSTER_ID}-gpu-2" not in {j.name for j in backend.jobs(key)}, "removed")

    kubectl("delete", "daskcluster", CLUSTER_ID, "-n", namespace, "--wait=true")
    wait_for(lambda: not pods(namespace), "the garbage collector to remove the worker pods")
