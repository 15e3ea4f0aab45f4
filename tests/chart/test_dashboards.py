"""The Grafana dashboards (charts/facility/files/dashboards) and their ConfigMaps
(metrics.dashboards): every PromQL expression of every panel and variable parsed by Prometheus'
own parser (promtool check rules on a rule file of one recording rule per expression, the
dashboard variables replaced by valid stand-ins first), and the ConfigMaps Grafana's sidecar
loads. Whether the queries return data: tests/e2e, against a live Prometheus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render
from harness.commands import tool
from harness.dashboards import DASHBOARDS, expressions, load, panels, with_variables
from harness.paths import CHART

ON = ["--set", "metrics.dashboards.enabled=true"]
# What Grafana puts in place of each variable, as PromQL accepts it there.
STAND_INS = {
    "namespace": "facility",
    "user": "alice",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
}
PLANNED = "facility_xcache_"  # the planned XCache exporter's metrics


def with_stand_ins(expr: str) -> str:
    return with_variables(expr, STAND_INS)


def check_rules(exprs: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"dashboard:check_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = folder / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    return subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_query_parses_with_prometheus_parser(path: Path, tmp_path: Path) -> None:
    found = list(expressions(path))
    assert found, path.name
    done = check_rules([with_stand_ins(e) for _, e in found], tmp_path)
    if done.returncode != 0:
        # Name each one that fails: the dashboard, the panel, the expression.
        bad = [
            f"{where}: {expr}\n  {(r.stdout + r.stderr).strip()}"
            for where, expr in found
            if (r := check_rules([with_stand_ins(expr)], tmp_path)).returncode != 0
        ]
        pytest.fail("\n".join(bad) or done.stdout + done.stderr)
    assert f"SUCCESS: {len(found)} rules found" in done.stdout, done.stdout


def test_the_four_dashboards() -> None:
    titles = {p.stem: load(p)["title"] for p in DASHBOARDS}
    assert set(titles) == {"overview", "user", "xcache", "edge"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_query_uses_the_datasource_variable(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert 'namespace="$namespace"' in target["expr"], (panel["title"], target)


def test_the_user_dashboard_is_one_users() -> None:
    dashboard = load(CHART / "files" / "dashboards" / "user.json")
    assert "user" in {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert '"$user"' in target["expr"], panel["title"]


def test_the_planned_exporters_metrics_are_marked_as_such() -> None:
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            if any(PLANNED in t["expr"] for t in panel.get("targets", [])):
                assert "PLANNED" in panel["description"], f"{path.name}: {panel['title']}"


# --- the ConfigMaps (metrics.dashboards) ------------------------------------------------------


def config_maps(*extra: str) -> list[dict[str, Any]]:
    objs = objects(render(VALUES_DIR / "defaults.yaml", "facility", *extra))
    return [o for o in objs if o["metadata"]["labels"].get("app.kubernetes.io/component")
            == "dashboards"]  # fmt: skip


def test_no_dashboards_by_default() -> None:
    assert config_maps() == []


def test_one_config_map_per_dashboard_with_the_sidecars_label() -> None:
    maps = config_maps(*ON)
    assert len(maps) == len(DASHBOARDS)
    for config_map in maps:
        assert config_map["kind"] == "ConfigMap"
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = config_map["data"].items()
        assert json.loads(text) == load(CHART / "files" / "dashboards" / key)


def test_the_label_follows_the_values() -> None:
    # Helm merges maps: a site's own label replaces the default one by unsetting it (null).
    labels = '{"grafana_dashboard": null, "grafana": "facility"}'
    maps = config_maps(*ON, "--set-json", f"metrics.dashboards.labels={labels}")
    assert len(maps) == len(DASHBOARDS)
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana"] == "facility"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]
