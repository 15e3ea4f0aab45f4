"""The chart tests' shared fixture: prometheus-operator's real CRDs (ServiceMonitor, PodMonitor,
PrometheusRule; ci/monitoring-crds copies them from its pinned Go module) on the local API
server, for the server-side dry runs of test_monitoring.py and test_alerts.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.commands import kubectl, run
from harness.paths import ROOT
from harness.wait import wait_for

CRDS = ROOT / ".tools" / "monitoring-crds"


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Path) -> Path:
    run([str(ROOT / "ci" / "monitoring-crds")])
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS.resolve()))
    # Not `kubectl wait`: it fails at once while a new CRD has no status conditions yet.
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        wait_for(lambda crd=crd: established(f"{crd}.monitoring.coreos.com"), f"CRD {crd}", 60)
    return CRDS


def established(crd: str) -> bool:
    # Read whole: a jsonpath filter on the conditions fails while the CRD has none yet; and
    # a CRD just applied may not be served yet (NotFound): both are "not yet".
    got = kubectl("get", "crd", crd, "-o", "json", check=False)
    if got.returncode != 0:
        return False
    conditions = json.loads(got.stdout)
    return any(
        c["type"] == "Established" and c["status"] == "True"
        for c in conditions.get("status", {}).get("conditions", [])
    )
