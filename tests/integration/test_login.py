"""A real login: the test OpenID provider shaped as CERN SSO (Keycloak paths, roles in
`cern_roles`), a real JupyterHub and configurable-http-proxy configured by hub_config from a
values file of the chart (the `cern` preset), a browser and an HTTP client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests

from harness.hub import Hub, run_hub
from harness.net import free_port
from harness.oidc import (
    CERN_REALM,
    CERN_SCOPES,
    HUB_CLIENT,
    KEYCLOAK_ROUTES,
    Provider,
    browser_login,
    cern_claims,
    cern_site_values,
    cilogon_claims,
    login_with_http_client,
    run_provider,
)
from harness.wait import wait_for

ACCOUNTS = {
    "alice": cern_claims("alice", ["af-users"]),
    "carol": cern_claims("carol", ["af-users", "af-admins"]),
    "mallory": cern_claims("mallory", ["other-experiment"]),
    "dave": {k: v for k, v in cern_claims("dave", []).items() if k != "cern_roles"},
}


@dataclass
class Site:
    hub: Hub
    provider: Provider
    callback: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("login")
    port = free_port()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    # "other-app" is a second client of the same provider that may send users to the hub's
    # callback: its codes must not open the hub.
    other = {"client_id": "other-app", "client_secret": "x", "redirect_uris": [callback]}
    clients = [{**HUB_CLIENT, "redirect_uris": [callback]}, other]
    with (
        run_provider(
            tmp, clients, ACCOUNTS, issuer_path=CERN_REALM, routes=KEYCLOAK_ROUTES
        ) as provider,
        run_hub(tmp, cern_site_values(provider.issuer), port) as hub,
    ):
        yield Site(hub, provider, callback)


def login(site: Site, user: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    return session, login_with_http_client(session, f"{site.hub.url}/hub/oauth_login", user)


def logged_in(session: requests.Session, site: Site) -> bool:
    home = session.get(f"{site.hub.url}/hub/home", allow_redirects=False, timeout=10)
    return home.status_code == 200


def test_allowed_user_lands_on_the_spawn_page_in_a_browser(site: Site, tmp_path: Path) -> None:
    screenshot = Path("/tmp/facility-spawn-page.png")
    result = browser_login(
        f"{site.hub.url}/hub/oauth_login", "alice", "/hub/spawn", screenshot=screenshot
    )
    assert result["ok"], result
    assert result["login_page_seen"]
    assert urlparse(result["final_url"]).path == "/hub/spawn"
    assert result["status"] == 200


@pytest.mark.parametrize("user", ["mallory", "dave"], ids=["other group", "no group claim"])
def test_user_outside_the_groups_is_told_why(site: Site, user: str) -> None:
    session, response = login(site, user)
    assert response.status_code == 403
    assert "open only to members of af-users" in response.text
    assert "cern_roles" in response.text
    assert "Traceback" not in response.text
    assert not logged_in(session, site)


def test_admin_follows_the_admin_group(site: Site) -> None:
    session, response = login(site, "carol")
    assert response.status_code == 200
    assert session.get(f"{site.hub.url}/hub/admin", timeout=10).status_code == 200

    # carol leaves the admin group at the provider: at her next login she is no admin.
    site.provider.set_claims("carol", cern_claims("carol", ["af-users"]))
    try:
        session, response = login(site, "carol")
        assert response.status_code == 200
        assert session.get(f"{site.hub.url}/hub/admin", timeout=10).status_code == 403
    finally:
        site.provider.set_claims("carol", ACCOUNTS["carol"])


def start_login(site: Site) -> tuple[requests.Session, dict[str, str]]:
    """Begin a login at the hub; returns the session (with the hub's state cookie) and the
    parameters of the authorization request the hub sent the browser to."""
    session = requests.Session()
    first = session.get(f"{site.hub.url}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert first.status_code == 302
    query = parse_qs(urlparse(first.headers["Location"]).query)
    return session, {key: values[0] for key, values in query.items()}


def test_state_mismatch_is_refused(site: Site) -> None:
    session, _ = start_login(site)
    response = session.get(
        f"{site.hub.url}/hub/oauth_callback", params={"code": "x", "state": "forged"}, timeout=10
    )
    assert response.status_code == 400
    assert "OAuth state mismatch" in response.text
    assert not logged_in(session, site)


def assert_refused(site: Site, session: requests.Session, code: str, state: str) -> None:
    """The hub's callback, given this code with the right state, lets nobody in."""
    callback = f"{site.hub.url}/hub/oauth_callback"
    response = session.get(callback, params={"code": code, "state": state}, timeout=10)
    assert response.status_code >= 400
    assert "Traceback" not in response.text
    assert not logged_in(session, site)


def test_forged_code_is_refused(site: Site) -> None:
    session, request = start_login(site)
    assert_refused(site, session, "forged-code", request["state"])


def code_from(provider: Provider, client_id: str, request: dict[str, str], user: str) -> str:
    """Log `user` in at `provider` for `client_id`, keeping the hub's state; returns the code
    that the provider sends to the hub's callback."""
    params = {**request, "client_id": client_id}
    params.pop("code_challenge", None)
    params.pop("code_challenge_method", None)
    auth = f"{provider.url}{KEYCLOAK_ROUTES['authorization']}?{urlencode(params)}"
    callback = request["redirect_uri"]
    redirect = login_with_http_client(requests.Session(), auth, user, stop_at=callback)
    return parse_qs(urlparse(redirect.headers["Location"]).query)["code"][0]


def test_code_for_another_client_is_refused(site: Site) -> None:
    # A real code, for a real user, from the right provider, but issued to another client
    # (the wrong audience): the provider refuses to give the hub tokens for it.
    session, request = start_login(site)
    code = code_from(site.provider, "other-app", request, "alice")
    assert_refused(site, session, code, request["state"])


def test_code_from_another_issuer_is_refused(site: Site, tmp_path: Path) -> None:
    # The same client registered at a different provider (the wrong issuer): its codes mean
    # nothing to the hub's provider.
    clients = [{**HUB_CLIENT, "redirect_uris": [site.callback]}]
    with run_provider(
        tmp_path, clients, ACCOUNTS, issuer_path=CERN_REALM, routes=KEYCLOAK_ROUTES
    ) as other:
        session, request = start_login(site)
        code = code_from(other, HUB_CLIENT["client_id"], request, "alice")
        assert_refused(site, session, code, request["state"])


def test_scopes_are_cern_shaped(site: Site) -> None:
    _, request = start_login(site)
    assert set(request["scope"].split()) == set(CERN_SCOPES.split())
    assert request["client_id"] == "facility"


CILOGON_ROUTES = {
    "authorization": "/authorize",
    "token": "/oauth2/token",
    "userinfo": "/oauth2/userinfo",
}
UNL = "https://idp.unl.edu/idp/shibboleth"


def test_cilogon_preset_derives_usernames_and_groups(tmp_path: Path) -> None:
    """The cilogon preset against a CILogon-shaped provider: usernames from the identity
    provider's rule, groups from isMemberOf. Its endpoints point at the local provider through
    hub.config, as a site would point them at a CILogon test instance."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    accounts = {
        "ann": cilogon_claims(1001, "ann", ["CO:COU:cms-af:members:active"], domain="unl.edu"),
        "bert": cilogon_claims(1002, "bert", ["CO:COU:atlas:members:active"], domain="unl.edu"),
    }
    with run_provider(tmp_path, [{**HUB_CLIENT, "redirect_uris": [callback]}], accounts,
                      routes=CILOGON_ROUTES) as provider:  # fmt: skip
        endpoints = {
            "authorize_url": f"{provider.url}/authorize",
            "token_url": f"{provider.url}/oauth2/token",
            "userdata_url": f"{provider.url}/oauth2/userinfo",
        }
        site_values = {
            "auth": {
                "type": "cilogon", "clientId": HUB_CLIENT["client_id"],
                "clientSecret": HUB_CLIENT["client_secret"],
                "allowedGroups": ["CO:COU:cms-af:members:active"],
                "cilogon": {"allowedIdps": {UNL: {"username_derivation": {
                    "username_claim": "eppn", "action": "strip_idp_domain", "domain": "unl.edu"}}}},
            },
            "edge": {"host": "af.example.org"},
            "singleuser": {"profiles": [{"name": "Small", "default": True}]},
            "hub": {"config": {"CILogonOAuthenticator": endpoints}},
        }  # fmt: skip
        with run_hub(tmp_path, site_values, port) as hub:
            session = requests.Session()
            page = login_with_http_client(session, f"{hub.url}/hub/oauth_login", "ann")
            assert urlparse(page.url).path == "/hub/spawn"
            me = session.get(f"{hub.url}/hub/api/user", timeout=10).json()
            assert me["name"] == "ann"  # eppn ann@unl.edu, the identity provider's domain stripped
            assert "CO:COU:cms-af:members:active" in me["groups"]
            denied = login_with_http_client(
                requests.Session(), f"{hub.url}/hub/oauth_login", "bert"
            )
            assert denied.status_code == 403
            assert "isMemberOf" in denied.text


def test_idle_culler_works_with_its_scopes(site: Site) -> None:
    # The culler asks the hub for users and their servers at start: with too few scopes the
    # hub would answer 403.
    wait_for(lambda: "GET /hub/api/users" in site.hub.log() and "idle-culler" in site.hub.log(),
             "the idle culler's first request", 60)  # fmt: skip
    culler_lines = [line for line in site.hub.log().splitlines() if "idle-culler" in line]
    assert not [line for line in culler_lines if " 403 " in line], culler_lines


def test_expired_token_without_refresh_means_a_new_login(tmp_path: Path) -> None:
    port = free_port()
    callback = f"http://127.0.0.1:{port}/hub/oauth_callback"
    clients = [{**HUB_CLIENT, "redirect_uris": [callback]}]
    shape = {"issuer_path": CERN_REALM, "routes": KEYCLOAK_ROUTES}
    accounts = {"alice": ACCOUNTS["alice"]}
    with run_provider(
        tmp_path, clients, accounts, access_token_ttl=2, refresh_tokens=False, **shape
    ) as provider:
        site_values = cern_site_values(provider.issuer)
        site_values["auth"]["refreshAge"] = 1
        with run_hub(tmp_path, site_values, port) as hub:
            session = requests.Session()
            login_with_http_client(session, f"{hub.url}/hub/oauth_login", "alice")
            assert (
                session.get(f"{hub.url}/hub/home", allow_redirects=False, timeout=10).status_code
                == 200
            )

            def sent_to_login() -> bool:
                home = session.get(f"{hub.url}/hub/home", allow_redirects=False, timeout=10)
                return home.status_code == 302 and "/hub/login" in home.headers["Location"]

            # The access token expires and cannot be refreshed: the hub asks for a new login.
            wait_for(sent_to_login, "the hub to refuse the expired token", 30)
