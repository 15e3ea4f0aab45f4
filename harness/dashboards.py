"""The chart's Grafana dashboards (charts/facility/files/dashboards): their PromQL expressions,
and Grafana's variables put in, for the chart tests (Prometheus' parser) and tests/e2e (a live
Prometheus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.paths import CHART

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$", re.DOTALL)


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
            if not match:
                raise HarnessError(f"{path.name}: variable {variable['name']}: not label_values()")
            yield f"{path.name}, variable {variable['name']}", match[1]


def with_variables(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with each of Grafana's variables ($name, ${name}) replaced as Grafana would."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise HarnessError(f"no value for the variable ${name} in {expr}")
        return values[name]

    return VARIABLE.sub(value, expr)
