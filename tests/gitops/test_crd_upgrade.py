"""The chart's CRDs across an upgrade: Helm installs crds/ once and never upgrades them, so the
README gives the upgrade path (Argo CD: ServerSideApply; Flux: crds CreateReplace; plain Helm:
`kubectl apply --server-side -f charts/facility/crds/` before `helm upgrade`). This test runs
the plain-Helm path against the real API server, on a copy of the DaskCluster CRD renamed into
a group of its own, so that nothing else using the real CRD is disturbed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.commands import helm, kubectl
from harness.paths import CHART
from harness.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP = "upgrade-test.facility.hep.io"
CRD_NAME = f"daskclusters.{GROUP}"


def crd(*, with_idle_timeout: bool) -> dict:
    """The chart's DaskCluster CRD in the test's group; the "previous release" lacks idleTimeout."""
    definition = yaml.safe_load((CHART / "crds" / "daskcluster.yaml").read_text())
    definition["metadata"]["name"] = CRD_NAME
    definition["spec"]["group"] = GROUP
    if not with_idle_timeout:
        (version,) = definition["spec"]["versions"]
        del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["idleTimeout"]
    return definition


def write_chart(folder: Path, definition: dict) -> Path:
    (folder / "crds").mkdir(parents=True, exist_ok=True)
    (folder / "Chart.yaml").write_text("apiVersion: v2\nname: crd-upgrade\nversion: 0.1.0\n")
    (folder / "crds" / "daskcluster.yaml").write_text(yaml.safe_dump(definition))
    return folder


def served_spec_fields() -> set[str]:
    done = kubectl("get", "crd", CRD_NAME, "-o", "json")
    (version,) = json.loads(done.stdout)["spec"]["versions"]
    return set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


@pytest.fixture
def release(namespace: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    chart = write_chart(tmp_path / "chart", crd(with_idle_timeout=False))
    helm("install", "crd-upgrade", str(chart), "-n", namespace)
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    yield namespace, chart
    helm("uninstall", "crd-upgrade", "-n", namespace, check=False)
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", check=False)


def test_documented_crd_upgrade_path(release: tuple[str, Path]) -> None:
    namespace, chart = release
    assert "idleTimeout" not in served_spec_fields()
    cluster = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {"name": "alice-kept1", "namespace": namespace},
        "spec": {"owner": "alice", "backend": "htcondor", "maxWorkers": 2},
    }
    kubectl("apply", "-f", "-", input=json.dumps(cluster))

    # The new release's chart: helm upgrade leaves the CRD as it was.
    write_chart(chart, crd(with_idle_timeout=True))
    helm("upgrade", "crd-upgrade", str(chart), "-n", namespace)
    assert "idleTimeout" not in served_spec_fields()

    # The documented step does upgrade it, and the existing cluster is untouched (and now reads
    # with the new field's default).
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))
    wait_for(lambda: "idleTimeout" in served_spec_fields(), "the new CRD schema served", 30)
    live = json.loads(
        kubectl("get", f"daskclusters.{GROUP}", "alice-kept1", "-n", namespace, "-o", "json").stdout
    )
    assert live["spec"]["maxWorkers"] == 2
    assert live["spec"]["idleTimeout"] == 3600
