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

from harness.chart import merge_values
from harness.commands import kubectl
from harness.hub import Hub, run_hub
from harness.net import free_port, serve_app
from harness.operator_stack import (
    ADMIN_TOKEN,
    get,
    hub_api,
    hub_values,
    start_server,
    user_tokens,
)
from harness.paths import CHART, KUBECONFIG
from harness.wait import wait_for
from hub_config import services

pytestmark = pytest.mark.cluster

QUOTAS = {
    "default": {"clusters": 2, "workers": 10, "cores": 20},
    "users": {},
    "groups": {"power": {"clusters": 3}},
}
HUB_ADMIN = "dora"  # auth.adminUsers: the hub makes her an admin when it starts


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    values = merge_values(hub_values(), {"auth": {"adminUsers": [HUB_ADMIN]}})
    with run_hub(tmp_path_factory.mktemp("hub"), values, free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    out = user_tokens(hub, ("alice", "bob", "carol"))
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


def clusters_in(namespace: str) -> list[str]:
    done = kubectl("get", "daskclusters", "-n", namespace, "-o", "name")
    return [line.split("/")[-1] for line in done.stdout.split()]


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
    assert cluster["worker"] == {"cores": 2, "memory": "4Gi", "disk": "4Gi", "image": "", "gpus": 0}
    assert cluster["workerGroups"] == []
    assert (cluster["minWorkers"], cluster["maxWorkers"], cluster["phase"]) == (0, 4, "Pending")

    stored = get("daskcluster", cid, namespace)
    assert stored is not None
    assert stored["spec"]["owner"] == "alice"
    assert stored["metadata"]["labels"] == {
        "facility.hep.io/cluster": cid, "facility.hep.io/owner": "alice",
        "app.kubernetes.io/managed-by": "facility-operator", "app.kubernetes.io/instance": "af",
    }  # fmt: skip
    # The owner's groups, for the operator's quotas on the workers (users cannot write this).
    assert stored["metadata"]["annotations"]["facility.hep.io/owner-groups"] == "[]"
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

    # The workers as the operator sees them: the chart's default backend, HTCondor, has no pool
    # here, which is what a site sees while its schedd is down.
    message = refused(alice("GET", f"/clusters/{cid}/workers"), 503)
    assert message.startswith("the htcondor backend does not answer")

    # Bob sees nothing of it, and can do nothing to it.
    assert bob("GET", "/clusters").json() == []
    cases = [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/credentials"),
             ("GET", "/workers"), ("GET", f"/workers/{cid}-default-0/logs")]  # fmt: skip
    for method, path in cases:
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
        "ca": "CLUSTER CA", "tls_cert": "LEAF", "tls_key": "KEY",
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


def test_a_token_without_the_dask_service_scope_is_refused(hub: Hub, api: str) -> None:
    """A valid token of alice's that may not access the "dask" service (as a token her server
    gets for a visitor): 403, naming the missing scope; her own server's scopes pass."""

    def token(*scopes: str) -> str:
        made = hub_api(hub, "POST", "/users/alice/tokens", {"expires_in": 600, "scopes": scopes})
        return made["token"]

    answer = Caller(api, token("read:users:name!user"))("GET", "/clusters")
    assert refused(answer, 403).startswith(
        "this token lacks the scope access:services!service=dask"
    )
    other = Caller(api, token("access:services!service=tokens"))("GET", "/clusters")
    assert refused(other, 403).startswith("this token lacks")
    right = Caller(api, token("access:services!service=dask"))("GET", "/clusters")
    assert right.status_code == 200


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


def test_worker_groups(api: str, tokens: dict[str, str], namespace: str) -> None:
    alice = Caller(api, tokens["alice"])
    start_server("alice", namespace)
    gpu = {"name": "gpu", "cores": 2, "gpus": 1, "memory": "8Gi", "maxWorkers": 2}
    body = {"backend": "kubernetes", "maxWorkers": 2, "workerGroups": [gpu]}
    made = alice("POST", "/clusters", body)
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    (stored,) = made.json()["workerGroups"]
    assert (stored["name"], stored["gpus"], stored["minWorkers"], stored["maxWorkers"]) == (
        "gpu", 1, 0, 2,
    )  # fmt: skip
    # scale(n, group=...) sizes one group; the default one keeps its size.
    scaled = alice("PATCH", f"/clusters/{cid}", {"group": "gpu", "minWorkers": 1, "maxWorkers": 1})
    assert scaled.status_code == 200, scaled.text
    spec = get("daskcluster", cid, namespace)["spec"]  # type: ignore[index]
    assert (spec["workerGroups"][0]["minWorkers"], spec["workerGroups"][0]["maxWorkers"]) == (1, 1)
    assert spec["maxWorkers"] == 2
    message = refused(
        alice("PATCH", f"/clusters/{cid}", {"group": "tpu", "maxWorkers": 1}), 400, "group"
    )
    assert "has no worker group 'tpu'; it has: default, gpu" in message
    # Quotas count every group: 2 + 2 workers of 10 here, 2*1 + 2*2 cores of 20.
    big = {"group": "gpu", "maxWorkers": 9}
    assert "operator.quotas.default.workers" in refused(
        alice("PATCH", f"/clusters/{cid}", big), 403, "maxWorkers"
    )
    # The workers as the operator sees them (its controller does not run here: none), and a
    # worker that is not there.
    assert alice("GET", f"/clusters/{cid}/workers").json() == []
    answer = alice("GET", f"/clusters/{cid}/workers/{cid}-gpu-0/logs")
    assert refused(answer, 404) == f"no worker {cid}-gpu-0 in cluster {cid}"
    # Bad groups are refused by field.
    for groups, field in [
        ([{"name": "Bad Name"}], "workerGroups[0].name"),
        ([{"name": "default"}], "workerGroups[0].name"),
        ([{"name": "a"}, {"name": "a"}], "workerGroups[1].name"),
        ([{"name": "a", "gpus": 99}], "workerGroups[0].gpus"),
        ([{"name": "a", "colour": "red"}], "workerGroups[0].colour"),
    ]:
        refused(alice("POST", "/clusters", {"workerGroups": groups}), 400, field)
    # What depends on the whole group is the API server's refusal, passed on by field.
    answer = alice("POST", "/clusters", {"workerGroups": [{"name": "a", "minWorkers": 3}]})
    message = refused(answer, 400, "workerGroups[0].minWorkers")
    assert "a worker group's minWorkers must not exceed its maxWorkers" in message


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


def test_usage_is_for_the_hubs_admins_alone(hub: Hub, api: str, tokens: dict[str, str]) -> None:
    """Everybody's usage is the site's, not a user's: her own token, with every scope her
    notebook's has, is refused GET /usage (403, saying an admin is needed), however she asks;
    the hub's service token is no user's; an admin's token of the same scopes is answered."""
    alice = Caller(api, tokens["alice"])
    for path in ("/usage", "/usage?user=alice", "/services/dask/usage?user=bob"):
        message = refused(alice("GET", path), 403)
        assert (
            message == "the usage of the facility is for the hub's admins only, and alice is none"
        )
    service = Caller(api, ADMIN_TOKEN)
    assert refused(service("GET", "/usage"), 403) == "only a user's token may hold Dask clusters"
    scopes = ["users:activity!user", *services.USER_SERVICE_SCOPES]
    made = hub_api(hub, "POST", f"/users/{HUB_ADMIN}/tokens", {"expires_in": 600, "scopes": scopes})
    answer = Caller(api, made["token"])("GET", "/usage?user=alice")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"since", "until", "users", "groups"}
    assert set(body["users"]) <= {"alice"}
