"""The chart tests' shared fixture: prometheus-operator's real CRDs (ServiceMonitor, PodMonitor,
PrometheusRule; ci/monitoring-crds copies them from its pinned Go module) on the local API
server, for the server-side dry runs of test_monitoring.py and test_alerts.py."""

from __future__ import annotations

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
    condition = '{.status.conditions[?(@.type=="Established")].status}'
    return kubectl("get", "crd", crd, "-o", f"jsonpath={condition}").stdout == "True"
