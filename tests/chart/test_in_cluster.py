"""The chart against the real API server of the local cluster (ci/cluster)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.chart import DEV_INSTALL, VALUES_FILES, render
from harness.commands import helm, kubectl
from harness.paths import CHART
from harness.wait import wait_for

pytestmark = pytest.mark.cluster

RELEASE = "af"


@pytest.fixture(scope="module")
def crds(cluster: Path) -> None:
    """The chart's CRDs, applied for real (a server-side dry run of a route needs its type)."""
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_api_server_accepts_every_object(
    values: Path, crds: None, monitoring_crds: Path, namespace: str
) -> None:
    # monitoring_crds: everything.yaml turns the ServiceMonitors, PodMonitor and PrometheusRule on.
    manifest = render(values, namespace)
    done = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest)
    assert "created (server dry run)" in done.stdout


def test_namespace_really_enforces_restricted(namespace: str) -> None:
    # Without this, an install that passes could mean the API server checks nothing.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-pod"},
        "spec": {
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]
        },
    }
    done = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted' in done.stderr


def namespaced_kinds() -> list[str]:
    done = kubectl("api-resources", "--verbs=list,delete", "--namespaced", "-o", "name")
    return [kind for kind in done.stdout.split() if kind not in {"events", "events.events.k8s.io"}]


def release_objects(namespace: str) -> set[str]:
    """Every object labelled as part of the release in the namespace, and every cluster-scoped
    one the chart makes for it, as kind/name."""
    label = f"app.kubernetes.io/instance={RELEASE}"
    inside = kubectl(
        "get", ",".join(namespaced_kinds()), "-n", namespace, "-l", label, "-o", "name"
    )
    cluster_wide = kubectl("get", "clusterroles,clusterrolebindings", "-l", label, "-o", "name")
    ours = [name for name in cluster_wide.stdout.split() if f"/{namespace}-" in name]
    return set(inside.stdout.split()) | set(ours)


def deploy(action: str, namespace: str, *settings: str) -> None:
    """helm install or upgrade with the development values, waiting for every pod."""
    options = [arg for setting in settings for arg in ("--set", setting)]
    helm(action, RELEASE, str(CHART), "-n", namespace, *DEV_INSTALL, *options,
         "--wait", "--timeout=5m", timeout=330)  # fmt: skip


@pytest.fixture
def installed(namespace: str) -> Iterator[str]:
    deploy("install", namespace)
    yield namespace
    helm("uninstall", RELEASE, "-n", namespace, "--ignore-not-found", check=False)


def ready_replicas(namespace: str, component: str) -> int:
    done = kubectl(
        "get",
        "deployment",
        "-n",
        namespace,
        "-o",
        "json",
        "-l",
        f"app.kubernetes.io/component={component}",
    )
    (deployment,) = json.loads(done.stdout)["items"]
    return deployment["status"].get("readyReplicas", 0)


def test_install_upgrade_uninstall(installed: str) -> None:
    namespace = installed
    for component in ("hub", "proxy", "edge"):
        assert ready_replicas(namespace, component) == 1, component
    events = kubectl("get", "events", "-n", namespace, "--field-selector=reason=FailedCreate")
    assert "forbidden" not in events.stdout

    deploy("upgrade", namespace, "edge.replicas=2", "hub.extraEnv.FACILITY_TEST=upgraded")
    assert ready_replicas(namespace, "edge") == 2
    hub = json.loads(
        kubectl(
            "get", "deployment", f"{RELEASE}-facility-hub", "-n", namespace, "-o", "json"
        ).stdout
    )
    env = hub["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FACILITY_TEST", "value": "upgraded"} in env

    made = release_objects(namespace)
    assert f"persistentvolumeclaim/{RELEASE}-facility-hub-db" in made
    assert f"configmap/{RELEASE}-facility-edge" in made  # the edge's routes and certificate
    assert not [o for o in made if o.startswith("clusterrole")]  # no cluster-wide right
    helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=2m")
    # The hub database is kept on purpose (helm.sh/resource-policy: keep); nothing else is.
    # Pods go last: the garbage collector removes them after their ReplicaSets.
    kept = {f"persistentvolumeclaim/{RELEASE}-facility-hub-db"}
    wait_for(lambda: release_objects(namespace) == kept, "only the hub database left", 120)
    print(f"kept after uninstall: {sorted(kept)}")
