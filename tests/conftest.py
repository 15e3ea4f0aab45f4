"""The fixtures every test layer shares: the local cluster and a fresh namespace per test.

The helpers that run real parts live in the harness package, which ci/up and bench/ use too."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.commands import kubectl
from harness.paths import CLUSTER_DIR, KUBECONFIG, ROOT


@pytest.fixture(scope="session")
def cluster() -> Path:
    """The local cluster from ci/cluster; `make test` starts it. Fails (not skips) if it is down."""
    done = subprocess.run(
        [str(ROOT / "ci" / "cluster"), "status"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.fail(
            f"the local cluster is not running (ci/cluster up):\n{done.stdout}{done.stderr}"
        )
    return KUBECONFIG


@pytest.fixture
def namespace(cluster: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted", deleted after the test."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").rstrip("]")[:50]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def pytest_report_header() -> str:
    """Which nodes the shared local cluster has: the `cluster` tests ran in that mode (tests/e2e
    and the realnode tests start real-node clusters of their own and say so)."""
    env = CLUSTER_DIR / "cluster.env"
    if not env.is_file():
        return "local cluster: not running"
    lines = env.read_text().splitlines()
    mode = next((line.removeprefix("mode=") for line in lines if line.startswith("mode=")), "?")
    return f"local cluster: {CLUSTER_DIR} with {mode} nodes (the `cluster` tests run there)"
