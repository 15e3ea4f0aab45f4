"""The components' Prometheus endpoints as the chart renders them (metrics): who may reach them
(metrics.scraper, the metrics port alone), how a Prometheus finds them (the scrape annotations,
or prometheus-operator's monitors with metrics.serviceMonitors.enabled), and that every port
named is a port of the pods it points at.

The render tests need helm alone. The `cluster` tests apply prometheus-operator's real CRDs
(ci/monitoring-crds: copied from its pinned Go module) to the local API server, and dry-run the
rendered monitors against them; no operator runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from facility_operator import resources
from facility_operator.settings import Settings

from harness.chart import VALUES_DIR, objects, render
from harness.commands import kubectl

MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}
# The components with a metrics endpoint: {component: (its container port's name, its path)}.
ENDPOINTS = {
    "hub": ("http", "/hub/metrics"),
    "edge": ("metrics", "/metrics"),
    "operator": ("metrics", "/metrics"),
    "dask-scheduler": ("dashboard", "/metrics"),
}
SCRAPER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
WITH_SCRAPER = ["--set-json", f"metrics.scraper={json.dumps(SCRAPER)}"]
WITH_MONITORS = ["--set", "metrics.serviceMonitors.enabled=true"]
TOKEN = ["--set", "metrics.hub.tokenSecret=prom-token"]


def rendered(*extra: str, values: Path = VALUES_DIR / "defaults.yaml") -> list[dict[str, Any]]:
    return objects(render(values, "facility", *extra))


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def of_kind(objs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in kinds]


def selected_pods(objs: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    """The pod templates of the chart's workloads that a label selector matches."""
    templates = [o["spec"]["template"] for o in of_kind(objs, "Deployment", "StatefulSet")]
    return [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]


def container_ports(pod: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}


def operator_view(objs: list[dict[str, Any]]) -> tuple[Settings, dict[str, Any]]:
    """The operator's settings from the values the chart hands it, and a DaskCluster."""
    (config,) = [o for o in objs if o["metadata"]["name"].endswith("-operator-values")]
    release = yaml.safe_load(config["data"]["release.yaml"])
    settings = Settings.from_values(
        yaml.safe_load(config["data"]["values.yaml"]), "af-facility", "facility",
        release_name=release["name"],
    )  # fmt: skip
    body = {
        "metadata": {"name": "alice-x1y2z", "namespace": "facility", "uid": "u-1",
                     "labels": {"facility.hep.io/owner": "alice"}},
        "spec": {"owner": "alice", "idleTimeout": 600, "worker": {"image": ""}},
    }  # fmt: skip
    return settings, body


def scheduler_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """A scheduler pod as the operator makes it."""
    return resources.scheduler_pod(*operator_view(objs))


# --- the monitors (metrics.serviceMonitors.enabled) ------------------------------------------


def test_one_monitor_per_component_with_metrics() -> None:
    monitors = of_kind(rendered(*WITH_MONITORS), *MONITOR_KINDS)
    kinds = {component(m): m["kind"] for m in monitors}
    assert kinds == {
        "hub": "ServiceMonitor",
        "edge": "ServiceMonitor",
        "operator": "ServiceMonitor",
        # No Service of the chart's is in front of the schedulers, which the operator makes.
        "dask-scheduler": "PodMonitor",
    }
    for monitor in monitors:
        (endpoint,) = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"]) == ENDPOINTS[component(monitor)]
        assert endpoint["scheme"] == "http"
    assert not of_kind(rendered(), *MONITOR_KINDS)


def test_each_service_monitor_names_a_port_of_the_pods_behind_its_service() -> None:
    """ServiceMonitor -> one Service (by its labels) -> its port of the monitor's name -> the
    container port that Service port targets, on the pods the Service selects: the same name."""
    objs = rendered(*WITH_MONITORS)
    services = of_kind(objs, "Service")
    for monitor in of_kind(objs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [
            s for s in services if selector.items() <= s["metadata"]["labels"].items()
        ]  # fmt: skip
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        (pod,) = selected_pods(objs, service["spec"]["selector"])
        assert port["targetPort"] == endpoint["port"] in container_ports(pod), monitor["metadata"]
        assert "annotations" not in service["metadata"] or not any(
            key.startswith("prometheus.io/") for key in service["metadata"]["annotations"]
        ), "a Prometheus that honours the annotations too would scrape twice"


def test_the_pod_monitor_selects_the_operators_scheduler_pods_on_their_dashboard() -> None:
    """The PodMonitor's selector, port and target labels against a scheduler pod that
    facility_operator.resources builds from the values this chart hands the operator; its
    dashboard is plain HTTP (the operator itself reaches it over http://)."""
    objs = rendered(*WITH_MONITORS)
    (monitor,) = of_kind(objs, "PodMonitor")
    pod = scheduler_pod(objs)
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in container_ports(pod)
    assert set(monitor["spec"]["podTargetLabels"]) <= set(labels)
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["port"] == endpoint["port"]
    assert container["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert resources.scheduler_http_url(*operator_view(objs)).startswith("http://")


def test_the_monitors_carry_the_sites_labels_and_interval() -> None:
    extra = ["--set", "metrics.serviceMonitors.labels.release=kube-prometheus-stack",
             "--set", "metrics.serviceMonitors.interval=30s"]  # fmt: skip
    for monitor in of_kind(rendered(*WITH_MONITORS, *extra), *MONITOR_KINDS):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "af"
        (endpoint,) = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["interval"] == "30s"


def test_the_hubs_monitor_sends_the_token_of_metrics_hub_token_secret() -> None:
    """JupyterHub asks for a token at /hub/metrics: the monitor presents the Secret's, which the
    hub's container reads too (hub_config.services.metrics makes it the scraper's token)."""
    objs = rendered(*WITH_MONITORS, "--set", "metrics.hub.tokenSecret=prom-token")
    for monitor in of_kind(objs, *MONITOR_KINDS):
        (endpoint,) = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        expected = (
            {"type": "Bearer", "credentials": {"name": "prom-token", "key": "token"}}
            if component(monitor) == "hub"
            else None
        )
        assert endpoint.get("authorization") == expected, component(monitor)
    (hub,) = [d for d in of_kind(objs, "Deployment") if component(d) == "hub"]
    env = {e["name"]: e for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FACILITY_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "prom-token", "key": "token",
    }  # fmt: skip
    (plain,) = [d for d in of_kind(rendered(), "Deployment") if component(d) == "hub"]
    assert "FACILITY_METRICS_TOKEN" not in str(plain)


def test_without_the_operator_no_operator_or_scheduler_monitor() -> None:
    objs = rendered(*WITH_MONITORS, "--set", "operator.enabled=false")
    assert {component(m) for m in of_kind(objs, *MONITOR_KINDS)} == {"hub", "edge"}


# --- the scrape annotations (without monitors) ----------------------------------------------


def test_the_services_in_front_of_metrics_carry_the_scrape_annotations() -> None:
    objs = rendered()
    annotated = {}
    for service in of_kind(objs, "Service"):
        annotations = service["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") == "true":
            annotated[component(service)] = service
    # The edge's public Service is not one of them: Traefik's metrics have a Service of their own.
    assert set(annotated) == {"hub", "edge-metrics", "operator"}
    for name, service in annotated.items():
        annotations = service["metadata"]["annotations"]
        port_name, path = ENDPOINTS[name.removesuffix("-metrics")]
        assert annotations["prometheus.io/path"] == path
        # A Prometheus scrapes the pods' addresses on this number: the container port's.
        (pod,) = selected_pods(objs, service["spec"]["selector"])
        assert annotations["prometheus.io/port"] == str(container_ports(pod)[port_name])


def test_the_scrape_port_follows_the_values() -> None:
    extra = ["--set", "edge.containerPorts.metrics=9200", "--set", "operator.metricsPort=9300",
             "--set", "hub.port=9400"]  # fmt: skip
    ports = {
        component(s): s["metadata"]["annotations"]["prometheus.io/port"]
        for s in of_kind(rendered(*extra), "Service")
        if "prometheus.io/port" in (s["metadata"].get("annotations") or {})
    }
    assert ports == {"edge-metrics": "9200", "operator": "9300", "hub": "9400"}


def test_a_sites_own_service_annotation_wins() -> None:
    (edge,) = [
        s for s in of_kind(rendered("--set", "edge.service.annotations.a=b"), "Service")
        if component(s) == "edge"
    ]  # fmt: skip
    assert edge["metadata"]["annotations"] == {"a": "b"}


def test_the_public_edge_service_has_no_metrics_port() -> None:
    objs = rendered()
    (public,) = [s for s in of_kind(objs, "Service") if component(s) == "edge"]
    assert {p["name"] for p in public["spec"]["ports"]} == {"websecure", "web"}
    (metrics,) = [s for s in of_kind(objs, "Service") if component(s) == "edge-metrics"]
    assert metrics["spec"]["type"] == "ClusterIP"


def test_traefik_serves_its_metrics_on_an_entrypoint_of_their_own() -> None:
    objs = rendered("--set", "edge.containerPorts.metrics=9200")
    (edge,) = [d for d in of_kind(objs, "Deployment") if component(d) == "edge"]
    (traefik,) = edge["spec"]["template"]["spec"]["containers"]
    args = traefik["args"]
    for arg in ("--entryPoints.metrics.address=:9200", "--metrics.prometheus=true",
                "--metrics.prometheus.entryPoint=metrics",
                "--metrics.prometheus.addRoutersLabels=true",
                "--metrics.prometheus.addServicesLabels=true",
                "--metrics.prometheus.addEntryPointsLabels=true"):  # fmt: skip
        assert arg in args
    assert {"name": "metrics", "containerPort": 9200} in traefik["ports"]


# --- the NetworkPolicies (metrics.scraper) ---------------------------------------------------


def scraper_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's ingress rules that name a peer by namespace or pod labels of the scraper."""
    return [
        rule
        for rule in policy["spec"].get("ingress", [])
        if any(
            peer.get("podSelector") == SCRAPER["podSelector"]
            or peer.get("namespaceSelector") == SCRAPER["namespaceSelector"]
            for peer in rule.get("from", [])
        )
    ]


def test_every_policy_admits_the_scraper_on_the_metrics_port_alone() -> None:
    policies = of_kind(
        rendered(*WITH_SCRAPER, values=VALUES_DIR / "everything.yaml"), "NetworkPolicy"
    )
    admitted = {component(p): scraper_rules(p) for p in policies}
    assert "xcache" in admitted  # everything.yaml runs XCache, which has no endpoint yet
    for name, rules in admitted.items():
        if name not in ENDPOINTS:
            assert rules == [], name
            continue
        # One peer with both selectors (their AND: those pods in those namespaces), one port.
        assert rules == [{"from": [SCRAPER], "ports": [{"port": ENDPOINTS[name][0]}]}], name


def test_the_admitted_port_is_the_pods_metrics_port() -> None:
    objs = rendered(*WITH_SCRAPER)
    for policy in of_kind(objs, "NetworkPolicy"):
        name = component(policy)
        if name not in ENDPOINTS:
            continue
        (rule,) = scraper_rules(policy)
        (port,) = rule["ports"]
        pods = (
            [scheduler_pod(objs)]
            if name == "dask-scheduler"
            else selected_pods(objs, policy["spec"]["podSelector"]["matchLabels"])
        )
        (pod,) = pods
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
            pod["metadata"]["labels"].items()
        )
        assert port["port"] in container_ports(pod), name


def test_no_scraper_named_none_admitted() -> None:
    for policy in of_kind(rendered(), "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert not any("namespaceSelector" in peer for peer in rule.get("from", [])), policy


def test_a_pod_selector_alone_admits_those_pods_of_the_release_namespace() -> None:
    extra = ["--set-json", f"metrics.scraper.podSelector={json.dumps(SCRAPER['podSelector'])}"]
    (hub,) = [
        p for p in of_kind(rendered(*extra), "NetworkPolicy") if component(p) == "hub"
    ]  # fmt: skip
    (rule,) = scraper_rules(hub)
    assert rule["from"] == [{"podSelector": SCRAPER["podSelector"]}]


# --- against prometheus-operator's real CRDs (the local API server) -------------------------


# monitoring_crds: the fixture of tests/chart/conftest.py.


def dry_run(docs: list[dict[str, Any]], namespace: str) -> Any:
    return kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-",
        input=yaml.safe_dump_all(docs), check=False,
    )  # fmt: skip


@pytest.mark.cluster
def test_the_monitors_are_valid_against_the_real_crds(
    monitoring_crds: Path, namespace: str
) -> None:
    extra = ["--set", "metrics.serviceMonitors.interval=30s",
             "--set", "metrics.serviceMonitors.labels.release=kube-prometheus-stack"]  # fmt: skip
    for values in (VALUES_DIR / "defaults.yaml", VALUES_DIR / "everything.yaml"):
        objs = objects(render(values, namespace, *WITH_MONITORS, *extra, *TOKEN))
        monitors = of_kind(objs, *MONITOR_KINDS)
        assert len(monitors) == 4, values.name
        done = dry_run(monitors, namespace)
        assert done.returncode == 0, f"{values.name}: {done.stderr}"
        assert done.stdout.count("created (server dry run)") == 4, done.stdout


@pytest.mark.cluster
def test_a_malformed_monitor_is_refused_by_its_crd(monitoring_crds: Path, namespace: str) -> None:
    # The schemas are real: a scheme the CRD does not know is refused by name.
    (monitor,) = of_kind(objects(render(VALUES_DIR / "defaults.yaml", namespace, *WITH_MONITORS)),
                         "PodMonitor")  # fmt: skip
    monitor["spec"]["podMetricsEndpoints"][0]["scheme"] = "gopher"
    done = dry_run([monitor], namespace)
    assert done.returncode != 0
    assert "spec.podMetricsEndpoints[0].scheme" in done.stderr
