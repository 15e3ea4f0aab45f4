"""The operator's user API (facility_operator.api), run on loopback against the real API server
of the local cluster and a real JupyterHub that says whose each token is.

The operator's reconciler does not run here: the DaskCluster objects are what the API is
responsible for. A pod with KubeSpawner's labels stands for each user's notebook server (kwok
runs it); the cluster's TLS Secret, which the operator would make, is made by the test.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from facility_operator.api import make_app
from facility_operator.settings import Settings
from kubernetes import config as kube_config

from tests.conftest import CHART, KUBECONFIG, free_port, kubectl, serve_app, wait_for
from tests.integration.hub import Hub, run_hub

pytestmark = pytest.mark.cluster

ADMIN_TOKEN = secrets.token_hex(32)
QUOTAS = {
    "default": {"clusters": 2, "workers": 10, "cores": 20},
    "users": {},
    "groups": {"power": {"clusters": 3}},
}


def hub_values() -> dict[str, Any]:
    """A development hub, plus a service that plays the site's admin and makes users' tokens."""
    admin = {"name": "test-admin", "api_token": ADMIN_TOKEN}
    role = {"name": "test-admin", "services": ["test-admin"],
            "scopes": ["admin:users", "tokens", "admin:groups"]}  # fmt: skip
    return {
        "devMode": True,
        "culler": {"enabled": False},
        "hub": {
            "tokenServicePort": free_port(),
            "config": {"JupyterHub": {"services": [admin], "load_roles": [role]}},
        },
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with run_hub(tmp_path_factory.mktemp("hub"), hub_values(), free_port()) as running:
        yield running


def hub_api(hub: Hub, method: str, path: str, body: Any = None) -> Any:
    answer = requests.request(
        method, f"{hub.url}/hub/api{path}", json=body, timeout=10,
        headers={"Authorization": f"token {ADMIN_TOKEN}"},
    )  # fmt: skip
    assert answer.ok, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    """A JupyterHub token of each user, with no more scope than a notebook server's own."""
    out = {}
    for name in ("alice", "bob", "carol"):
        hub_api(hub, "POST", f"/users/{name}")
        made = hub_api(hub, "POST", f"/users/{name}/tokens",
                       {"expires_in": 3600, "scopes": ["users:activity!user"]})  # fmt: skip
        out[name] = made["token"]
    hub_api(hub, "POST", "/groups/power", {"users": ["carol"]})
    return out


@pytest.fixture(scope="module")
def crds(cluster: Path) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/daskclusters.facility.hep.io")


@contextmanager
def run_api(hub_api_url: str, namespace: str) -> Iterator[str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["edge"]["dask"]["domain"] = "dask.af.test"
    settings = Settings.from_values(values, "af-facility", namespace, release_name="af")
    settings = dataclasses.replace(settings, hub_api_url=hub_api_url, quotas=QUOTAS)
    kube = kube_config.new_client_from_config(config_file=str(KUBECONFIG))
    with serve_app(make_app(settings, kube=kube)) as url:
        yield url
    kube.close()


@pytest.fixture
def api(hub: Hub, tokens: dict[str, str], crds: None, namespace: str) -> Iterator[str]:
    with run_api(f"{hub.url}/hub/api", namespace) as url:
        yield url


class Caller:
    """One user of the API, with their token."""

    def __init__(self, api: str, token: str | None) -> None:
        self.api = api
        self.headers = {"Authorization": f"token {token}"} if token else {}

    def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, f"{self.api}{path}", json=body, headers=self.headers,
                                timeout=30)  # fmt: skip


def refused(answer: requests.Response, status: int, field: str | None = None) -> str:
    """The error message of a refusal with this status about this field."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["field"] == field, body
    return body["error"]


def get(kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    done = kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(done.stdout) if done.stdout.strip() else None


def clusters_in(namespace: str) -> list[str]:
    done = kubectl("get", "daskclusters", "-n", namespace, "-o", "name")
    return [line.split("/")[-1] for line in done.stdout.split()]


def start_server(user: str, namespace: str) -> dict[str, Any]:
    """A pod as KubeSpawner makes a user's server (its labels and annotation), running."""
    name = f"jupyter-{user}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "component": "singleuser-server",
                "hub.jupyter.org/username": user,
                "app.kubernetes.io/component": "singleuser-server",
            },
            "annotations": {"hub.jupyter.org/username": user},
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "notebook",
                    "image": "facility/analysis:test",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    running = wait_for(
        lambda: (p := get("pod", name, namespace)) and p["status"].get("phase") == "Running" and p,
        f"{name} to run",
    )
    return running  # type: ignore[return-value]


def test_alice_runs_her_cluster_and_bob_cannot_see_it(
    api: str, tokens: dict[str, str], namespace: str
) -> None:
    alice, bob = Caller(api, tokens["alice"]), Caller(api, tokens["bob"])
    pod = start_server("alice", namespace)

    made = alice("POST", "/clusters", {"worker": {"cores": 2, "memory": "4Gi"}, "maxWorkers": 4})
    assert made.status_code == 201, made.text
    cluster = made.json()
    cid = cluster["id"]
    assert re.fullmatch(r"alice-[a-z0-9]{5}", cid)
    assert cluster["owner"] == "alice"
    assert cluster["address"] == f"tls://{cid}.dask.af.test:443"
    assert (cluster["backend"], cluster["idleTimeout"]) == ("htcondor", 3600)  # the site's
    assert cluster["worker"] == {"cores": 2, "memory": "4Gi", "disk": "4Gi", "image": ""}
    assert (cluster["minWorkers"], cluster["maxWorkers"], cluster["phase"]) == (0, 4, "Pending")

    stored = get("daskcluster", cid, namespace)
    assert stored is not None
    assert stored["spec"]["owner"] == "alice"
    assert stored["metadata"]["labels"] == {
        "facility.hep.io/cluster": cid, "facility.hep.io/owner": "alice",
        "app.kubernetes.io/managed-by": "facility-operator", "app.kubernetes.io/instance": "af",
    }  # fmt: skip
    (owner,) = stored["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "jupyter-alice",
                                                           pod["metadata"]["uid"])  # fmt: skip

    assert [c["id"] for c in alice("GET", "/clusters").json()] == [cid]
    # The same API under the prefix the hub's proxy forwards.
    assert [c["id"] for c in alice("GET", "/services/dask/clusters").json()] == [cid]
    assert alice("GET", f"/clusters/{cid}").json()["maxWorkers"] == 4

    # scale(3), then adapt(1, 8): the DaskCluster follows.
    scaled = alice("PATCH", f"/clusters/{cid}", {"minWorkers": 3, "maxWorkers": 3})
    assert (scaled.json()["minWorkers"], scaled.json()["maxWorkers"]) == (3, 3), scaled.text
    assert get("daskcluster", cid, namespace)["spec"]["minWorkers"] == 3  # type: ignore[index]
    alice("PATCH", f"/clusters/{cid}", {"minWorkers": 1, "maxWorkers": 8})
    spec = get("daskcluster", cid, namespace)["spec"]  # type: ignore[index]
    assert (spec["minWorkers"], spec["maxWorkers"]) == (1, 8)

    # Bob sees nothing of it, and can do nothing to it.
    assert bob("GET", "/clusters").json() == []
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/credentials")]:
        answer = bob(method, f"/clusters/{cid}{path}", {"maxWorkers": 0})
        assert refused(answer, 404) == f"no cluster {cid}"
    assert get("daskcluster", cid, namespace)["spec"]["maxWorkers"] == 8  # type: ignore[index]

    # Credentials: not yet, until the operator has made the Secret; then the owner's PEMs.
    assert "has not made the credentials" in refused(
        alice("GET", f"/clusters/{cid}/credentials"), 409
    )
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": f"{cid}-tls"},
              "stringData": {"ca.crt": "FACILITY CA", "cluster-ca.crt": "CLUSTER CA",
                             "tls.crt": "LEAF", "tls.key": "KEY"}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    assert alice("GET", f"/clusters/{cid}/credentials").json() == {
        "ca": "FACILITY CA", "tls_cert": "LEAF", "tls_key": "KEY",
        "address": f"tls://{cid}.dask.af.test:443",
    }  # fmt: skip

    # The user's bearer token for the cluster's pods: a Secret owned by the cluster, replaced
    # when shared again; nobody else's to set; one token, named field otherwise.
    for token in ("eyJ.first.sig", "eyJ.second.sig"):
        assert alice("PUT", f"/clusters/{cid}/token", {"token": token}).status_code == 204
        shared = get("secret", f"{cid}-token", namespace)
        assert shared is not None
        assert base64.b64decode(shared["data"]["token"]).decode() == token
    (owner,) = shared["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("DaskCluster", cid)
    assert refused(bob("PUT", f"/clusters/{cid}/token", {"token": "x"}), 404) == f"no cluster {cid}"
    answer = alice("PUT", f"/clusters/{cid}/token", {"token": "two\nlines"})
    assert answer.status_code == 400
    assert answer.json()["field"] == "token"

    assert alice("DELETE", f"/clusters/{cid}").status_code == 204
    wait_for(lambda: get("daskcluster", cid, namespace) is None, "the DaskCluster to go")
    assert alice("GET", "/clusters").json() == []
    assert refused(alice("GET", f"/clusters/{cid}"), 404) == f"no cluster {cid}"


def test_refusals_name_the_reason(api: str, tokens: dict[str, str], namespace: str) -> None:
    alice, bob = Caller(api, tokens["alice"]), Caller(api, tokens["bob"])
    for caller in (Caller(api, None), Caller(api, "not-a-jupyterhub-token")):
        assert "token" in refused(caller("GET", "/clusters"), 401)
    service = Caller(api, ADMIN_TOKEN)  # the hub knows it, but it is no user's
    assert refused(service("GET", "/clusters"), 403) == "only a user's token may hold Dask clusters"
    assert "start your server first" in refused(bob("POST", "/clusters", {}), 409)
    start_server("alice", namespace)

    # The API's own checks, by field.
    message = refused(alice("POST", "/clusters", {"worker": {"cores": 500}}), 400, "worker.cores")
    assert message == "worker.cores must be an integer between 1 and 128"
    assert "unknown field gpus" in refused(alice("POST", "/clusters", {"gpus": 1}), 400, "gpus")
    broken = requests.post(f"{api}/clusters", data="{", headers=alice.headers, timeout=30)
    assert "not JSON" in refused(broken, 400)
    # The API server's (the CRD's rule across fields), passed on by field; nothing made.
    refused(alice("POST", "/clusters", {"minWorkers": 5, "maxWorkers": 2}), 400, "minWorkers")
    assert clusters_in(namespace) == []

    # Quotas: 10 workers, 20 cores, 2 clusters each (carol's group: 3 clusters).
    message = refused(alice("POST", "/clusters", {"maxWorkers": 11}), 403, "maxWorkers")
    assert message.endswith("would make 11 (operator.quotas.default.workers)")
    cores = {"maxWorkers": 6, "worker": {"cores": 4}}
    message = refused(alice("POST", "/clusters", cores), 403, "maxWorkers")
    assert "at most 20 cores for alice" in message
    assert clusters_in(namespace) == []

    first = alice("POST", "/clusters", {"maxWorkers": 2}).json()["id"]
    alice("POST", "/clusters", {})
    message = refused(alice("POST", "/clusters", {}), 403)
    assert message == (
        "quota exceeded: at most 2 clusters for alice, and this would make 3 "
        "(operator.quotas.default.clusters)"
    )
    assert len(clusters_in(namespace)) == 2
    # Scaling: within the workers left, yes; past them, no; minWorkers past the cluster's
    # maxWorkers is the CRD's refusal.
    assert alice("PATCH", f"/clusters/{first}", {"maxWorkers": 10}).status_code == 200
    refused(alice("PATCH", f"/clusters/{first}", {"maxWorkers": 11}), 403, "maxWorkers")
    refused(alice("PATCH", f"/clusters/{first}", {"minWorkers": 11}), 400, "minWorkers")
    refused(alice("PATCH", f"/clusters/{first}", {"owner": "bob"}), 400, "owner")

    carol = Caller(api, tokens["carol"])
    start_server("carol", namespace)
    for _ in range(3):
        assert carol("POST", "/clusters", {}).status_code == 201
    assert "(operator.quotas.groups.power.clusters)" in refused(carol("POST", "/clusters", {}), 403)


def test_stopping_the_server_ends_its_clusters(
    api: str, tokens: dict[str, str], namespace: str
) -> None:
    alice = Caller(api, tokens["alice"])
    start_server("alice", namespace)
    cid = alice("POST", "/clusters", {"maxWorkers": 1}).json()["id"]
    kubectl("delete", "pod", "jupyter-alice", "-n", namespace, "--wait=false")
    wait_for(lambda: get("daskcluster", cid, namespace) is None,
             "the garbage collector to delete the cluster of the stopped server")  # fmt: skip
    assert alice("GET", "/clusters").json() == []


def test_a_hub_that_does_not_answer_is_named(cluster: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/hub/api"
    with run_api(nowhere, "default") as url:
        message = refused(Caller(url, "some-token")("GET", "/clusters"), 503)
    assert message.startswith("cannot ask the hub who this token is")
