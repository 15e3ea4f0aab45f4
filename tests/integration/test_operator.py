"""The DaskCluster operator (`python -m facility_operator`) against the local cluster's real API
server, with the Kubernetes backend. kwok simulates the pods: it marks them Running and runs no
container. Each scheduler pod's program runs on loopback instead (tests/integration/
operator_stack.py, `SchedulerPods`), so the operator asks a real Dask scheduler; the worker pods
the operator makes never run a worker, so they never connect (the live workers are
tests/integration/test_backend_slurm.py). Where a test needs a scheduler's end, it patches the
pod's status to Succeeded, as the kubelet would report it."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from distributed import LocalCluster
from facility_operator.names import new_cluster_id, user_slug
from kubernetes import client, config, watch
from prometheus_client.parser import text_string_to_metric_families

from harness.chart import merge_values
from harness.commands import helm, kubectl
from harness.net import free_port
from harness.operator_stack import Operator, SchedulerPods, dashboard_forwarder
from harness.paths import CHART, KUBECONFIG
from harness.wait import wait_for

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


@pytest.fixture(scope="module")
def crds(cluster: Path) -> None:
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture(scope="module")
def api(cluster: Path) -> client.ApiClient:
    return config.new_client_from_config(str(KUBECONFIG))


def operator_values(**operator: Any) -> dict[str, Any]:
    return {
        "edge": {"dask": {"domain": DOMAIN}},
        "operator": merge_values(
            {
                "backend": "kubernetes",
                "statusInterval": 1,
                "sweepInterval": 2,
                "workers": {"interval": 1},
            },
            operator,
        ),
    }


@contextmanager
def running_operator(
    namespace: str, workdir: Path, kubeconfig: Path = KUBECONFIG, **operator: Any
) -> Iterator[Operator]:
    """The operator and a real scheduler program for each of its scheduler pods."""
    pods = SchedulerPods(namespace, workdir / "schedulers", workdir / "routes.yaml")
    with pods.run(), dashboard_forwarder(pods) as scheduler_url:
        running = Operator(
            workdir, namespace, operator_values(**operator), fullname=FULLNAME,
            kubeconfig=kubeconfig, env={"FACILITY_SCHEDULER_URL": scheduler_url},
        )  # fmt: skip
        running.start()
        try:
            yield running
        finally:
            # The clusters go while the operator runs: their finalizer would hold the namespace.
            if running.process is not None and running.process.poll() is None:
                kubectl("delete", DASK_CLUSTERS, "--all", "-n", namespace, "--timeout=60s",
                        check=False)  # fmt: skip
            running.stop()
            # pytest shows this only when the test fails.
            print(running.log.read_text()[-8000:])


@pytest.fixture
def operator(crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(namespace, tmp_path) as running:
        yield running


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
        "spec": {"owner": "alice", "backend": "kubernetes", "minWorkers": 0, "maxWorkers": 0}
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


OBJECTS = (
    ("secret", f"{CLUSTER}-tls"),
    ("pod", f"{CLUSTER}-scheduler"),
    ("service", f"{CLUSTER}-scheduler"),
    ("networkpolicy", f"{CLUSTER}-workers"),
    ("networkpolicy", f"{CLUSTER}-workers-egress"),
)


def all_objects(namespace: str) -> Callable[[], dict[str, dict[str, Any]] | None]:
    def found() -> dict[str, dict[str, Any]] | None:
        objs = {f"{kind}/{name}": get(namespace, kind, name) for kind, name in OBJECTS}
        return objs if all(objs.values()) else None  # type: ignore[return-value]

    return found


def edge_routes(operator: Operator) -> dict[str, Any]:
    """What the operator serves the edge (Traefik's HTTP provider): its Dask routes."""
    return requests.get(operator.routes_url, timeout=10).json()


def pem(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def secret_text(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def test_cluster_becomes_its_objects_with_owners_labels_and_status(
    operator: Operator, namespace: str, api: client.ApiClient
) -> None:
    dask_cluster(namespace)
    objs = wait_for(all_objects(namespace), "the cluster's objects")
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
    router = edge_routes(operator)["tcp"]["routers"][CLUSTER]
    assert router["rule"] == f"HostSNI(`{CLUSTER}.{DOMAIN}`)"
    assert router["tls"] == {"passthrough": True}

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


# Names that slug badly: a leading digit, an e-mail with a quote, upper case, 70 characters,
# non-Latin letters only, and two that slug alike.
AWKWARD_NAMES = ["1alice", "O'Brien@cern.ch", "ALICE", "x" * 70, "日本", "a.b", "a-b"]


def test_every_user_name_gets_valid_objects_and_none_collide(
    operator: Operator, namespace: str
) -> None:
    """Each name's cluster, as the user API makes it (the id from the name, the owner label its
    slug, the exact name in the spec), becomes its pod, Service, Secret and route, accepted by
    the real API server, and Running; no two share a name."""
    ids = {name: new_cluster_id(name) for name in AWKWARD_NAMES}
    for name, cluster_id in ids.items():
        manifest = {
            "apiVersion": "facility.hep.io/v1alpha1",
            "kind": "DaskCluster",
            "metadata": {
                "name": cluster_id,
                "namespace": namespace,
                "labels": {"facility.hep.io/cluster": cluster_id,
                           "facility.hep.io/owner": user_slug(name)},
            },
            "spec": {"owner": name, "backend": "kubernetes", "minWorkers": 0, "maxWorkers": 0},
        }  # fmt: skip
        kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert len(set(ids.values())) == len(ids)

    def phase(cluster_id: str) -> str:
        cluster = get(namespace, DASK_CLUSTERS, cluster_id) or {}
        return cluster.get("status", {}).get("phase", "")

    for name, cluster_id in ids.items():
        wait_for(lambda c=cluster_id: phase(c) == "Running", f"{name!r}'s cluster Running", 90)
        cluster = get(namespace, DASK_CLUSTERS, cluster_id)
        assert cluster is not None
        assert cluster["spec"]["owner"] == name
        for kind, object_name in (
            ("pod", f"{cluster_id}-scheduler"), ("service", f"{cluster_id}-scheduler"),
            ("secret", f"{cluster_id}-tls"),
        ):  # fmt: skip
            assert get(namespace, kind, object_name) is not None, (name, kind)
        router = edge_routes(operator)["tcp"]["routers"][cluster_id]
        assert router["rule"] == f"HostSNI(`{cluster_id}.{DOMAIN}`)"
    services = names(namespace, "service", "app.kubernetes.io/managed-by=facility-operator")
    assert services == sorted(f"{c}-scheduler" for c in ids.values())
    kubectl("delete", DASK_CLUSTERS, "--all", "-n", namespace, "--timeout=120s")


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
    made_before = {(kind, name): get(namespace, kind, name) for kind, name in OBJECTS}
    print("made before the kill:", sorted(k for k, v in made_before.items() if v))
    tls_before = secret_text(api, namespace, f"{CLUSTER}-tls")

    operator.start()
    wait_for(all_objects(namespace), "the cluster's objects after the restart")
    for kind in {kind for kind, _ in OBJECTS}:
        assert names(namespace, kind) == sorted(n for k, n in OBJECTS if k == kind), kind
    # Nothing made before the kill was replaced: the cluster keeps its identity, the
    # facility its CA.
    assert secret_text(api, namespace, f"{CLUSTER}-tls") == tls_before
    assert secret_text(api, namespace, f"{FULLNAME}-dask-ca") == ca_before
    for (kind, name), obj in made_before.items():
        if obj:
            now = get(namespace, kind, name)
            assert now is not None
            assert now["metadata"]["uid"] == obj["metadata"]["uid"], (kind, name)


def worker_pods(namespace: str) -> dict[str, dict[str, Any]]:
    done = kubectl("get", "pods", "-n", namespace, "-o", "json", "-l",
                   f"{CLUSTER_LABEL},app.kubernetes.io/component=dask-worker")  # fmt: skip
    return {
        pod["metadata"]["name"]: pod
        for pod in json.loads(done.stdout)["items"]
        if not pod["metadata"].get("deletionTimestamp")
    }


def scale(namespace: str, minimum: int, maximum: int | None = None) -> None:
    kubectl(
        "patch", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"minWorkers": minimum, "maxWorkers": maximum or minimum}}),
    )  # fmt: skip


def cluster_status(namespace: str) -> dict[str, Any]:
    return (get(namespace, DASK_CLUSTERS, CLUSTER) or {}).get("status", {})


def test_the_operator_makes_and_removes_the_worker_pods(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace, minWorkers=0, maxWorkers=0)
    wait_for(all_objects(namespace), "the cluster's objects")
    owner = get(namespace, DASK_CLUSTERS, CLUSTER)
    assert owner is not None
    scale(namespace, 3)
    pods = wait_for(lambda: len(found := worker_pods(namespace)) == 3 and found, "3 worker pods")
    assert sorted(pods) == [f"{CLUSTER}-default-{n}" for n in range(3)]  # type: ignore[arg-type]
    for pod in pods.values():  # type: ignore[union-attr]
        (ref,) = pod["metadata"]["ownerReferences"]
        assert ref["uid"] == owner["metadata"]["uid"]
        assert pod["metadata"]["labels"]["facility.hep.io/worker-group"] == "default"
        assert pod["spec"]["automountServiceAccountToken"] is False
    # The scheduler knows none of them (kwok runs no worker): scaling down removes them at once.
    scale(namespace, 1)
    wait_for(lambda: sorted(worker_pods(namespace)) == [f"{CLUSTER}-default-0"], "1 worker pod")
    wait_for(
        lambda: cluster_status(namespace).get("workerStates") == {"pending": 0, "starting": 1,
                                                                  "connected": 0},
        "the status to count one starting worker",
    )  # fmt: skip


def test_a_worker_that_cannot_be_scheduled_says_why(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace, minWorkers=1, maxWorkers=1,
                 worker={"cores": 64, "memory": "2Gi", "disk": "1Gi"})  # fmt: skip
    wait_for(
        lambda: "Insufficient cpu" in cluster_status(namespace).get("message", ""),
        "the status to name the scheduler's reason (kwok's nodes have 16 CPUs)",
    )
    assert cluster_status(namespace)["workerStates"]["pending"] == 1


def test_quotas_hold_for_worker_pods(crds: None, namespace: str, tmp_path: Path) -> None:
    quotas = {"default": {"clusters": 5, "workers": 2, "cores": 100}}
    with running_operator(namespace, tmp_path, quotas=quotas):
        dask_cluster(namespace, minWorkers=4, maxWorkers=4)
        held = wait_for(lambda: (s := cluster_status(namespace)).get("heldBack") and s, "held back")
        assert "operator.quotas.default.workers" in held["heldBack"]  # type: ignore[index]
        assert len(worker_pods(namespace)) == 2


def test_operator_killed_in_a_scale_up_applies_it_after_restart(
    operator: Operator, namespace: str
) -> None:
    """A scale-up asked while the operator is down (SIGKILL, then the patch) is made when the
    operator comes back: the restart resumes from the spec, not from events it missed, and makes
    no second scheduler and no duplicate worker."""
    dask_cluster(namespace, minWorkers=1, maxWorkers=1)
    wait_for(all_objects(namespace), "the cluster's objects")
    wait_for(lambda: len(worker_pods(namespace)) == 1, "1 worker pod")
    scheduler_uid = get(namespace, "pod", f"{CLUSTER}-scheduler")["metadata"]["uid"]  # type: ignore[index]
    operator.kill()
    scale(namespace, 4)
    operator.start()
    wait_for(lambda: len(worker_pods(namespace)) == 4, "4 worker pods after the restart")
    assert sorted(worker_pods(namespace)) == [f"{CLUSTER}-default-{n}" for n in range(4)]
    pod = get(namespace, "pod", f"{CLUSTER}-scheduler")
    assert pod is not None
    assert pod["metadata"]["uid"] == scheduler_uid


def test_delete_removes_worker_pods_then_everything_goes(
    operator: Operator, namespace: str
) -> None:
    dask_cluster(namespace, minWorkers=1, maxWorkers=1)
    wait_for(all_objects(namespace), "the cluster's objects")
    wait_for(lambda: len(worker_pods(namespace)) == 1, "the worker pod")
    cluster = get(namespace, DASK_CLUSTERS, CLUSTER)
    assert cluster is not None
    assert "facility.hep.io/batch-jobs" in cluster["metadata"]["finalizers"]

    kubectl("delete", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--wait=false")
    wait_for(lambda: get(namespace, DASK_CLUSTERS, CLUSTER) is None, "the DaskCluster to go")
    wait_for(lambda: not worker_pods(namespace), "the worker pods to go")
    wait_for(
        lambda: not any(get(namespace, kind, name) for kind, name in OBJECTS),
        "the garbage collector to remove the cluster's objects",
    )


def test_sweep_removes_worker_pods_of_gone_clusters(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace, minWorkers=1, maxWorkers=1)
    (mine,) = wait_for(lambda: worker_pods(namespace), "the cluster's worker pod").values()  # type: ignore[union-attr]
    # Not owned by any DaskCluster: only the sweep (not the garbage collector) can remove it.
    worker_pod(namespace, "gone-worker-0", "alice-gone0")
    wait_for(
        lambda: get(namespace, "pod", "gone-worker-0") is None,
        "the sweep to remove the worker of a cluster that does not exist",
        timeout=30,
    )
    # The live cluster's worker stays.
    (still,) = worker_pods(namespace).values()
    assert still["metadata"]["uid"] == mine["metadata"]["uid"]


def test_scheduler_that_ended_ends_its_cluster(operator: Operator, namespace: str) -> None:
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's objects")
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
        lambda: not any(get(namespace, kind, name) for kind, name in OBJECTS),
        "the garbage collector to remove the cluster's objects",
    )


def test_the_operator_asks_a_real_scheduler_through_dasks_http_api() -> None:
    """What the controller reads and asks: Dask's own HTTP API, as the scheduler program
    enables it (facility_client.scheduler.http_routes)."""
    import asyncio

    import aiohttp
    import dask
    from facility_client.scheduler import http_routes
    from facility_operator.scheduler_api import SchedulerAPI

    port = free_port()

    async def scenario() -> None:
        with dask.config.set({"distributed.scheduler.http.routes": http_routes()}):
            cluster = await LocalCluster(
                n_workers=2, processes=False, dashboard_address=f"127.0.0.1:{port}",
                asynchronous=True,
            )  # fmt: skip
        async with cluster, aiohttp.ClientSession() as session:
            api = SchedulerAPI(session, f"http://127.0.0.1:{port}")
            workers = await api.workers()
            assert workers is not None
            assert len(workers) == 2
            assert await api.adaptive_target() == 0  # idle: it wants none
            name, address = sorted(workers.items())[0]
            assert await api.retire([address])
            assert set(await api.workers() or {}) == set(workers) - {name}
        async with aiohttp.ClientSession() as session:
            gone = SchedulerAPI(session, f"http://127.0.0.1:{port}")
            assert await gone.workers() is None  # gone: unknown, not none
            assert await gone.adaptive_target() is None

    asyncio.run(scenario())


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
    ).stdout  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=rbac)
    kubeconfig = service_account_kubeconfig(
        namespace, f"{FULLNAME}-operator", tmp_path / "kubeconfig"
    )
    with running_operator(namespace, tmp_path, kubeconfig) as running:
        yield running


def test_the_charts_role_is_enough(operator_with_role: Operator, namespace: str) -> None:
    """The CA, a cluster's objects, its status, its deletion through the finalizer."""
    dask_cluster(namespace)
    wait_for(all_objects(namespace), "the cluster's objects")
    wait_for(
        lambda: (
            (get(namespace, DASK_CLUSTERS, CLUSTER) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        "status phase Running",
    )
    # The worker pods, made under the same Role.
    scale(namespace, 2)
    wait_for(lambda: len(worker_pods(namespace)) == 2, "2 worker pods")
    worker_pod(namespace, f"{CLUSTER}-stray-0", CLUSTER)
    kubectl("delete", DASK_CLUSTERS, CLUSTER, "-n", namespace, "--timeout=60s")
    assert get(namespace, "pod", f"{CLUSTER}-stray-0") is None
    wait_for(lambda: not worker_pods(namespace), "no worker pod left")


def test_the_charts_role_is_enough_for_the_sweep(
    operator_with_role: Operator, namespace: str
) -> None:
    worker_pod(namespace, "gone-worker-0", "alice-gone0")
    wait_for(
        lambda: get(namespace, "pod", "gone-worker-0") is None,
        "the sweep to remove the worker of a cluster that does not exist",
        timeout=15,
    )


def scraped(operator: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics as Prometheus reads them: {(sample, sorted labels): value}."""
    text = requests.get(operator.metrics_url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_and_usage_outlive_a_restart_under_the_charts_role(
    operator_with_role: Operator, namespace: str
) -> None:
    """/metrics counts the cluster and its worker pods (kwok runs them: they count as running,
    never connected); their usage is kept in the operator's ConfigMap, which the chart's Role
    lets it write, when it stops, and counted on from there after its restart."""
    dask_cluster(namespace, minWorkers=2, maxWorkers=2)
    alice = ("user", "alice")
    usage = ("facility_usage_worker_seconds_total", (("group", ""), alice))
    wait_for(lambda: len(worker_pods(namespace)) == 2, "2 worker pods")
    wait_for(lambda: scraped(operator_with_role).get(usage, 0) > 4, "4 worker-seconds of alice")
    now = scraped(operator_with_role)
    assert now[("facility_dask_clusters", (("phase", "Running"), alice))] == 1
    starting = ("facility_dask_workers", (("backend", "kubernetes"), ("state", "starting")))
    assert now[starting] == 2
    operator_with_role.stop()
    kept = get(namespace, "configmap", f"{FULLNAME}-operator-usage")
    assert kept is not None
    saved = json.loads(kept["data"]["usage.json"])["users"]["alice"]
    assert saved["workerSeconds"] >= now[usage]
    assert saved["coreSeconds"] == saved["workerSeconds"]  # the default worker has one core
    operator_with_role.start()
    assert scraped(operator_with_role)[usage] >= saved["workerSeconds"]
