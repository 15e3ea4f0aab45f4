"""The operator's object builders (facility_operator.resources) against the contract in
operators/README.md: names, labels, owner references, Pod Security "restricted", the edge's SNI
route; and the phase it derives from a scheduler pod."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from facility_client.contract import XCACHE_CA_DIR
from facility_operator import resources as res
from facility_operator.certs import ClusterIdentity, new_facility_ca
from facility_operator.edge_routes import EdgeRoutes
from facility_operator.settings import Settings
from facility_operator.status import scheduler_status
from kubernetes import client

from harness.chart import merge_values, restricted_violations
from harness.paths import CHART
from hub_config import spawner

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def settings(**overrides: Any) -> Settings:
    values = merge_values(VALUES, {"edge": {"dask": {"domain": "dask.af.example.org"}}})
    return Settings.from_values(
        merge_values(values, overrides), "af", "facility", app_version="1.2.3", release_name="rel"
    )


def cluster(backend: str = "htcondor", **spec: Any) -> dict[str, Any]:
    """A DaskCluster as the API server returns it (the CRD's defaults applied)."""
    return {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {
            "name": "alice-x1y2z",
            "namespace": "facility",
            "uid": "0b6a3b7e-0000-4000-8000-000000000001",
            "labels": {"facility.hep.io/cluster": "alice-x1y2z", "facility.hep.io/owner": "alice"},
        },
        "spec": {
            "owner": "Alice",
            "backend": backend,
            "worker": {"cores": 2, "memory": "4Gi", "disk": "8Gi", "image": ""},
            "minWorkers": 1,
            "maxWorkers": 5,
            "idleTimeout": 600,
            **spec,
        },
    }


def identity() -> ClusterIdentity:
    return ClusterIdentity("facility-ca", "cluster-ca", "leaf+cluster-ca", "leaf-key")


def all_objects(body: dict[str, Any]) -> list[dict[str, Any]]:
    s = settings()
    return [
        res.tls_secret(s, body, identity()),
        res.scheduler_pod(s, body),
        res.scheduler_service(s, body),
    ]


def test_names_follow_the_contract() -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in all_objects(cluster())}
    assert names == {
        ("Secret", "alice-x1y2z-tls"),
        ("Pod", "alice-x1y2z-scheduler"),
        ("Service", "alice-x1y2z-scheduler"),
    }


def test_every_object_is_labelled_and_owned_by_its_cluster() -> None:
    body = cluster()
    for obj in all_objects(body):
        meta = obj["metadata"]
        assert meta["namespace"] == "facility"
        assert meta["labels"]["facility.hep.io/cluster"] == "alice-x1y2z"
        assert meta["labels"]["facility.hep.io/owner"] == "alice"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "facility-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "rel"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "facility.hep.io/v1alpha1",
                "kind": "DaskCluster",
                "name": "alice-x1y2z",
                "uid": body["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    components = {
        o["kind"]: o["metadata"]["labels"].get(res.LABEL_COMPONENT) for o in all_objects(body)
    }
    assert components["Pod"] == components["Service"] == "dask-scheduler"


def test_owner_label_falls_back_to_the_slug_of_the_owner() -> None:
    body = cluster()
    del body["metadata"]["labels"]
    body["spec"]["owner"] = "Bob.Smith@CERN"
    assert res.labels(settings(), body)["facility.hep.io/owner"] == "bob-smith-cern"


def test_secret_holds_the_identity_under_the_contracts_keys() -> None:
    secret = res.tls_secret(settings(), cluster(), identity())
    assert secret["type"] == "Opaque"
    assert secret["stringData"] == {
        "ca.crt": "facility-ca",
        "cluster-ca.crt": "cluster-ca",
        "tls.crt": "leaf+cluster-ca",
        "tls.key": "leaf-key",
    }


def test_ca_secret_belongs_to_no_cluster() -> None:
    ca = new_facility_ca("af")
    secret = res.ca_secret(settings(), ca)
    assert secret["metadata"]["name"] == "af-dask-ca"
    assert "ownerReferences" not in secret["metadata"]
    assert secret["stringData"] == {"tls.crt": ca.cert, "tls.key": ca.key}


def test_the_edge_routes_each_live_cluster_by_sni_to_its_scheduler() -> None:
    routes = EdgeRoutes(settings())
    routes.observe(cluster(), deleted=False)
    assert routes.config() == {
        "tcp": {
            "routers": {
                "alice-x1y2z": {
                    "entryPoints": ["websecure"],
                    "rule": "HostSNI(`alice-x1y2z.dask.af.example.org`)",
                    "service": "alice-x1y2z-scheduler",
                    "tls": {"passthrough": True},
                }
            },
            "services": {
                "alice-x1y2z-scheduler": {
                    "loadBalancer": {
                        "servers": [{"address": "alice-x1y2z-scheduler.facility.svc:8786"}]
                    }
                }
            },
        }
    }


def test_a_cluster_being_deleted_or_gone_has_no_route() -> None:
    routes = EdgeRoutes(settings())
    ending = cluster()
    ending["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    routes.observe(cluster(), deleted=False)
    routes.observe(ending, deleted=False)
    assert routes.config() == {}
    routes.observe(cluster(), deleted=False)
    routes.observe(cluster(), deleted=True)
    assert routes.config() == {}


def named(name: str) -> dict[str, Any]:
    body = cluster()
    body["metadata"]["name"] = name
    return body


def test_a_fresh_listing_replaces_every_route() -> None:
    routes = EdgeRoutes(settings())
    routes.observe(cluster(), deleted=False)  # then gone while the watch was down
    routes.replace([named("bob-abcde")], routes.mark())
    assert set(routes.config()["tcp"]["routers"]) == {"bob-abcde"}


def test_a_listing_older_than_an_event_does_not_undo_it() -> None:
    routes = EdgeRoutes(settings())
    routes.observe(named("gone-11111"), deleted=False)
    mark = routes.mark()  # the listing is taken from here on...
    routes.observe(named("new-22222"), deleted=False)  # ...made meanwhile: not in the listing
    routes.observe(named("gone-11111"), deleted=True)  # deleted meanwhile: still listed
    routes.replace([named("gone-11111"), named("old-33333")], mark)
    assert set(routes.config()["tcp"]["routers"]) == {"new-22222", "old-33333"}
    # The next listing decides alone again.
    routes.replace([named("old-33333")], routes.mark())
    assert set(routes.config()["tcp"]["routers"]) == {"old-33333"}


def test_service_selects_the_scheduler_pod() -> None:
    body = cluster()
    service = res.scheduler_service(settings(), body)
    pod = res.scheduler_pod(settings(), body)
    assert service["spec"]["type"] == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"tls": 8786, "dashboard": 8787}
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports


@pytest.mark.parametrize("backend", ["htcondor", "slurm", "kubernetes"])
def test_scheduler_pod_is_restricted_and_holds_no_credential(backend: str) -> None:
    s = settings(operator={"backends": {"htcondor": {"tokenSecret": "condor-tokens"}}})
    pod = res.scheduler_pod(s, cluster(backend))
    spec = pod["spec"]
    assert restricted_violations(spec) == []
    assert spec["securityContext"]["runAsUser"] == 1000
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The scheduler runs the user's code: no Kubernetes token, whatever the backend, and no
    # mount but the cluster's own TLS Secret, the user's own token and a scratch folder.
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert {v["name"]: next(k for k in v if k != "name") for v in spec["volumes"]} == {
        "tls": "secret", "user-token": "secret", "tmp": "emptyDir",
    }  # fmt: skip
    assert {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v} == {
        "alice-x1y2z-tls", "alice-x1y2z-token",
    }  # fmt: skip
    assert not any(e["name"].startswith("_CONDOR") for e in container["env"])
    assert spec["restartPolicy"] == "Never"
    # A probe that speaks HTTP to the dashboard: a TCP probe of the TLS port logs a failed
    # handshake every period.
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "dashboard"}


def test_scheduler_pod_environment() -> None:
    pod = res.scheduler_pod(settings(), cluster())
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["command"] == ["python", "-m", "facility_client.scheduler"]
    assert container["image"] == "facility/worker:1.2.3"
    assert env == {
        "FACILITY_CLUSTER_ID": "alice-x1y2z",
        "FACILITY_CONTACT_ADDRESS": "tls://alice-x1y2z.dask.af.example.org:443",
        "FACILITY_TLS_DIR": "/etc/facility/tls",
        "FACILITY_IDLE_TIMEOUT": "600",
        "BEARER_TOKEN_FILE": "/etc/facility/token/token",
    }
    # The scale reaches the operator, not the scheduler.
    assert "annotations" not in pod["metadata"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tls"] == "/etc/facility/tls"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "alice-x1y2z-tls"
    # The user's token, once shared through the API: optional, so the pod starts without it.
    assert mounts["user-token"] == "/etc/facility/token"
    assert volumes["user-token"]["secret"] == {
        "secretName": "alice-x1y2z-token", "defaultMode": 0o440, "optional": True,
    }  # fmt: skip


def test_scheduler_pod_options() -> None:
    s = settings(
        imageRegistry="registry.example.org",
        imagePullSecrets=["regcred"],
        xcache={"enabled": True, "port": 1094},
    )
    pod = res.scheduler_pod(
        s, cluster(worker={"cores": 1, "memory": "2Gi", "disk": "4Gi", "image": "mine:1"})
    )
    spec = pod["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "mine:1"
    assert env["FACILITY_XCACHE"] == "root://af-xcache.facility:1094"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert s.worker_image == "registry.example.org/facility/worker:1.2.3"


def test_a_scheduler_trusts_xcaches_ca_and_gets_nothing_else_of_it() -> None:
    """With XCache over TLS, the scheduler's XRootD client trusts the cache's CA: ca.crt of the
    cache's Secret alone (its key stays out), where X509_CERT_FILE points."""
    plain = res.scheduler_pod(settings(xcache={"enabled": True}), cluster())
    assert "xcache-ca" not in {v["name"] for v in plain["spec"]["volumes"]}
    s = settings(xcache={"enabled": True, "tls": {"secretName": "xcache-tls"}})
    assert s.xcache_tls_secret == "xcache-tls"
    pod = res.scheduler_pod(s, cluster())
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "xcache-ca"]
    assert volume["secret"] == {
        "secretName": "xcache-tls",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    container = pod["spec"]["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "xcache-ca"]
    assert mount == {"name": "xcache-ca", "mountPath": XCACHE_CA_DIR, "readOnly": True}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["X509_CERT_FILE"] == f"{XCACHE_CA_DIR}/ca.crt"
    assert spawner.XCACHE_CA_DIR == XCACHE_CA_DIR  # the notebooks' is the same place


def test_the_operator_reaches_the_schedulers_dashboard() -> None:
    assert res.scheduler_http_url(settings(), cluster()) == (
        "http://alice-x1y2z-scheduler.facility.svc:8787"
    )


def test_owner_groups_come_from_the_apis_annotation() -> None:
    body = cluster()
    assert res.owner_groups(body) == []
    body["metadata"]["annotations"] = {"facility.hep.io/owner-groups": '["cms", "atlas"]'}
    assert res.owner_groups(body) == ["cms", "atlas"]
    body["metadata"]["annotations"] = {"facility.hep.io/owner-groups": "not json"}
    assert res.owner_groups(body) == []


def test_backend_config_is_in_the_backends_spelling() -> None:
    s = settings(
        operator={"backends": {"kubernetes": {"edgeHost": "edge.svc", "nodeSelector": {"a": "b"}}}}
    )
    assert s.backend_config("kubernetes") == {
        "edge_host": "edge.svc",
        "node_selector": {"a": "b"},
        "tolerations": [],
        "death_timeout": 120,
    }
    # Empty strings are unset: the backends then use their own defaults.
    assert "schedd" not in s.backend_config("htcondor")
    assert s.backend_config("htcondor")["universe"] == "docker"


def test_batch_backends_get_the_batch_users_and_slurm_its_key() -> None:
    table = {"rule": "table", "table": {"alice": "cms042"}}
    s = settings(operator={"batchUsers": table})
    s = dataclasses.replace(s, slurm_jwt_key_file="/etc/facility/slurm-jwt/jwt_hs256.key")
    slurm = s.backend_config("slurm")
    assert slurm["batch_users"] == table
    assert slurm["jwt_key_file"] == "/etc/facility/slurm-jwt/jwt_hs256.key"
    assert slurm["inventory_account"] == "slurm"
    assert s.backend_config("htcondor")["batch_users"] == table
    assert "batch_users" not in s.backend_config("kubernetes")
    assert "jwt_key_file" not in s.backend_config("htcondor")


def test_settings_from_the_chart_defaults() -> None:
    s = settings()
    assert s.ca_secret == "af-dask-ca"
    assert s.hub_api_url == "http://af-hub.facility:8081/hub/api"
    assert s.default_backend == "htcondor"
    assert s.idle_timeout == 3600
    assert s.api_port == 8000
    assert s.quotas["default"] == VALUES["operator"]["quotas"]["default"]


def pod_in(phase: str, **state: Any) -> client.V1Pod:
    statuses = [client.V1ContainerStatus(
        name="scheduler", image="i", image_id="", ready=False, restart_count=0,
        state=client.V1ContainerState(**state),
    )] if state else None  # fmt: skip
    return client.V1Pod(status=client.V1PodStatus(phase=phase, container_statuses=statuses))


def test_status_follows_the_scheduler_pod() -> None:
    assert scheduler_status(None)["phase"] == "Pending"
    assert scheduler_status(pod_in("Running")) == {
        "phase": "Running",
        "message": "the scheduler runs",
    }
    assert scheduler_status(pod_in("Succeeded"))["phase"] == "Ending"
    waiting = client.V1ContainerStateWaiting(reason="ImagePullBackOff", message="no such image")
    assert scheduler_status(pod_in("Pending", waiting=waiting)) == {
        "phase": "Pending",
        "message": "ImagePullBackOff: no such image",
    }
    ended = client.V1ContainerStateTerminated(exit_code=1, reason="Error")
    failed = scheduler_status(pod_in("Failed", terminated=ended))
    assert failed == {"phase": "Failed", "message": "the scheduler failed: Error"}


def test_the_dashboard_policy_admits_the_owners_notebook_alone() -> None:
    s = settings()
    body = cluster()
    server = {
        "app.kubernetes.io/instance": "af", "app.kubernetes.io/component": "singleuser-server",
        "hub.jupyter.org/username": "alice", "hub.jupyter.org/servername": "", "other": "x",
    }  # fmt: skip
    policy = res.dashboard_policy(s, body, server)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8787}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        k: v for k, v in server.items() if k != "other"}}}]  # fmt: skip
    # A pod without its user's label would select every notebook: no policy then.
    del server["hub.jupyter.org/username"]
    assert res.dashboard_policy(s, body, server) is None


def test_notebooks_may_proxy_the_schedulers_of_their_namespace_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from facility_client.dashboard import allowed_host

    monkeypatch.setenv("FACILITY_NAMESPACE", "facility")
    for host in ("alice-x7k2p-scheduler.facility", "alice-x7k2p-scheduler.facility:8787",
                 "u1alice-x7k2p-scheduler.facility.svc.cluster.local", "localhost"):  # fmt: skip
        assert allowed_host(None, host), host
    for host in ("alice-x7k2p-scheduler.other", "kubernetes.default", "facility-hub.facility",
                 "x-scheduler.facility.evil.org", "169.254.169.254"):  # fmt: skip
        assert not allowed_host(None, host), host
    monkeypatch.delenv("FACILITY_NAMESPACE")
    assert not allowed_host(None, "alice-x7k2p-scheduler.facility")


def test_a_clusters_workers_admit_their_own_cluster_alone() -> None:
    policy = res.workers_policy(settings(), cluster())
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "facility.hep.io/cluster": "alice-x1y2z", "app.kubernetes.io/component": "dask-worker",
    }  # fmt: skip
    (rule,) = policy["spec"]["ingress"]
    own_cluster = {"podSelector": {"matchLabels": {"facility.hep.io/cluster": "alice-x1y2z"}}}
    assert rule == {"from": [own_cluster]}
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "DaskCluster"


def test_a_clusters_workers_reach_their_own_cluster_alone() -> None:
    """Beyond DNS, the edge, XCache and the site's extra egress (the chart's worker policy,
    which names no worker: tests/chart/test_objects.py): their own cluster's pods alone."""
    policy = res.workers_egress_policy(settings(), cluster())
    assert policy["metadata"]["name"] == "alice-x1y2z-workers-egress"
    assert policy["spec"]["podSelector"] == res.workers_policy(settings(), cluster())["spec"][
        "podSelector"]  # fmt: skip
    assert policy["spec"]["policyTypes"] == ["Egress"]
    own_cluster = {"podSelector": {"matchLabels": {"facility.hep.io/cluster": "alice-x1y2z"}}}
    assert policy["spec"]["egress"] == [{"to": [own_cluster]}]
