"""The chart tests' shared fixture: prometheus-operator's real CRDs (ServiceMonitor, PodMonitor,
PrometheusRule; ci/monitoring-crds copies them from its pinned Go module) on the local API
server, for the server-side dry runs of test_monitoring.py and test_alerts.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.commands import kubectl, run
from harness.paths import ROOT

CRDS = ROOT / ".tools" / "monitoring-crds"


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Path) -> Path:
    run([str(ROOT / "ci" / "monitoring-crds")])
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS.resolve()))
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.monitoring.coreos.com",
                "--timeout=60s")  # fmt: skip
    return CRDS
