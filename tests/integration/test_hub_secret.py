"""hub_config.secret against the real API server: created once, kept, removed with its owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.commands import kubectl
from harness.paths import KUBECONFIG, ROOT
from harness.wait import wait_for

pytestmark = pytest.mark.cluster

OWNER = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "hub", "labels": {"app.kubernetes.io/component": "hub"}},
    "spec": {
        "replicas": 0,
        "selector": {"matchLabels": {"app": "hub"}},
        "template": {
            "metadata": {"labels": {"app": "hub"}},
            "spec": {"containers": [{"name": "hub", "image": "facility/hub"}]},
        },
    },
}


def run_module(namespace: str, owner: str) -> subprocess.CompletedProcess[str]:
    """python -m hub_config.secret, as the hub's init container runs it (here via kubeconfig)."""
    return subprocess.run(
        [sys.executable, "-m", "hub_config.secret", "--namespace", namespace,
         "--secret", "hub-secret", "--owner-deployment", owner],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
    )  # fmt: skip


def ensure(namespace: str) -> str:
    done = run_module(namespace, "hub")
    assert done.returncode == 0, done.stderr
    return done.stdout


def secret(namespace: str) -> dict:
    return json.loads(kubectl("get", "secret", "hub-secret", "-n", namespace, "-o", "json").stdout)


def test_created_once_kept_and_owned(namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(OWNER))
    assert "created" in ensure(namespace)
    first = secret(namespace)
    assert set(first["data"]) == {"cookie-secret", "crypt-key", "proxy-token"}
    owner = json.loads(kubectl("get", "deployment", "hub", "-n", namespace, "-o", "json").stdout)
    (reference,) = first["metadata"]["ownerReferences"]
    assert reference["uid"] == owner["metadata"]["uid"]

    # A restart of the hub must not rotate the secret (that would log every user out).
    assert "exists, kept" in ensure(namespace)
    assert secret(namespace)["data"] == first["data"]

    # A secret from an older chart lacks a key: it is added, and the others are kept.
    kubectl("patch", "secret", "hub-secret", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/data/crypt-key"}]')  # fmt: skip
    assert "exists, added crypt-key" in ensure(namespace)
    patched = secret(namespace)["data"]
    assert patched["cookie-secret"] == first["data"]["cookie-secret"]
    assert len(patched["crypt-key"]) > 0

    # Uninstalling removes the owner; the garbage collector then removes the secret.
    kubectl("delete", "deployment", "hub", "-n", namespace)
    wait_for(
        lambda: kubectl("get", "secret", "-n", namespace, "-o", "name").stdout.strip() == "",
        "the secret to follow its owner",
    )


def test_missing_owner_is_a_clear_error(namespace: str) -> None:
    done = run_module(namespace, "nope")
    assert done.returncode != 0
    assert "owner: Deployment nope): 404 Not Found" in done.stderr
    assert "Traceback" not in done.stderr
