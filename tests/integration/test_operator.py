"""The DaskCluster operator (`python -m facility_operator`) against the local cluster's real API
server, with the Kubernetes backend. kwok simulates the pods: it marks them Running, no
container runs, so the scheduler's metrics are never reachable and the tests play the part of
the scheduler's worker pods and of its end (a pod status patched to Succeeded)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from distributed import LocalCluster
from facility_operator.status import fetch_workers
from kubernetes import client, config, watch

from tests.conftest import (
    CHART,
    KUBECONFIG,
    ROOT,
    helm,
    http_get,
    kubectl,
    merge_values,
    wait_for,
)

pytestmark = pytest.mark.cluster

FULLNAME = "t-op"
DOMAIN = "dask.test"
CLUSTER = "alice-k8s01"
CLUSTER_LABEL = f"facility.hep.io/cluster={CLUSTER}"
# Fully qualified: other groups may define a DaskCluster kind too.
DASK_CLUSTERS = "daskclusters.facility.hep.io"
WORKER_LABELS = {
    "app.kubernetes.io/component": "dask-worker",
    "app.kubernetes.io/managed-by": "facility-operator",
}


def listening_ports(count: int) -> list[int]:
    """Free ports in 20000-20999, the range these tests may listen on."""
    found = []
    for port in range(20000 + os.getpid() % 500, 21000):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError("no free ports in 20000-20999")


@pytest.fixture(scope="module")
def crds(cluster: Path) -> None:
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture(scope="module")
def api(cluster: Path) -> client.ApiClient:
    return config.new_client_from_config(str(KUBECONFIG))


class Operator:
    """One `python -m facility_operator` process for one namespace; its log on failure."""

    def __init__(self, workdir: Path, namespace: str, kubeconfig: Path = KUBECONFIG) -> None:
        self.namespace = namespace
        self.log = workdir / "operator.log"
        api_port, health_port = listening_ports(2)
        values = merge_values(
            yaml.safe_load((CHART / "values.yaml").read_text()),
            {
                "edge": {"dask": {"domain": DOMAIN}},
                "operator": {
                    "backend": "kubernetes",
                    "statusInterval": 1,
                    "sweepInterval": 2,
                    "apiPort": api_port,
                },
            },
        )
        config_dir = workdir / "values"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "values.yaml").write_text(yaml.safe_dump(values))
        (config_dir / "release.yaml").write_text(yaml.safe_dump({"name": FULLNAME}))
        self.health = f"http://127.0.0.1:{health_port}/healthz"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FACILITY_VALUES_DIR": str(config_dir),
            "FACILITY_FULLNAME": FULLNAME,
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
            pytest.fail(f"the operator is not running:\n{self.log.read_text()[-4000:]}")
        return True

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last patch; as a node loss or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def operator(crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    # The scheduler pods of the Kubernetes backend run as the chart's ServiceAccount.
    kubectl("create", "serviceaccount", f"{FULLNAME}-dask-scheduler", "-n", namespace)
    running = Operator(tmp_path, namespace)
    running.start()
    yield running
    # The clusters go while the operator runs: their finalizer would hold the namespace.
    if running.process is not None and running.process.poll() is None:
        kubectl("delete", DASK_CLUSTERS, "--all", "-n", namespace, "--timeout=60s")
    running.stop()
    # pytest shows this only when the test fails.
    print(running.log.read_text()[-8000:])


def get(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    done = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def names(namespace: str, kind: str, selector: str = CLUSTER_LABEL) -> list[str]:
    done = kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json")
    return sorted(item["metadata"]["name"] for item in json.loads(done.stdout)["items"])


def dask_cluster(namespace: str, name: str = CLUSTER, **spec: Any) -> str:
    manifest = {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"facility.hep.io/cluster": name, "facility.hep.io/owner": "alice"},
        },
        "spec": {"owner": "alice", "backend": "kubernetes", "minWorkers": 1, "maxWorkers": 2}
        | spec,
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return name


def worker_pod(namespace: str, name: str, cluster_id: str) -> None:
    """A worker pod as the Kubernetes backend labels it; deliberately not owned by its cluster,
    so that only the operator (finalizer, sweep), not the garbage collector, can remove it."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "facility.hep.io/cluster": cluster_id,
                "facility.hep.io/owner": "alice",
                **WORKER_LABELS,
            },
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "worker",
                    "image": "facility/worker:test",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


OBJECTS = {
    "secret": f"{CLUSTER}-tls",
    "pod": f"{CLUSTER}-scheduler",
    "service": f"{CLUSTER}-scheduler",
    "ingressroutetcp": CLUSTER,
}


def all_objects(namespace: str) -> Callable[[], dict[str, dict[str, Any]] | None]:
    def found() -> dict[str, dict[str, Any]] | None:
        objs = {kind: get(namespace, kind, name) for kind, name in OBJECTS.items()}
        return objs if all(objs.values()) else None  # type: ignore[return-value]

    return found


def pem(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def secret_text(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def test_cluster_becomes_its_objects_with_owners_labels_and_status(
    operator: Operator, namespace: str, api: client.ApiClient
) -> None:
    dask_cluster(namespace)
    objs = wait_for(all_objects(namespace), "the cluster's four objects")
    owner = get(namespace, DASK_CLUSTERS, CLUSTER)
    assert owner is not None
    for kind, obj in objs.items():  # type: ignore[union-attr]
        meta = obj["metadata"]
        (ref,) = meta["ownerReferences"]
        assert ref["uid"] == owner["metadata"]["uid"], kind
        assert ref["controller"] is True
        assert ref["blockOwnerDeletion"] is True
        assert meta["labels"]["facility.hep.io/cluster"] == CLUSTER, kind
        assert meta["labels"]["facility.hep.io/owner"] == "alice", kind
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "facility-operator", kind
    route = objs["ingressroutetcp"]  # type: ignore[index]
    assert route["spec"]["routes"][0]["match"] == f"HostSNI(`{CLUSTER}.{DOMAIN}`)"
    assert route["spec"]["tls"] == {"passthrough": True}
    assert route["metadata"]["labels"]["facility.hep.io/edge"] == FULLNAME

    def running() -> dict[str, Any] | None:
        cluster = get(namespace, DASK_CLUSTERS, CLUSTER) or {}
        status = cluster.get("status", {})
        return status if status.get("phase") == "Running" else None

    status = wait_for(running, "status phase Running (kwok runs the scheduler pod)")
    assert status["schedulerAddress"] == f"tls://{CLUSTER}.{DOMAIN}:443"  # type: ignore[index]
    assert status["observedGeneration"] == owner["metadata"]["generation"]  # type: ignore[index]
    assert status["dashboardLink"].startswith("/user/alice/proxy/")  # type: ignore[index]

    # The certificates chain: leaf <- cluster CA <- facility CA (the operator's own Secret).
    tls = secret_text(api, namespace, f"{CLUSTER}-tls")
    facility_ca = secret_text(api, namespace, f"{FULLNAME}-dask-ca")
    (root,) = pem(facility_ca["tls.crt"])
    assert pem(tls["ca.crt"]) == [root]
    leaf, cluster_ca = pem(tls["tls.crt"])
    assert pem(tls["cluster-ca.crt"]) == [cluster_ca]
    leaf.verify_directly_issued_by(cluster_ca)
    cluster_ca.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{CLUSTER}.{DOMAIN}"]


def test_killed_operator_restarts_without_duplicates_and_keeps_the_ca(
    operator: Operator, namespace: str, api: client.ApiClient
) -> None:
    ca_before = secret_text(api, namespace, f"{FULLNAME}-dask-ca")
    dask_cluster(namespace)
    # Kill the moment the first object of the cluster appears (most often the others are
    # not made yet; whatever was made, the restart must complete it and duplicate nothing).
    stream = watch.Watch().stream(
        client.CoreV1Api(api).list_namespaced_secret,
        namespace,
        label_selector=CLUSTER_LABEL,
        timeout_seconds=60,
    )
    next(iter(stream))
    operator.kill()
    made_before = {kind: get(namespace, kind, name) for kind, name in OBJECTS.items()}
    print("made before the kill:", sorted(k for k, v in made_before.items() if v))
    tls_before = secret_text(api, namespace, f"{CLUSTER}-tls")

    operator.start()
    wait_for(all_objects(namespace), "the cluster's four objects after the restart")
    for kind in OBJECTS:
        assert names(namespace, kind) == [OBJECTS[kind]], kind
    # Nothing made before the kill was replaced: the cluster keeps its identity, the
    # facility its CA.
    assert secret_text(api, namespace, f"{CLUSTER}-tls") == tls_before
    assert secret_text(api, namespace, f"{FULLNAME}-dask-ca") == ca_before
    for kind, obj in made_before.items():
        if obj:
            now = get(namespace, kind, OBJECTS[kind])
            assert now is not None
            assert now["metadata"]["uid"] == obj["metadata"]["uid"], kind


def test_scale_patches_the_scheduler_pods_annotations(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    kubectl(
        "patch", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"minWorkers": 3, "maxWorkers": 7}}),
    )  # fmt: skip

    def scaled() -> bool:
        pod = get(namespace, "pod", f"{CLUSTER}-scheduler") or {"metadata": {}}
        annotations = pod["metadata"].get("annotations", {})
        return (
            annotations.get("facility.hep.io/min-workers") == "3"
            and annotations.get("facility.hep.io/max-workers") == "7"
        )

    wait_for(scaled, "the scheduler pod's annotations at min 3, max 7")


def scale_annotations(namespace: str) -> tuple[str | None, str | None]:
    pod = get(namespace, "pod", f"{CLUSTER}-scheduler") or {"metadata": {}}
    annotations = pod["metadata"].get("annotations", {})
    return annotations.get("facility.hep.io/min-workers"), annotations.get(
        "facility.hep.io/max-workers"
    )


def test_operator_killed_in_a_scale_up_applies_it_after_restart(
    operator: Operator, namespace: str
) -> None:
    """A scale-up asked while the operator is down (SIGKILL, then the patch) reaches the
    scheduler when the operator comes back: the restart resumes from the spec, not from events
    it missed, and makes no second scheduler."""
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    scheduler_uid = get(namespace, "pod", f"{CLUSTER}-scheduler")["metadata"]["uid"]  # type: ignore[index]
    operator.kill()
    kubectl(
        "patch", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"minWorkers": 4, "maxWorkers": 4}}),
    )  # fmt: skip
    assert scale_annotations(namespace) != ("4", "4")
    operator.start()
    wait_for(lambda: scale_annotations(namespace) == ("4", "4"), "the scale-up after the restart")
    assert names(namespace, "pod") == [f"{CLUSTER}-scheduler"]
    pod = get(namespace, "pod", f"{CLUSTER}-scheduler")
    assert pod is not None
    assert pod["metadata"]["uid"] == scheduler_uid


def test_delete_removes_worker_pods_then_everything_goes(
    operator: Operator, namespace: str
) -> None:
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    worker_pod(namespace, f"{CLUSTER}-worker-0", CLUSTER)
    cluster = get(namespace, DASK_CLUSTERS, CLUSTER)
    assert cluster is not None
    assert "facility.hep.io/batch-jobs" in cluster["metadata"]["finalizers"]

    kubectl("delete", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--wait=false")
    wait_for(lambda: get(namespace, DASK_CLUSTERS, CLUSTER) is None, "the DaskCluster to go")
    wait_for(
        lambda: get(namespace, "pod", f"{CLUSTER}-worker-0") is None,
        "the finalizer to remove the worker pod",
    )
    wait_for(
        lambda: not any(get(namespace, kind, name) for kind, name in OBJECTS.items()),
        "the garbage collector to remove the cluster's objects",
    )


def test_sweep_removes_worker_pods_of_gone_clusters(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    worker_pod(namespace, "gone-worker-0", "alice-gone0")
    worker_pod(namespace, f"{CLUSTER}-worker-0", CLUSTER)
    wait_for(
        lambda: get(namespace, "pod", "gone-worker-0") is None,
        "the sweep to remove the worker of a cluster that does not exist",
        timeout=30,
    )
    # The live cluster's worker stays.
    assert get(namespace, "pod", f"{CLUSTER}-worker-0") is not None


def test_scheduler_that_ended_ends_its_cluster(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    # Dask's idle timeout closes the scheduler and the pod succeeds (kwok keeps a patched
    # status: it runs no container).
    kubectl(
        "patch", "pod", f"{CLUSTER}-scheduler", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"phase": "Succeeded"}}),
    )  # fmt: skip
    wait_for(
        lambda: get(namespace, DASK_CLUSTERS, CLUSTER) is None,
        "the operator to delete the cluster whose scheduler ended",
    )
    wait_for(
        lambda: not any(get(namespace, kind, name) for kind, name in OBJECTS.items()),
        "the garbage collector to remove the cluster's objects",
    )


def test_workers_are_read_from_a_real_schedulers_metrics() -> None:
    """What the status daemon reads: the Prometheus metrics of a real Dask scheduler."""
    (port,) = listening_ports(1)
    url = f"http://127.0.0.1:{port}/metrics"
    # In-process workers (no ports); the dashboard, which serves /metrics, on loopback.
    with LocalCluster(n_workers=2, processes=False, dashboard_address=f"127.0.0.1:{port}"):
        wait_for(lambda: fetch_workers(url) == 2, "the scheduler's metrics to count 2 workers")
    assert fetch_workers(url) is None  # gone: unknown, not 0


def service_account_kubeconfig(namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that acts as the ServiceAccount, as its pod would."""
    token = kubectl("create", "token", account, "-n", namespace).stdout.strip()
    admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": account,
                        "context": {"cluster": cluster["name"], "user": account},
                    }
                ],
                "current-context": account,
            }
        )
    )
    return path


@pytest.fixture
def operator_with_role(crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    """The operator as the chart's ServiceAccount, with only the chart's namespaced Role."""
    rbac = helm(
        "template", "t", str(CHART), "--namespace", namespace,
        "--set", f"fullnameOverride={FULLNAME}",
        "--show-only", "templates/operator/rbac.yaml",
        "--show-only", "templates/operator/scheduler-rbac.yaml",
    ).stdout  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=rbac)
    kubeconfig = service_account_kubeconfig(
        namespace, f"{FULLNAME}-operator", tmp_path / "kubeconfig"
    )
    running = Operator(tmp_path, namespace, kubeconfig)
    running.start()
    yield running
    kubectl("delete", DASK_CLUSTERS, "--all", "-n", namespace, "--timeout=60s", check=False)
    running.stop()
    print(running.log.read_text()[-8000:])


def test_the_charts_role_is_enough(operator_with_role: Operator, namespace: str) -> None:
    """The CA, a cluster's objects, its status, its deletion through the finalizer."""
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's four objects")
    wait_for(
        lambda: (
            (get(namespace, DASK_CLUSTERS, CLUSTER) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        "status phase Running",
    )
    worker_pod(namespace, f"{CLUSTER}-worker-0", CLUSTER)
    kubectl("delete", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--timeout=60s")
    assert get(namespace, "pod", f"{CLUSTER}-worker-0") is None


def test_the_charts_role_is_enough_for_the_sweep(
    operator_with_role: Operator, namespace: str
) -> None:
    worker_pod(namespace, "gone-worker-0", "alice-gone0")
    wait_for(
        lambda: get(namespace, "pod", "gone-worker-0") is None,
        "the sweep to remove the worker of a cluster that does not exist",
        timeout=15,
    )
