"""The Grafana dashboards (charts/facility/files/dashboards) and their ConfigMaps
(metrics.dashboards): every PromQL expression of every panel and variable parsed by Prometheus'
own parser (promtool check rules on a rule file of one recording rule per expression, the
dashboard variables replaced by valid stand-ins first), and the ConfigMaps Grafana's sidecar
loads. Whether the queries return data is for a live Prometheus (not yet in the e2e layer)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render
from harness.commands import tool
from harness.paths import CHART

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
ON = ["--set", "metrics.dashboards.enabled=true"]
# What Grafana puts in place of each variable, as PromQL accepts it there.
STAND_INS = {
    "namespace": "facility",
    "user": "alice",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$", re.DOTALL)
PLANNED = "facility_xcache_"  # the planned XCache exporter's metrics


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a row's own


def expressions(path: Path) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's selector."""
    dashboard = load(path)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f'{path.name}, panel "{panel["title"]}", target {target["refId"]}', target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"{path.name}: variable {variable['name']}: not label_values(...)"
            yield f"{path.name}, variable {variable['name']}", match[1]


def with_stand_ins(expr: str) -> str:
    def stand_in(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in STAND_INS, f"no stand-in for the variable ${name} in {expr}"
        return STAND_INS[name]

    return VARIABLE.sub(stand_in, expr)


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
