"""The hub's /hub/metrics as the chart configures it, on a real JupyterHub: the token of
metrics.hub.tokenSecret (which the hub's ServiceMonitor presents) reads it, and nothing else of
the hub's API; without a token, or with another, the scrape is refused (JupyterHub's
authenticate_prometheus, kept: the proxy routes /hub/ from the edge). Local processes: no
cluster.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.hub import run_hub
from harness.net import free_port


def status_of(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_only_the_scrapers_token_reads_the_hubs_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_hex(32)
    # What the hub Deployment's environment holds with metrics.hub.tokenSecret set.
    monkeypatch.setenv("FACILITY_METRICS_TOKEN", token)
    values = {
        "devMode": True,
        "culler": {"enabled": False},
        "operator": {"enabled": False},
        "hub": {"tokenServicePort": free_port()},
        "metrics": {"hub": {"tokenSecret": "prometheus-hub-token"}},
    }
    with run_hub(tmp_path, values, free_port()) as hub:
        metrics = f"{hub.url}/hub/metrics"
        status, text = status_of(metrics, token)
        assert status == 200, text
        assert "jupyterhub_" in text
        assert status_of(metrics, None)[0] == 403
        assert status_of(metrics, secrets.token_hex(32))[0] == 403
        # read:metrics alone: the token lists no user.
        assert status_of(f"{hub.url}/hub/api/users", token)[0] == 403
