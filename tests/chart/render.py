"""Rendering the chart with helm, for the chart tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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
