"""A real OpenID Connect provider for the login tests, and ways to log in through it.

`run_provider` starts `node/oidc-provider.mjs` (the certified npm `oidc-provider`) on a free
loopback port with the given clients and accounts. Its login page is one form: POST
`/interaction/<uid>/login` with the field `username` (an account id; no password). Consent is
given automatically. Every authorization request asks for a fresh login, so one session can log
in as different users in turn.

Logging in takes, from the client's login URL (e.g. JupyterHub's /hub/oauth_login):

1. GET the client's login URL: redirects to the provider's /auth, then to
   /interaction/<uid>, which is the login form (200, HTML).
2. POST /interaction/<uid>/login with `username=<account id>`: 303 to /auth/<uid>, 303 to
   /interaction/<uid2> (consent, given at once), 303 to /auth/<uid2>, and 303 to the client's
   redirect URI with `?code=...&state=...&iss=...`. An unknown account gets 403 and the form.

`login_with_http_client` does this with a `requests.Session`; `browser_login` does it in headless
Chromium (`node/browser-login.mjs`, driven by Playwright). The Node packages come from
`npm ci --prefix harness/node`; `ensure_node_modules` runs it if it has not been run.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from harness import HarnessError
from harness.commands import stop
from harness.paths import NODE_DIR
from harness.wait import wait_for

PROVIDER_SCRIPT = NODE_DIR / "oidc-provider.mjs"
BROWSER_SCRIPT = NODE_DIR / "browser-login.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LISTENING = re.compile(r"^listening (\{.*\})$", re.MULTILINE)
REDIRECTS = {301, 302, 303, 307, 308}

# The scopes the authenticators ask for.
CILOGON_SCOPES = "openid email profile org.cilogon.userinfo"
CERN_SCOPES = "openid profile email"


def cilogon_claims(
    number: int, user: str, groups: Sequence[str], *, domain: str = "example.edu"
) -> dict[str, Any]:
    """Claims shaped as CILogon sends them (scopes openid email profile org.cilogon.userinfo).

    CILogon's groups claim is `isMemberOf`; here a list of names. (COmanage deployments can
    send a list of {"name": ..., "id": ...} objects instead; pass your own claims for that.)
    """
    return {
        "sub": f"http://cilogon.org/serverA/users/{number}",
        "email": f"{user}@{domain}",
        "eppn": f"{user}@{domain}",
        "idp": f"https://idp.{domain}/idp/shibboleth",
        "idp_name": f"{domain.split('.')[0].title()} University",
        "name": f"{user.title()} Tester",
        "given_name": user.title(),
        "family_name": "Tester",
        "isMemberOf": list(groups),
    }


def cern_claims(user: str, roles: Sequence[str]) -> dict[str, Any]:
    """Claims shaped as CERN SSO (Keycloak realm "cern") sends them; roles in `cern_roles`."""
    return {
        "sub": user,
        "cern_upn": user,
        "preferred_username": user,
        "email": f"{user}@cern.ch",
        "name": f"{user.title()} Tester",
        "given_name": user.title(),
        "family_name": "Tester",
        "cern_roles": list(roles),
    }


# CERN SSO's shape: Keycloak's endpoints under its realm, and the hub as one confidential client.
CERN_REALM = "/auth/realms/cern"
KEYCLOAK_ROUTES = {
    "authorization": f"{CERN_REALM}/protocol/openid-connect/auth",
    "token": f"{CERN_REALM}/protocol/openid-connect/token",
    "userinfo": f"{CERN_REALM}/protocol/openid-connect/userinfo",
    "jwks": f"{CERN_REALM}/protocol/openid-connect/certs",
    "end_session": f"{CERN_REALM}/protocol/openid-connect/logout",
}
HUB_CLIENT = {"client_id": "facility", "client_secret": "facility-secret"}


def cern_site_values(issuer: str) -> dict[str, Any]:
    """The chart's values for a hub that logs in af-users (admins: af-admins) at this issuer."""
    return {
        "auth": {
            "type": "cern",
            "clientId": HUB_CLIENT["client_id"],
            "clientSecret": HUB_CLIENT["client_secret"],
            "allowedGroups": ["af-users"],
            "adminGroups": ["af-admins"],
            "cern": {"issuer": issuer},
        },
        "edge": {"host": "af.example.org"},
        # A profile, so that /hub/spawn shows the choice instead of starting a server.
        "singleuser": {"profiles": [{"name": "Small", "default": True}]},
    }


def ensure_node_modules() -> None:
    """Run `npm ci --prefix harness/node` unless its result is there and current.

    Parallel test processes take a lock (on package-lock.json) so that one installs and the
    others wait for it.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise HarnessError("node and npm (Node.js >= 20) are required: run ci/prereqs")
    lock_file = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"  # written last by npm ci

    def current() -> bool:
        return installed.exists() and installed.stat().st_mtime >= lock_file.stat().st_mtime

    if current():
        return
    with lock_file.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # another process installed it while we waited
            return
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise HarnessError(f"npm ci failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class Provider:
    """A running provider: its issuer, its port, its log, and its test-only admin API."""

    issuer: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """Where the provider listens (the issuer can differ, e.g. behind the edge)."""
        return f"http://127.0.0.1:{self.port}"

    def discovery(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/.well-known/openid-configuration", timeout=5)
        response.raise_for_status()
        return response.json()

    def set_claims(self, account_id: str, claims: Mapping[str, Any]) -> None:
        """Replace (or create) an account's claims; the next login or refresh sees them."""
        response = requests.put(f"{self.url}/test/accounts/{account_id}", json=claims, timeout=5)
        if response.status_code != 200:
            raise HarnessError(f"setting the claims of {account_id} failed: {response.text}")

    def claims(self, account_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/test/accounts/{account_id}", timeout=5)
        response.raise_for_status()
        return response.json()["claims"]

    def log(self) -> str:
        """Everything the provider printed (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def tokens_issued(self, kind: str = "access_token", grant_type: str | None = None) -> int:
        """How many tokens of a kind (access_token, id_token, refresh_token) were issued."""
        lines = [line for line in self.log().splitlines() if line.startswith("token issued ")]
        lines = [line for line in lines if f" kind={kind} " in line]
        if grant_type is not None:
            lines = [line for line in lines if f" grant_type={grant_type} " in line]
        return len(lines)

    def token_request(
        self, client: Mapping[str, Any], data: Mapping[str, str]
    ) -> requests.Response:
        """POST to the token endpoint, authenticating as OAuthenticator does by default."""
        body = {**data, "client_id": client["client_id"], "client_secret": client["client_secret"]}
        return requests.post(self.discovery()["token_endpoint"], data=body, timeout=10)


@contextlib.contextmanager
def run_provider(
    tmp_path: Path,
    clients: Sequence[Mapping[str, Any]],
    accounts: Mapping[str, Mapping[str, Any]],
    *,
    access_token_ttl: int = 3600,
    id_token_ttl: int | None = None,
    refresh_token_ttl: int = 14 * 24 * 3600,
    refresh_tokens: bool = True,
    issuer: str | None = None,
    issuer_path: str = "",
    routes: Mapping[str, str] | None = None,
    storage: tuple[str, str] | None = None,
    timeout: float = 30,
) -> Iterator[Provider]:
    """Run the provider on a free port until the block ends.

    clients: [{"client_id", "client_secret", "redirect_uris": [...]}, ...]; other client
    metadata passes through (token_endpoint_auth_method defaults to client_secret_post).
    accounts: {login name: claims}; `sub` defaults to the login name.
    id_token_ttl defaults to access_token_ttl. issuer defaults to
    http://127.0.0.1:<port><issuer_path>. routes: endpoint paths (oidc-provider's `routes`).
    storage: (audience, scopes): access tokens become WLCG JWTs for that audience.
    """
    ensure_node_modules()
    work = tmp_path / "oidc-provider"
    work.mkdir(parents=True, exist_ok=True)
    (work / "clients.json").write_text(json.dumps(list(clients)))
    (work / "accounts.json").write_text(
        json.dumps([{"id": id, "claims": dict(claims)} for id, claims in accounts.items()])
    )
    args = [
        "node",
        str(PROVIDER_SCRIPT),
        "--port=0",
        f"--clients={work / 'clients.json'}",
        f"--accounts={work / 'accounts.json'}",
        f"--access-token-ttl={access_token_ttl}",
        f"--id-token-ttl={id_token_ttl or access_token_ttl}",
        f"--refresh-token-ttl={refresh_token_ttl}",
    ]
    if issuer:
        args.append(f"--issuer={issuer}")
    if issuer_path:
        args.append(f"--issuer-path={issuer_path}")
    if routes:
        args.append(f"--routes={json.dumps(dict(routes))}")
    if not refresh_tokens:
        args.append("--no-refresh-tokens")
    if storage:
        args += [f"--storage-audience={storage[0]}", f"--storage-scopes={storage[1]}"]
    log_path = work / "provider.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=NODE_DIR)

    def listening() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise HarnessError(
                f"the OIDC provider exited ({process.returncode}) before it was ready:\n"
                + log_path.read_text(errors="replace")
            )
        match = LISTENING.search(log_path.read_text(errors="replace"))
        return json.loads(match.group(1)) if match else None

    def discovery_served(provider: Provider) -> bool:
        listening()  # fails at once if the process has died
        with contextlib.suppress(requests.RequestException):
            return provider.discovery()["issuer"] == provider.issuer
        return False

    try:
        ready: dict[str, Any] = wait_for(listening, "the OIDC provider to listen", timeout)  # type: ignore[assignment]
        provider = Provider(ready["issuer"], ready["port"], process, log_path)
        wait_for(lambda: discovery_served(provider), "the OIDC discovery document", timeout)
        yield provider
    finally:
        stop(process, timeout=10)


class _LoginForm(HTMLParser):
    """Finds the provider's login form: its action, and whether it has a `username` field."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.has_username = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attributes.get("action")
        if tag == "input" and attributes.get("name") == "username":
            self.has_username = True


def _follow(
    session: requests.Session,
    response: requests.Response,
    stop_at: str | None,
    trail: list[str],
    timeout: float,
) -> requests.Response:
    """Follow redirects by hand (so that a redirect to `stop_at` need not be fetched)."""
    for _ in range(30):
        trail.append(f"{response.status_code} {response.request.method} {response.url}")
        if response.status_code not in REDIRECTS:
            return response
        location = urljoin(response.url, response.headers["Location"])
        if stop_at is not None and location.startswith(stop_at):
            return response
        response = session.get(location, allow_redirects=False, timeout=timeout)
    raise HarnessError("too many redirects:\n" + "\n".join(trail))


def login_with_http_client(
    session: requests.Session,
    start_url: str,
    username: str,
    *,
    stop_at: str | None = None,
    timeout: float = 10,
) -> requests.Response:
    """Log in through the provider with an HTTP client, from a URL that leads to it.

    Follows the redirects from `start_url` to the login form, submits `username`, and follows
    the redirects back to the client. Returns the final response; or, if `stop_at` is given,
    the redirect response whose Location starts with it (e.g. the client's redirect URI, when
    no client is listening there: read the code from its Location header).
    """
    trail: list[str] = []
    first = session.get(start_url, allow_redirects=False, timeout=timeout)
    page = _follow(session, first, None, trail, timeout)
    form = _LoginForm()
    form.feed(page.text)
    if page.status_code != 200 or form.action is None or not form.has_username:
        raise HarnessError(
            "expected the provider's login form; got:\n"
            + "\n".join(trail)
            + f"\n{page.text[:2000]}"
        )
    response = session.post(
        urljoin(page.url, form.action),
        data={"username": username},
        allow_redirects=False,
        timeout=timeout,
    )
    if response.status_code == 403:
        raise HarnessError(f"the provider does not know the account {username!r}")
    return _follow(session, response, stop_at, trail, timeout)


def browser_login(
    start_url: str,
    username: str,
    expect: str,
    *,
    screenshot: Path,
    timeout: float = 30,
    ignore_https_errors: bool = False,
    wait_for: str = "",
    steps: Sequence[Mapping[str, str]] = (),
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Log in in headless Chromium (node/browser-login.mjs); returns its JSON result.

    ignore_https_errors: accept a self-signed certificate (the edge's own, in tests/e2e).
    wait_for: a CSS selector to wait for once there (e.g. a notebook's rendered plot).
    steps: then what a person does, in order ({"click"|"wait": selector}, {"screenshot": file}).
    prefix: a command that runs the browser elsewhere (harness.browser_network's namespace).

    The result has ok, final_url, title, status, screenshot, login_page_seen, and error when
    ok is false. Fails the test if Chromium is missing or the script itself crashed.
    """
    ensure_node_modules()
    if not Path(CHROMIUM).exists():
        raise HarnessError(f"{CHROMIUM} is missing: run ci/prereqs (apt-get install chromium)")
    done = subprocess.run(
        [
            *prefix,
            "node",
            str(BROWSER_SCRIPT),
            f"--start-url={start_url}",
            f"--username={username}",
            f"--expect={expect}",
            f"--screenshot={screenshot}",
            f"--timeout={int(timeout * 1000)}",
            f"--chromium={CHROMIUM}",
            *(["--ignore-https-errors"] if ignore_https_errors else []),
            *([f"--wait-for={wait_for}"] if wait_for else []),
            f"--steps={json.dumps(list(steps))}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        output = f"{done.stdout}\n{done.stderr}"
        raise HarnessError(f"browser-login.mjs exited {done.returncode}:\n{output}") from None


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the tests check what the provider put in it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
