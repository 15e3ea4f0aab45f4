"""The user's access token reaches the user's server, refreshed, as a file of mode 0600.

The provider issues access tokens that live 3 seconds; the hub (auth.refreshAge 1) refreshes
them with the refresh token when the server asks the token service; the client library writes
the file as it would in the user's pod. The "server" here is the client library run with a
JupyterHub token of the user, as a server holds one.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import requests

from harness.hub import run_hub
from harness.net import free_port
from harness.oidc import (
    CERN_REALM,
    HUB_CLIENT,
    KEYCLOAK_ROUTES,
    Provider,
    cern_claims,
    cern_site_values,
    login_with_http_client,
    run_provider,
)
from harness.paths import ROOT
from harness.wait import wait_for


def introspect(provider: Provider, token: str) -> dict:
    endpoint = provider.discovery()["introspection_endpoint"]
    body = {"token": token, **HUB_CLIENT}
    return requests.post(endpoint, data=body, timeout=10).json()


def fetch_token(hub_url: str, api_token: str, path: Path) -> str:
    """What the user's server runs (facility-token), once."""
    done = subprocess.run(
        [sys.executable, "-m", "facility_client.tokens", "--once",
         f"--url={hub_url}/services/tokens/", f"--file={path}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "JUPYTERHUB_API_TOKEN": api_token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text()


def test_refreshed_access_token_reaches_the_server(tmp_path: Path) -> None:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    accounts = {"alice": cern_claims("alice", ["af-users"])}
    clients = [{**HUB_CLIENT, "redirect_uris": [callback]}]
    with run_provider(tmp_path, clients, accounts, access_token_ttl=3, issuer_path=CERN_REALM,
                      routes=KEYCLOAK_ROUTES) as provider:  # fmt: skip
        site = cern_site_values(provider.issuer)
        site["auth"]["refreshAge"] = 1
        site["hub"] = {"tokenServicePort": free_port()}
        with run_hub(tmp_path, site, port) as hub:
            session = requests.Session()
            login_with_http_client(session, f"{hub.url}/hub/oauth_login", "alice")
            session.get(f"{hub.url}/hub/home", timeout=10)  # sets the _xsrf cookie
            made = session.post(
                f"{hub.url}/hub/api/users/alice/tokens",
                json={"note": "the server's token, for this test", "expires_in": 600},
                headers={"X-XSRFToken": session.cookies["_xsrf"]},
                timeout=10,
            )
            assert made.status_code == 201, made.text
            api_token = made.json()["token"]

            path = tmp_path / "run" / "bt_u1000"
            first = fetch_token(hub.url, api_token, path)
            assert introspect(provider, first)["sub"] == "alice"

            # The access token expires; the next request makes the hub refresh it.
            def refreshed() -> str | None:
                token = fetch_token(hub.url, api_token, path)
                return token if token != first else None

            second = wait_for(refreshed, "a refreshed access token in the file", 30)
            assert provider.tokens_issued("access_token", grant_type="refresh_token") >= 1
            assert introspect(provider, second)["active"] is True
            assert introspect(provider, first)["active"] is False

            # No token, or one the hub does not know, gets nothing.
            service = f"{hub.url}/services/tokens/"
            assert requests.get(service, timeout=10).status_code == 401
            forged = {"Authorization": "token not-a-jupyterhub-token"}
            assert requests.get(service, headers=forged, timeout=10).status_code == 403
            # A valid token of alice's that may not access this service (as the token her
            # server gets for a visitor): 403, naming the scope it lacks.
            narrow = session.post(
                f"{hub.url}/hub/api/users/alice/tokens",
                json={"note": "no service access", "expires_in": 600,
                      "scopes": ["read:users:name!user"]},
                headers={"X-XSRFToken": session.cookies["_xsrf"]},
                timeout=10,
            )  # fmt: skip
            assert narrow.status_code == 201, narrow.text
            answer = requests.get(
                service, headers={"Authorization": f"token {narrow.json()['token']}"}, timeout=10
            )
            assert answer.status_code == 403
            assert "lacks the scope access:services!service=tokens" in answer.json()["error"]
