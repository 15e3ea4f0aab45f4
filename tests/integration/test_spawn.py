"""The real KubeSpawner, configured by hub_config from the chart's values, against the real API
server: the user's pod and home volume, field by field, in a namespace that enforces Pod
Security "restricted".

The local cluster's nodes are simulated (kwok), so no notebook server runs in the pod and the
hub could not reach one; the test therefore drives the spawner the way the hub does (start,
stop, start again) without the hub's HTTP check of the running server. The end-to-end tests
on real nodes cover that last step.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from traitlets.config import Config

from harness.chart import VALUES_DIR, handed_over
from harness.commands import kubectl
from harness.paths import KUBECONFIG
from harness.wait import wait_for
from hub_config.config import configure

pytestmark = pytest.mark.cluster


@pytest.fixture
def hub_config(namespace: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "00" * 32)
    # KubeSpawner finds the API server as the hub outside a cluster would: by kubeconfig.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(KUBECONFIG))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    c = Config()
    configure(c, handed_over(VALUES_DIR / "dev.yaml", namespace))
    return c


def new_spawner(c: Config, name: str) -> KubeSpawner:
    """A spawner for user `name`, as the hub makes one (the hub's side given by hand)."""
    user = SimpleNamespace(name=name, id=7, url=f"/user/{name}/", groups=[], escaped_name=name)
    hub = SimpleNamespace(
        api_url="http://af-facility-hub.facility:8081/hub/api",
        public_host="",
        base_url="/hub/",
        url="http://af-facility-hub.facility:8081/hub/",
    )
    spawner = KubeSpawner(config=c, user=user, hub=hub, _mock=True)
    spawner.api_token = "not-a-real-token"
    return spawner


def get(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def exists(kind: str, name: str, namespace: str) -> bool:
    done = kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
    return bool(done.stdout.strip())


async def spawn(c: Config, name: str) -> tuple[str, KubeSpawner]:
    spawner = new_spawner(c, name)
    url = await asyncio.wait_for(spawner.start(), timeout=120)
    return url, spawner


def test_spawn_stop_spawn_keeps_the_home(hub_config: Config, namespace: str) -> None:
    # One event loop for the whole story, as in the hub (KubeSpawner's client is bound to it).
    asyncio.run(spawn_stop_spawn(hub_config, namespace))


async def spawn_stop_spawn(hub_config: Config, namespace: str) -> None:
    url, spawner = await spawn(hub_config, "alice")
    assert url.endswith(":8888")

    pod = get("pod", spawner.pod_name, namespace)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "facility/analysis:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1G"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4G"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["home"] == "/home/jovyan"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == "home-alice"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FACILITY_OPERATOR_URL"] == f"http://af-facility-operator.{namespace}:8000"
    assert "FACILITY_XCACHE" not in env  # the development values run no XCache
    assert env["FACILITY_DASK_PORT"] == "443"
    assert env["JUPYTERHUB_USER"] == "alice"
    # Pod Security "restricted" (the API server enforced it on this namespace, too).
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == 100
    context = container["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 100)
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "singleuser-server"
    assert labels["app.kubernetes.io/instance"] == "af"
    assert labels["hub.jupyter.org/username"] == "alice"

    pvc = get("pvc", "home-alice", namespace)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    wait_for(lambda: get("pvc", "home-alice", namespace)["status"].get("phase") == "Bound",
             "the home volume to bind")  # fmt: skip
    home_uid = pvc["metadata"]["uid"]

    await asyncio.wait_for(spawner.stop(), timeout=120)
    assert not exists("pod", spawner.pod_name, namespace)
    assert exists("pvc", "home-alice", namespace)

    _, again = await spawn(hub_config, "alice")
    assert get("pvc", "home-alice", namespace)["metadata"]["uid"] == home_uid
    pod = get("pod", again.pod_name, namespace)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == "home-alice"
    # No Kubernetes credentials inside a user's pod.
    mounted = [m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]]
    assert not any("serviceaccount" in path for path in mounted)
    await asyncio.wait_for(again.stop(), timeout=120)
