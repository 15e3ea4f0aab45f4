"""The test OpenID provider (harness/oidc.py) works as the login tests need it to.

A real `oidc-provider` runs on loopback with a CILogon-shaped and a CERN-shaped account; a tiny
HTTP server stands in for the client's redirect URI. Logins go through the provider's own pages,
with an HTTP client and with headless Chromium; codes are exchanged at the token endpoint as
OAuthenticator does (client_secret_post, PKCE S256).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest
import requests

from harness.oidc import (
    CERN_SCOPES,
    CILOGON_SCOPES,
    Provider,
    browser_login,
    cern_claims,
    cilogon_claims,
    jwt_claims,
    login_with_http_client,
    run_provider,
)
from harness.wait import wait_for

ACCESS_TTL = 30
ID_TTL = 20


class _Callback(BaseHTTPRequestHandler):
    """The client's redirect URI: answers every GET with a small page."""

    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><title>callback</title><p>back at the client</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def callback() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/oauth_callback"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def client(callback: str) -> dict[str, Any]:
    return {"client_id": "hub", "client_secret": secrets.token_hex(16), "redirect_uris": [callback]}


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory, client: dict[str, Any]
) -> Iterator[Provider]:
    accounts = {
        "alice": cilogon_claims(1234, "alice", ["CO:members:all", "atlas"]),
        "bob": cern_claims("bob", ["default-role", "facility-admins"]),
    }
    with run_provider(
        tmp_path_factory.mktemp("oidc"),
        [client],
        accounts,
        access_token_ttl=ACCESS_TTL,
        id_token_ttl=ID_TTL,
    ) as running:
        yield running


def authorize(provider: Provider, client: dict[str, Any], scope: str) -> tuple[str, str, str]:
    """An authorization URL as OAuthenticator builds it; returns it, its state and verifier."""
    state = secrets.token_urlsafe(16)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    query = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uris"][0],
        "scope": scope,
        "state": state,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    url = provider.discovery()["authorization_endpoint"] + "?" + urlencode(query)
    return url, state, verifier


def login_and_exchange(
    provider: Provider, client: dict[str, Any], username: str, scope: str
) -> dict[str, Any]:
    """A full code-flow login with an HTTP client; returns the token response."""
    url, state, verifier = authorize(provider, client, scope)
    with requests.Session() as session:
        final = login_with_http_client(session, url, username)
    assert final.status_code == 200
    assert final.url.startswith(client["redirect_uris"][0])
    query = parse_qs(urlparse(final.url).query)
    assert query["state"] == [state]
    assert query["iss"] == [provider.issuer]
    response = provider.token_request(
        client,
        {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": client["redirect_uris"][0],
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("username", "scope", "expected"),
    [
        (
            "alice",
            CILOGON_SCOPES,
            {
                "sub": "http://cilogon.org/serverA/users/1234",
                "eppn": "alice@example.edu",
                "idp": "https://idp.example.edu/idp/shibboleth",
                "isMemberOf": ["CO:members:all", "atlas"],
            },
        ),
        (
            "bob",
            CERN_SCOPES,
            {"sub": "bob", "cern_upn": "bob", "cern_roles": ["default-role", "facility-admins"]},
        ),
    ],
)
def test_login_gives_custom_claims_and_refresh_token(
    provider: Provider, client: dict[str, Any], username: str, scope: str, expected: dict
) -> None:
    before = provider.tokens_issued("access_token", "authorization_code")
    tokens = login_and_exchange(provider, client, username, scope)

    assert tokens["refresh_token"]
    assert tokens["expires_in"] == ACCESS_TTL
    id_token = jwt_claims(tokens["id_token"])
    assert {claim: id_token.get(claim) for claim in expected} == expected
    assert id_token["exp"] - id_token["iat"] == ID_TTL
    assert id_token["iss"] == provider.issuer
    assert id_token["aud"] == client["client_id"]

    userinfo = requests.get(
        provider.discovery()["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=5,
    ).json()
    assert {claim: userinfo.get(claim) for claim in expected} == expected
    assert provider.tokens_issued("access_token", "authorization_code") == before + 1


def test_refresh_token_gives_new_tokens(provider: Provider, client: dict[str, Any]) -> None:
    tokens = login_and_exchange(provider, client, "alice", CILOGON_SCOPES)
    before = provider.tokens_issued("access_token", "refresh_token")

    response = provider.token_request(
        client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )

    assert response.status_code == 200, response.text
    refreshed = response.json()
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["expires_in"] == ACCESS_TTL
    assert jwt_claims(refreshed["id_token"])["isMemberOf"] == ["CO:members:all", "atlas"]
    assert provider.tokens_issued("access_token", "refresh_token") == before + 1


def test_changed_claims_show_at_next_login_and_refresh(
    provider: Provider, client: dict[str, Any]
) -> None:
    first = login_and_exchange(provider, client, "bob", CERN_SCOPES)
    assert jwt_claims(first["id_token"])["cern_roles"] == ["default-role", "facility-admins"]

    provider.set_claims("bob", cern_claims("bob", ["default-role"]))
    try:
        second = login_and_exchange(provider, client, "bob", CERN_SCOPES)
        assert jwt_claims(second["id_token"])["cern_roles"] == ["default-role"]
        refreshed = provider.token_request(
            client, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        ).json()
        assert jwt_claims(refreshed["id_token"])["cern_roles"] == ["default-role"]
    finally:
        provider.set_claims("bob", cern_claims("bob", ["default-role", "facility-admins"]))


def test_access_token_expires_after_its_ttl(client: dict[str, Any], tmp_path) -> None:
    """Short-lived tokens really expire (no grace period), and a refresh renews them."""
    accounts = {"bob": cern_claims("bob", ["default-role"])}
    with run_provider(tmp_path, [client], accounts, access_token_ttl=1) as short:
        tokens = login_and_exchange(short, client, "bob", CERN_SCOPES)
        userinfo_url = short.discovery()["userinfo_endpoint"]

        def userinfo_status(access_token: str) -> int:
            headers = {"Authorization": f"Bearer {access_token}"}
            return requests.get(userinfo_url, headers=headers, timeout=5).status_code

        wait_for(lambda: userinfo_status(tokens["access_token"]) == 401, "expiry", timeout=10)
        refreshed = short.token_request(
            client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        ).json()
        assert userinfo_status(refreshed["access_token"]) == 200


def test_unknown_account_is_refused(provider: Provider, client: dict[str, Any]) -> None:
    url, _, _ = authorize(provider, client, CERN_SCOPES)
    with requests.Session() as session:
        form = session.get(url, timeout=5)
        assert form.status_code == 200
        uid = urlparse(form.url).path.split("/")[-1]
        refused = session.post(
            f"{provider.url}/interaction/{uid}/login", data={"username": "mallory"}, timeout=5
        )
    assert refused.status_code == 403
    assert "unknown account" in refused.text


def test_browser_login(provider: Provider, client: dict[str, Any], tmp_path) -> None:
    url, state, _ = authorize(provider, client, CILOGON_SCOPES)

    result = browser_login(
        url, "alice", client["redirect_uris"][0], screenshot=tmp_path / "login.png"
    )

    assert result["ok"], result
    assert result["login_page_seen"]
    assert result["status"] == 200
    assert result["title"] == "callback"
    query = parse_qs(urlparse(result["final_url"]).query)
    assert query["code"]
    assert query["state"] == [state]
    assert (tmp_path / "login.png").stat().st_size > 0
    assert "login account=alice client=hub" in provider.log()


def test_admin_api_refuses_claims_it_could_not_release(provider: Provider) -> None:
    url = f"{provider.url}/test/accounts/bob"
    assert requests.put(url, json={"no_such_claim": 1}, timeout=5).status_code == 400
    assert requests.put(url, data="not json", timeout=5).status_code == 400
    assert provider.claims("bob")["cern_upn"] == "bob"


STORAGE = "https://wlcg.cern.ch/jwt/v1/any"


def test_storage_tokens_are_wlcg_jwts_with_the_scopes_asked_for(
    client: dict[str, Any], tmp_path
) -> None:
    """With --storage-audience, the access token is a signed WLCG token (what XCache's SciTokens
    plugin checks in make up's facility): the audience, wlcg.ver, only the storage scopes the
    client asked for among those offered; a refresh gives another; the provider's own userinfo
    endpoint refuses it (the hub reads the claims from the ID token)."""
    accounts = {"alice": cilogon_claims(1234, "alice", ["af-users"])}
    with run_provider(
        tmp_path, [client], accounts, storage=(STORAGE, "storage.read:/store storage.create:/store")
    ) as provider:
        tokens = login_and_exchange(provider, client, "alice", "openid email storage.read:/store")
        keys = jwt.PyJWKSet.from_dict(
            requests.get(provider.discovery()["jwks_uri"], timeout=5).json()
        )

        def verified(token: str) -> dict[str, Any]:
            header = jwt.get_unverified_header(token)
            key = next(k for k in keys.keys if k.key_id == header["kid"])
            return jwt.decode(token, key, algorithms=["RS256"], audience=STORAGE)

        claims = verified(tokens["access_token"])
        assert claims["iss"] == provider.issuer
        assert claims["sub"] == "http://cilogon.org/serverA/users/1234"
        assert claims["wlcg.ver"] == "1.0"
        assert claims["scope"].split() == ["storage.read:/store"]  # not create: not asked for
        assert jwt_claims(tokens["id_token"])["isMemberOf"] == ["af-users"]

        refreshed = provider.token_request(
            client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        ).json()
        again = verified(refreshed["access_token"])
        assert again["scope"] == "storage.read:/store"
        assert again["jti"] != claims["jti"]

        userinfo = requests.get(
            provider.discovery()["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=5,
        )
        assert userinfo.status_code == 401, userinfo.text
        assert userinfo.json()["error"] == "invalid_token", userinfo.text
