"""Rendering the chart with helm, for the chart tests."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from hub_config.facility import Facility
from tests.conftest import CHART, helm

VALUES_DIR = Path(__file__).parent / "values"
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
