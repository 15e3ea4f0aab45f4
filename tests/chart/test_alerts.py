"""The facility's alerts (charts/facility/files/alerts.yaml) and the PrometheusRule that carries
them (metrics.prometheusRule): Prometheus' own checker and rule unit tests (promtool, built by
ci/tools) on the groups as the chart renders them, every alert tested firing and not, and the
rendered object against prometheus-operator's real CRD (a `cluster` test)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render
from harness.commands import kubectl, tool
from harness.paths import CHART, ROOT

RULES = CHART / "files" / "alerts.yaml"
UNIT_TESTS = ROOT / "tests" / "chart" / "alerts_test.yaml"
ON = ["--set", "metrics.prometheusRule.enabled=true"]
# Every group rendered: XCache's needs the cache on (and the cache its origin).
ALL_GROUPS = [*ON, "--set", "xcache.enabled=true", "--set", "xcache.origin.host=origin.example.org"]
# The placeholders of alerts.yaml and the component of the Service whose name is that job.
JOBS = {"hub_job": "hub", "operator_job": "operator", "edge_job": "edge-metrics"}
SEVERITIES = {"critical", "warning"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def file_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def prometheus_rules(*extra: str, values: Path = VALUES_DIR / "defaults.yaml") -> list[Any]:
    return [o for o in objects(render(values, "facility", *extra)) if o["kind"] == "PrometheusRule"]


def rendered_groups(*extra: str, values: Path = VALUES_DIR / "defaults.yaml") -> list[Any]:
    (rule,) = prometheus_rules(*extra, values=values)
    return rule["spec"]["groups"]


def substituted(text: str, placeholders: dict[str, str]) -> str:
    for name, value in placeholders.items():
        text = text.replace("${" + name + "}", value)
    return text


# --- the rules themselves (promtool) ------------------------------------------------------


def test_the_rule_file_passes_promtool_check_as_it_is() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts(file_groups()))} rules found" in done.stdout, done.stdout


def test_the_alerts_pass_their_rule_unit_tests(tmp_path: Path) -> None:
    """alerts_test.yaml against the groups the chart renders for release af in namespace
    facility; each expected alert's static description is its rule's."""
    groups = rendered_groups(*ALL_GROUPS)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    descriptions = {name: r["annotations"]["description"] for name, r in alerts(groups).items()}
    suite = yaml.safe_load(UNIT_TESTS.read_text())
    for test in suite["tests"]:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_annotations"].setdefault("description", descriptions[case["alertname"]])
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    checked = promtool("check", "rules", "alerts.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    done = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = set(alerts(file_groups()))
    assert names - firing == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"
    assert (firing | quiet) - names == set(), "tested but no such alert"


def test_every_alert_says_how_bad_what_it_means_and_what_to_do() -> None:
    for name, rule in alerts(file_groups()).items():
        assert name.startswith("Facility"), name
        assert rule.get("for"), f"{name}: no for (a single bad scrape would page)"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        # The unit tests take the description from the rule: it must be static text.
        assert "{{" not in rule["annotations"]["description"], name


def test_the_expected_alerts_are_the_issues_list() -> None:
    assert set(alerts(file_groups())) == {
        "FacilityHubDown",
        "FacilityOperatorDown",
        "FacilityOperatorReconcileErrors",
        "FacilityDaskClustersStuckPending",
        "FacilityDaskWorkersNotConnecting",
        "FacilityXCacheNearHighWatermark",
        "FacilityEdgeDown",
        "FacilityEdgeCertificateExpiringSoon",
    }


# --- the PrometheusRule (metrics.prometheusRule) --------------------------------------------


def test_no_prometheus_rule_by_default() -> None:
    assert prometheus_rules() == []


def test_the_prometheus_rule_carries_exactly_the_files_groups() -> None:
    """With every component on: the file's groups, each placeholder replaced by the release's
    namespace or by the name of the Service whose ServiceMonitor makes that job."""
    values = VALUES_DIR / "everything.yaml"
    objs = objects(render(values, "facility", *ON, "--set", "metrics.serviceMonitors.enabled=true"))
    services = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in objs
                if o["kind"] == "Service"}  # fmt: skip
    monitored = set()
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        monitored |= {
            c for c, s in services.items() if selector.items() <= s["metadata"]["labels"].items()
        }
    assert set(JOBS.values()) <= monitored
    placeholders = {job: services[c]["metadata"]["name"] for job, c in JOBS.items()}
    placeholders["namespace"] = "facility"
    expected = yaml.safe_load(substituted(RULES.read_text(), placeholders))["groups"]
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == expected
    assert "${" not in yaml.safe_dump(rule)


def test_the_groups_of_components_that_are_off_are_left_out() -> None:
    names = [g["name"] for g in file_groups()]
    assert [g["name"] for g in rendered_groups(*ALL_GROUPS)] == names
    assert [g["name"] for g in rendered_groups(*ON)] == [n for n in names if n != "facility-xcache"]
    without = [*ON, "--set", "operator.enabled=false"]
    assert [g["name"] for g in rendered_groups(*without)] == [
        n for n in names if n not in {"facility-xcache", "facility-operator"}
    ]


def test_the_prometheus_rule_carries_the_sites_labels() -> None:
    extra = [*ON, "--set", "metrics.prometheusRule.labels.release=kube-prometheus-stack"]
    (rule,) = prometheus_rules(*extra)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "alerts"
    assert rule["metadata"]["namespace"] == "facility"


# --- against prometheus-operator's real CRD (the local API server) --------------------------


@pytest.mark.cluster
def test_the_prometheus_rule_is_valid_against_the_real_crd(
    monitoring_crds: Path, namespace: str
) -> None:
    for values in (VALUES_DIR / "defaults.yaml", VALUES_DIR / "everything.yaml"):
        docs = [o for o in objects(render(values, namespace, *ALL_GROUPS))
                if o["kind"] == "PrometheusRule"]  # fmt: skip
        assert len(docs) == 1, values.name
        done = kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-",
            input=yaml.safe_dump_all(docs), check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{values.name}: {done.stderr}"
        assert "created (server dry run)" in done.stdout, done.stdout
