"""A hub whose values it cannot work with stops at once, naming the value and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.hub import HUB_CONFIG_FILE, write_config_dir

BIG = {"name": "Big", "cpu": {"guarantee": 64, "limit": 2}}
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("dummy login outside devMode", {}, "auth.type 'dummy'"),
    (
        "impossible profile",
        {"devMode": True, "singleuser": {"profiles": [BIG]}},
        "singleuser.profiles[0] (Big).cpu: the guarantee 64 exceeds the limit 2",
    ),
    (
        "misplaced section",
        {"devMode": True, "hub": {"config": {"singleuser": {"image": "x"}}}},
        "hub.config.singleuser: singleuser is not a JupyterHub configurable class",
    ),
    (
        "unreachable issuer",
        {"auth": {"type": "oidc", "clientId": "c", "clientSecret": "s",
                  "oidc": {"issuer": "http://127.0.0.1:9/"}}, "edge": {"host": "af.example.org"}},
        "auth.oidc.issuer: cannot read the discovery document",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("values", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hub_refuses_with_a_clear_message(tmp_path: Path, values: dict, message: str) -> None:
    config_dir = write_config_dir(tmp_path, values)
    env = {**os.environ, "FACILITY_CONFIG_DIR": str(config_dir), "JUPYTERHUB_CRYPT_KEY": "00" * 32}
    done = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG_FILE)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"facility configuration error: {message}" in done.stderr
    assert "Traceback" not in done.stderr
