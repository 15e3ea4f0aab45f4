"""ci/tools: the pinned tools report their real versions, are cached, and fail by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from harness.commands import tool
from harness.paths import ROOT

SCRIPT = ROOT / "ci" / "tools"


def pinned() -> dict[str, str]:
    text = (ROOT / "ci" / "versions").read_text()
    return dict(re.findall(r"^(\w+_VERSION)=(\S+)", text, re.MULTILINE))


def output(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout + done.stderr


def test_every_tool_reports_its_pinned_version() -> None:
    versions = pinned()
    kube = versions["KUBERNETES_VERSION"]
    assert output(tool("kube-apiserver"), "--version").strip() == f"Kubernetes {kube}"
    for component in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        assert output(tool(component), "--version").strip() == f"Kubernetes {kube}"
    client = json.loads(output(tool("kubectl"), "version", "--client", "-o", "json"))
    assert client["clientVersion"]["gitVersion"] == kube
    assert output(tool("helm"), "version", "--template", "{{.Version}}") == versions["HELM_VERSION"]
    assert f"etcd Version: {versions['ETCD_VERSION'].lstrip('v')}" in output(
        tool("etcd"), "--version"
    )
    assert versions["KWOK_VERSION"].lstrip("v") in output(tool("kwok"), "--version")
    assert re.search(
        rf"Version:\s+{versions['TRAEFIK_VERSION']}\b", output(tool("traefik"), "version")
    )
    # The Go module's v0.3XX.Y is Prometheus 3.XX.Y; the revision is the module's version.
    module = versions["PROMETHEUS_VERSION"]
    minor, patch = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", module).groups()
    for name in ("prometheus", "promtool"):
        assert output(tool(name), "--version").startswith(
            f"{name}, version 3.{int(minor)}.{patch} (branch: facility, revision: {module})"
        )


def test_helm_knows_a_real_kubernetes_version() -> None:
    # Unstamped, helm assumes Kubernetes v1.20 and the chart's kubeVersion constraint fails.
    chart = str(ROOT / "charts" / "facility")
    args = [tool("helm"), "template", "x", chart, "--show-only", "templates/hub/service.yaml"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_second_run_does_no_work() -> None:
    start = time.monotonic()
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True)
    elapsed = time.monotonic() - start
    for name in ("kube", "etcd", "helm", "kwok", "traefik", "prometheus"):
        assert re.search(rf"\] {name} v\S+: cached$", done.stderr, re.MULTILINE), done.stderr
    assert "building" not in done.stderr
    assert elapsed < 30


def test_a_failed_build_names_the_tool_and_the_step(tmp_path: Path) -> None:
    # An empty cache and no module proxy: the download step of the first tool must fail, loudly.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "GOPROXY": "off"}
    done = subprocess.run(
        [str(SCRIPT), "helm"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode != 0
    assert re.search(
        r"ERROR: helm v\S+: step 'download' failed; full log: \S+build\.log", done.stderr
    )


def test_unknown_tool_is_refused() -> None:
    done = subprocess.run([str(SCRIPT), "kubelet"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "unknown tool 'kubelet'" in done.stderr
