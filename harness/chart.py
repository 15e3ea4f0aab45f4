"""Rendering the chart with helm (the chart tests, and the runners that install what it renders),
Helm's merge of values files, and the Pod Security "restricted" rules checked statically."""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.commands import helm
from harness.paths import CHART, ROOT
from hub_config.facility import Facility

# The chart tests' values files (one install each); the runners install defaults.yaml and dev.yaml.
VALUES_DIR = ROOT / "tests" / "chart" / "values"
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
# The development values, as tests install them: without dev.yaml's fixed node port, which is
# cluster-wide and belongs to `make up`'s release.
DEV_INSTALL = ["-f", str(VALUES_DIR / "dev.yaml"), "--set", "edge.service.nodePort=null"]


def render(values: Path, namespace: str = "facility", *extra: str) -> str:
    return helm(
        "template", "af", str(CHART), "--namespace", namespace, "-f", str(values), *extra
    ).stdout


def objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def handed_over(values: Path, namespace: str = "facility", *extra: str) -> Facility:
    """What the hub receives from the chart: the hub-values Secret, decoded."""
    (secret,) = [
        o for o in objects(render(values, namespace, *extra))
        if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-hub-values")
    ]  # fmt: skip
    data = {k: yaml.safe_load(base64.b64decode(v)) for k, v in secret["data"].items()}
    return Facility(values=data["values.yaml"], release=data["release.yaml"])


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over others: maps merge, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security "restricted" rules, checked statically (the API server checks too)."""
    problems = []
    context = pod.get("securityContext", {})
    if context.get("runAsNonRoot") is not True:
        problems.append("pod runAsNonRoot is not true")
    if context.get("seccompProfile", {}).get("type") not in {"RuntimeDefault", "Localhost"}:
        problems.append("pod seccompProfile is not RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"pod sets {key}")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
    for container in pod.get("initContainers", []) + pod["containers"]:
        sc = container.get("securityContext", {})
        name = container["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities are not drop [ALL]")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("runAsUser") == 0 or context.get("runAsUser") == 0:
            problems.append(f"{name}: runs as root")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
    return problems
