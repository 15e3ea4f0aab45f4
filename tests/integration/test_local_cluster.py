"""ci/cluster: a real control plane with kwok nodes comes up, is idempotent, and goes away clean.

The cluster under test has its own state dir and port base, so a developer's cluster (the
default .cluster, ports 16400+) keeps running beside it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.local_cluster import cluster_ports
from harness.net import listening, pid_alive
from harness.paths import ROOT, TOOLS

SCRIPT = ROOT / "ci" / "cluster"
PORT_BASE = 17400
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]

pytestmark = pytest.mark.cluster


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "FACILITY_CLUSTER_DIR": str(tmp_path / "cluster"),
        "FACILITY_CLUSTER_PORT_BASE": str(PORT_BASE),
        "FACILITY_NODES": "kwok",
    }
    yield env
    run(env, "down")  # whatever the test did, leave no process behind


def test_up_is_idempotent_and_down_cleans_up(cluster_env: dict[str, str]) -> None:
    state = Path(cluster_env["FACILITY_CLUSTER_DIR"])
    up = run(cluster_env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    # Every port the cluster listens on is in its state folder, for whoever talks to it.
    ports = cluster_ports(state)
    assert set(ports) >= {"API_SERVER_PORT", "ETCD_PORT", "KWOK_PORT"}, ports
    assert [name for name, port in ports.items() if not listening(port)] == []
    kubeconfig = state / "kubeconfig"
    assert f"kubeconfig: {kubeconfig}" in up.stdout

    status = run(cluster_env, "status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "nodes mode: kwok" in status.stdout
    ready = subprocess.run(
        [
            str(TOOLS / "kubectl"),
            f"--kubeconfig={kubeconfig}",
            "get",
            "node",
            "kwok-node-0",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert ready.stdout == "True"

    pids = {name: int((state / "pids" / name).read_text()) for name in COMPONENTS}
    start = time.monotonic()
    again = run(cluster_env, "up", timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stderr
    assert time.monotonic() - start < 15
    assert {name: int((state / "pids" / name).read_text()) for name in COMPONENTS} == pids

    down = run(cluster_env, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert [name for name, port in ports.items() if listening(port)] == []
    assert not state.exists()

    again = run(cluster_env, "down", timeout=30)
    assert again.returncode == 0, again.stdout + again.stderr


def test_unknown_node_mode_is_refused(cluster_env: dict[str, str]) -> None:
    result = run({**cluster_env, "FACILITY_NODES": "bogus"}, "up", timeout=30)
    assert result.returncode != 0
    assert "FACILITY_NODES" in result.stderr
    assert not Path(cluster_env["FACILITY_CLUSTER_DIR"]).exists()
