"""What every rendered object must be: labelled, namespaced, restricted, and fenced in."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, VALUES_FILES, objects, render, restricted_violations
from harness.paths import ROOT

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
COMPONENTS = {"hub", "proxy", "edge", "operator"}
# Components that a values file switches on: {component: its section, whose `enabled` is true}.
OPTIONAL_COMPONENTS = {"xcache": "xcache"}
# Components that a values file may switch off: {component: its section, `enabled` false}. The
# `helm test` Pods are bare Pods (hooks), which `helm template` renders as the chart tests see it.
DEFAULT_COMPONENTS = {"helm-test": "tests"}


def rendered(values: Path) -> list[dict[str, Any]]:
    return objects(render(values))


def components(values: Path) -> set[str]:
    """The components whose pods the values file renders."""
    data = yaml.safe_load(values.read_text()) or {}
    switched_on = {
        name
        for name, section in OPTIONAL_COMPONENTS.items()
        if data.get(section, {}).get("enabled")
    }
    kept = {
        name
        for name, section in DEFAULT_COMPONENTS.items()
        if data.get(section, {}).get("enabled", True)
    }
    return COMPONENTS | switched_on | kept


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every object that makes pods, and of every bare Pod."""
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in POD_OWNERS] + [
        (o, o["spec"]) for o in objs if o["kind"] == "Pod"
    ]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_object_is_labelled_and_namespaced(values: Path) -> None:
    for obj in rendered(values):
        meta = obj["metadata"]
        labels = meta.get("labels", {})
        where = f"{obj['kind']}/{meta['name']}"
        assert labels.get("app.kubernetes.io/instance") == "af", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert "app.kubernetes.io/component" in labels, where
        # Nothing cluster-scoped but the CRD (crds/, which helm template leaves out).
        assert meta.get("namespace") == "facility", where


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_pod_meets_pod_security_restricted(values: Path) -> None:
    pods = pod_specs(rendered(values))
    made = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o, _ in pods}
    assert made == components(values)
    for owner, spec in pods:
        assert restricted_violations(spec) == [], owner["metadata"]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_containers_ports_have_names_of_their_own(values: Path) -> None:
    """The API server refuses a pod whose container names one port twice (and Services and
    NetworkPolicies find ports by name)."""
    for owner in (o for o in rendered(values) if o["kind"] in POD_OWNERS):
        for container in owner["spec"]["template"]["spec"]["containers"]:
            names = [port["name"] for port in container.get("ports", [])]
            assert len(names) == len(set(names)), (owner["metadata"]["name"], names)


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_component_has_a_network_policy(values: Path) -> None:
    objs = rendered(values)
    policies = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]
        for o in objs
        if o["kind"] == "NetworkPolicy"
    }
    # Pods that others make: KubeSpawner the servers, the operator the Dask schedulers.
    assert set(policies) == components(values) | {
        "singleuser-server",
        "dask-scheduler",
        "dask-worker",
    }
    for component, spec in policies.items():
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}


def admits(rules: list[dict[str, Any]], peer_key: str, component: str, port: int | str) -> bool:
    """Whether one of the policy's rules lets `component`'s pods through on `port`."""
    return any(
        any(
            p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == component
            for p in rule.get(peer_key, [])
        )
        and any(p["port"] == port for p in rule.get("ports", []))
        for rule in rules
    )


def test_the_hub_may_call_itself_through_its_service() -> None:
    """At start the hub checks that its managed services answer (and exits when they do not),
    and the idle culler calls the hub's API: both go through the hub's Service back to the hub
    pod, which an enforcing network plugin judges like any other traffic (seen on the real node:
    the hub crash-looped after its first restart)."""
    hub = next(
        o["spec"]
        for o in rendered(VALUES_DIR / "defaults.yaml")
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-hub")
    )
    token_port = yaml.safe_load((ROOT / "charts/facility/values.yaml").read_text())["hub"][
        "tokenServicePort"
    ]
    for port in (8081, token_port):
        assert admits(hub["egress"], "to", "hub", port), port
    assert admits(hub["ingress"], "from", "hub", "http")
    assert admits(hub["ingress"], "from", "hub", token_port)


def test_network_policies_can_be_switched_off() -> None:
    objs = objects(
        render(VALUES_DIR / "defaults.yaml", "facility", "--set", "networkPolicy.enabled=false")
    )
    assert [o for o in objs if o["kind"] == "NetworkPolicy"] == []


def test_only_the_hub_holds_a_service_account_token() -> None:
    for owner in rendered(VALUES_DIR / "defaults.yaml"):
        if owner["kind"] == "Deployment" and owner["metadata"]["name"].endswith("-proxy"):
            assert owner["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_hub_receives_the_values_whole() -> None:
    objs = rendered(VALUES_DIR / "everything.yaml")
    secret = next(
        o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "analysis-hub-values"
    )
    values = yaml.safe_load(base64.b64decode(secret["data"]["values.yaml"]))
    assert values["hub"]["config"] == {"JupyterHub": {"concurrent_spawn_limit": 50}}
    release = yaml.safe_load(base64.b64decode(secret["data"]["release.yaml"]))
    assert release["names"]["proxyApi"] == "analysis-proxy-api"
    assert release["namespace"] == "facility"


def test_the_operators_service_follows_its_ports() -> None:
    """The notebooks' FACILITY_OPERATOR_URL names operator.apiPort, the edge's HTTP provider
    operator.edgeRoutesPort, the site's scraper operator.metricsPort: the Service listens on
    each, and forwards to the container's port of that name; the edge polls its port, and its
    policy and the operator's admit it."""
    chosen = ["--set", "operator.apiPort=9100", "--set", "operator.edgeRoutesPort=9102",
              "--set", "operator.metricsPort=9103"]  # fmt: skip
    objs = objects(render(VALUES_DIR / "defaults.yaml", "facility", *chosen))
    by_name = {(o["kind"], o["metadata"]["name"].removeprefix("af-facility-")): o for o in objs}
    service = by_name["Service", "operator"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (9100, "http"), (9102, "edge-routes"), (9103, "metrics"),
    ]  # fmt: skip
    operator = by_name["Deployment", "operator"]
    ports = operator["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "http", "containerPort": 9100} in ports
    assert {"name": "edge-routes", "containerPort": 9102} in ports
    assert {"name": "metrics", "containerPort": 9103} in ports
    edge = by_name["Deployment", "edge"]["spec"]["template"]["spec"]["containers"][0]["args"]
    endpoint = "http://af-facility-operator.facility:9102/routes"
    assert f"--providers.http.endpoint={endpoint}" in edge
    assert not [a for a in edge if a.startswith("--providers.kubernetes")]
    edge_policy = by_name["NetworkPolicy", "edge"]["spec"]
    assert {"port": 9102} in [p for rule in edge_policy["egress"] for p in rule.get("ports", [])]
    admitted = [
        (rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
         rule["ports"])
        for rule in by_name["NetworkPolicy", "operator"]["spec"]["ingress"]
        if len(rule["from"]) == 1
    ]  # fmt: skip
    # The edge alone on its routes' port; `helm test`'s Pods on the users' API alone.
    assert admitted == [("edge", [{"port": "edge-routes"}]), ("helm-test", [{"port": "http"}])]


def test_no_scheduler_service_account_or_role() -> None:
    """The schedulers make no worker: the chart gives them no identity of their own."""
    for obj in rendered(VALUES_DIR / "defaults.yaml"):
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            assert not obj["metadata"]["name"].endswith("-dask-scheduler"), obj["metadata"]["name"]


def test_the_operator_alone_mounts_the_slurm_jwt_key() -> None:
    """With the SLURM backend the operator holds the JWT key (one key of the site's Secret,
    readable by its group), and finds it through FACILITY_SLURM_JWT_KEY_FILE; no other pod
    mounts that Secret."""
    objs = rendered(VALUES_DIR / "everything.yaml")
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objs
        if o["kind"] in POD_OWNERS
    }
    holders = {
        name
        for name, spec in pods.items()
        for volume in spec.get("volumes", [])
        if volume.get("secret", {}).get("secretName") == "slurm-jwt"
    }
    assert holders == {"analysis-operator"}
    spec = pods["analysis-operator"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "slurm-jwt"]
    assert volume["secret"]["items"] == [{"key": "jwt_hs256.key", "path": "jwt_hs256.key"}]
    assert volume["secret"]["defaultMode"] == 0o440
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FACILITY_SLURM_JWT_KEY_FILE"] == "/etc/facility/slurm-jwt/jwt_hs256.key"
    assert {"name": "slurm-jwt", "mountPath": "/etc/facility/slurm-jwt", "readOnly": True} in (
        container["volumeMounts"]
    )


def test_the_operator_reads_its_values_without_the_hubs_secrets() -> None:
    """The operator's ConfigMap holds what its Settings read, the same Settings as the values
    whole give, and none of the hub's login secrets; its pod mounts no hub-values Secret."""
    from facility_operator.settings import Settings

    objs = rendered(VALUES_DIR / "everything.yaml")
    (config,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-operator-values")
    ]
    values = yaml.safe_load(config["data"]["values.yaml"])
    assert set(values) <= {"operator", "edge", "xcache", "imageRegistry", "imagePullSecrets", "hub"}
    assert set(values["hub"]) == {"port"}  # of the hub's values, its port alone
    assert "clientSecret" not in config["data"]["values.yaml"]
    whole = yaml.safe_load((VALUES_DIR / "everything.yaml").read_text())
    (hub_values,) = [
        o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-hub-values")
    ]
    full = yaml.safe_load(base64.b64decode(hub_values["data"]["values.yaml"]))
    assert whole["auth"]  # the site's values do hold login settings
    release = yaml.safe_load(config["data"]["release.yaml"])
    assert Settings.from_values(values, "analysis", "facility", release_name=release["name"]) == (
        Settings.from_values(full, "analysis", "facility", release_name=release["name"])
    )
    (deployment,) = [
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-operator")
    ]
    secrets = [
        v["secret"]["secretName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert not [name for name in secrets if name.endswith("-hub-values")], secrets


def test_the_chart_lets_no_worker_reach_another_clusters_pods() -> None:
    """The chart's worker policy opens DNS, the edge, XCache and the site's extra egress, and
    names no Dask pod: each cluster's own egress policy (the operator's) adds its own pods."""
    (worker,) = [
        o for o in rendered(VALUES_DIR / "defaults.yaml")
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-dask-worker")
    ]  # fmt: skip
    peers = [peer for rule in worker["spec"]["egress"] for peer in rule.get("to", [])]
    components = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                  for p in peers if "podSelector" in p}  # fmt: skip
    assert components == {"edge", "xcache"}, components


def test_the_hub_trusts_the_providers_ca_from_auth_oidc_ca_bundle() -> None:
    """auth.oidc.caBundle: the ConfigMap mounted in the hub alone, its key where
    FACILITY_OIDC_CA_FILE points (hub_config.auth reads it); without it, neither."""

    def hub_spec(*extra: str) -> dict[str, Any]:
        objs = objects(render(VALUES_DIR / "everything.yaml", "facility", *extra))
        (hub,) = [
            o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-hub")
        ]
        return hub["spec"]["template"]["spec"]

    plain = hub_spec()
    assert "oidc-ca" not in {v["name"] for v in plain["volumes"]}
    spec = hub_spec(
        "--set",
        "auth.oidc.caBundle.configMap=site-ca",
        "--set",
        "auth.oidc.caBundle.key=bundle.pem",
    )
    (volume,) = [v for v in spec["volumes"] if v["name"] == "oidc-ca"]
    assert volume["configMap"] == {"name": "site-ca"}
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FACILITY_OIDC_CA_FILE"] == "/etc/facility-oidc-ca/bundle.pem"
    assert {"name": "oidc-ca", "mountPath": "/etc/facility-oidc-ca", "readOnly": True} in (
        container["volumeMounts"]
    )
