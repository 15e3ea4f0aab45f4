"""The Kubernetes backend against the local cluster's real API server.

The scheduler side runs in the test process (the backend's SpecCluster with a real scheduler on
loopback) and makes its worker pods through the API, in a namespace that enforces the Pod
Security Standard "restricted": the API server's admission accepting them is part of the test.
The nodes are simulated (kwok), so the pods' containers never run and no worker connects; what
is checked is each pod as the API stores it, the operator side (list, remove, sweep by label),
and the ownerReference (deleting the DaskCluster deletes its pods).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from facility_client.backends import backend_for
from facility_client.backends.base import ClusterSpec
from facility_client.security import scheduler_security

from tests.conftest import CHART, KUBECONFIG, kubectl, wait_for
from tests.integration.slurm import write_identity

pytestmark = pytest.mark.cluster
CLUSTER_ID = "alice-k8s01"
CONTACT = f"tls://{CLUSTER_ID}.dask.test:443"


def pods(namespace: str) -> list[dict[str, Any]]:
    done = kubectl(
        "get", "pods", "-n", namespace, "-o", "json", "-l", f"facility.hep.io/cluster={CLUSTER_ID}"
    )
    return json.loads(done.stdout)["items"]


def test_worker_pods(namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(KUBECONFIG))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/daskclusters.facility.hep.io")
    owner = {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {
            "name": CLUSTER_ID,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/instance": "af"},
        },
        "spec": {"owner": "alice", "backend": "kubernetes"},
    }
    kubectl("apply", "-f", "-", input=json.dumps(owner))
    uid = kubectl(
        "get", "daskcluster", CLUSTER_ID, "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout

    tls_dir = tmp_path / "tls"
    write_identity(tls_dir, CLUSTER_ID, f"{CLUSTER_ID}.dask.test")
    spec = ClusterSpec(
        cluster_id=CLUSTER_ID,
        namespace=namespace,
        contact_address=CONTACT,
        tls_dir=tls_dir,
        cores=2,
        memory="3Gi",
        disk="5Gi",
        image="localhost/facility/worker:test",
        xcache="root://xcache:1094",
    )
    backend = backend_for("kubernetes", {"edge_host": "edge.facility.svc"})
    key = f"{namespace}/{CLUSTER_ID}"

    async def scenario() -> None:
        options = {"host": "127.0.0.1", "port": 0, "dashboard_address": "127.0.0.1:0"}
        cluster = backend.make_cluster(spec, scheduler_security(tls_dir), options)
        await cluster
        try:
            cluster.scale(2)
            await asyncio.to_thread(wait_for, lambda: len(pods(namespace)) == 2, "2 worker pods")
            check_pod(pods(namespace)[0], uid)
            assert sorted(backend.list_jobs(key)) == [
                f"{CLUSTER_ID}-worker-0",
                f"{CLUSTER_ID}-worker-1",
            ]
            assert sorted(backend.list_all(namespace)[key]) == sorted(backend.list_jobs(key))

            # The operator's finalizer: every pod of this cluster goes.
            assert backend.remove_jobs(key) == 2
            await asyncio.to_thread(wait_for, lambda: not pods(namespace), "the pods to go")
        finally:
            await cluster.close()

        # A new pod of the cluster; deleting the DaskCluster takes it with it.
        cluster = backend.make_cluster(spec, scheduler_security(tls_dir), options)
        await cluster
        try:
            cluster.scale(1)
            await asyncio.to_thread(wait_for, lambda: pods(namespace), "a worker pod")
            kubectl("delete", "daskcluster", CLUSTER_ID, "-n", namespace, "--wait=false")
            await asyncio.to_thread(wait_for, lambda: not pods(namespace), "garbage collection")
        finally:
            await cluster.close()

    asyncio.run(scenario())


def check_pod(pod: dict[str, Any], uid: str) -> None:
    assert pod["metadata"]["labels"] == {
        "facility.hep.io/cluster": CLUSTER_ID,
        "facility.hep.io/owner": "alice",
        "app.kubernetes.io/managed-by": "facility-operator",
        "app.kubernetes.io/component": "dask-worker",
        # Copied from the DaskCluster: the release's NetworkPolicies select on it.
        "app.kubernetes.io/instance": "af",
    }
    (reference,) = pod["metadata"]["ownerReferences"]
    assert reference["kind"] == "DaskCluster"
    assert reference["uid"] == uid
    assert reference["controller"] is True
    assert reference["blockOwnerDeletion"] is True

    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] == {
        "cpu": "2",
        "memory": "3Gi",
        "ephemeral-storage": "5Gi",
    }
    assert spec["volumes"][0]["secret"]["secretName"] == f"{CLUSTER_ID}-tls"
    assert {"name": "FACILITY_XCACHE", "value": "root://xcache:1094"} in container["env"]
    # The user's token for XCache, once the user's client has shared it (an optional Secret).
    assert spec["volumes"][1]["secret"]["secretName"] == f"{CLUSTER_ID}-token"
    assert spec["volumes"][1]["secret"]["optional"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BEARER_TOKEN_FILE"] == "/etc/facility/token/token"

    command = container["command"]
    assert command[command.index("facility_client.worker") + 1] == "tls://edge.facility.svc:443"
    assert command[command.index("--scheduler-sni") + 1] == f"{CLUSTER_ID}.dask.test"
    assert command[command.index("--tls-ca-file") + 1] == "/etc/facility/tls/cluster-ca.crt"
    assert command[command.index("--name") + 1] == pod["metadata"]["name"]
    assert "--no-nanny" in command
