"""hub_config: chart values -> JupyterHub configuration, checked on the real classes."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jupyterhub.scopes import scope_definitions
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from oauthenticator.cilogon import CILogonOAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from traitlets.config import Config

from harness.chart import merge_values
from harness.paths import CHART
from harness.pki import Pki
from hub_config.config import configure
from hub_config.facility import ConfigError, Facility

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
RELEASE = {
    "name": "af",
    "namespace": "facility",
    "appVersion": "0.1.0",
    "names": {
        name: f"af-facility-{suffix}"
        for name, suffix in {
            "hub": "hub", "hubSecret": "hub-secret", "proxyApi": "proxy-api",
            "proxyHttp": "proxy-http", "edge": "edge", "operator": "operator", "xcache": "xcache",
        }.items()
    },
}  # fmt: skip
CLIENT = {"clientId": "facility", "clientSecret": "s3cret"}
EDGE = {"edge": {"host": "af.example.org", "dask": {"domain": "dask.af.example.org"}}}


def build(override: dict[str, Any]) -> Config:
    c = Config()
    configure(c, Facility(values=merge_values(DEFAULTS, override), release=RELEASE))
    return c


@pytest.fixture(autouse=True)
def crypt_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # auth_state needs its key, as the chart's hub Deployment provides it.
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "00" * 32)


def test_dummy_login_needs_dev_mode() -> None:
    with pytest.raises(ConfigError, match="devMode"):
        build({})
    c = build({"devMode": True})
    assert c.JupyterHub.authenticator_class == "jupyterhub.auth.DummyAuthenticator"


def test_cilogon_preset() -> None:
    idps = {"urn:mace:incommon:unl.edu": {"username_derivation": {"username_claim": "eppn"}}}
    groups = {"allowedGroups": ["cms-af"], "adminGroups": ["cms-af-admins"]}
    c = build(
        {**EDGE, "auth": {"type": "cilogon", **CLIENT, "cilogon": {"allowedIdps": idps}, **groups}}
    )
    assert c.JupyterHub.authenticator_class == "oauthenticator.cilogon.CILogonOAuthenticator"
    auth = CILogonOAuthenticator(config=c)
    assert auth.idps["urn:mace:incommon:unl.edu"]["username_derivation"] == {
        "username_claim": "eppn"
    }
    assert {"openid", "org.cilogon.userinfo"} <= set(auth.scope)
    assert auth.oauth_callback_url == "https://af.example.org/hub/oauth_callback"
    assert auth.manage_groups
    assert auth.enable_auth_state
    assert auth.refresh_pre_spawn
    assert auth.auth_state_groups_key == "cilogon_user.isMemberOf"
    assert auth.allowed_groups == {"cms-af"}
    assert auth.admin_groups == {"cms-af-admins"}
    assert not auth.allow_all
    assert "cms-af" in auth.custom_403_message
    assert "isMemberOf" in auth.custom_403_message


def test_cilogon_needs_identity_providers() -> None:
    with pytest.raises(ConfigError, match=r"auth\.cilogon\.allowedIdps"):
        build({**EDGE, "auth": {"type": "cilogon", **CLIENT}})


def test_cern_preset() -> None:
    c = build({**EDGE, "auth": {"type": "cern", **CLIENT, "allowedGroups": ["af-users"]}})
    auth = GenericOAuthenticator(config=c)
    realm = "https://auth.cern.ch/auth/realms/cern/protocol/openid-connect"
    assert auth.authorize_url == f"{realm}/auth"
    assert auth.token_url == f"{realm}/token"
    assert auth.userdata_url == f"{realm}/userinfo"
    assert auth.username_claim == "cern_upn"
    assert auth.auth_state_groups_key == "oauth_user.cern_roles"
    assert auth.login_service == "CERN SSO"


def discovery_handler(scheme: str) -> type[BaseHTTPRequestHandler]:
    """A discovery document's server, for an issuer at scheme://127.0.0.1:<port>."""

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
            found = self.path == "/.well-known/openid-configuration"
            body = json.dumps({
                "issuer": base, "authorization_endpoint": f"{base}/auth",
                "token_endpoint": f"{base}/token", "userinfo_endpoint": f"{base}/me",
            }).encode()  # fmt: skip
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(body if found else b"")

        def log_message(self, *args: Any) -> None:
            pass

    return Discovery


@pytest.fixture
def issuer() -> Iterator[str]:
    """A real HTTP server with a discovery document."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), discovery_handler("http"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_oidc_endpoints_from_discovery(issuer: str) -> None:
    c = build({**EDGE, "auth": {"type": "oidc", **CLIENT, "oidc": {"issuer": issuer},
                                "groupsClaim": "wlcg.groups"}})  # fmt: skip
    auth = GenericOAuthenticator(config=c)
    assert (auth.authorize_url, auth.token_url) == (f"{issuer}/auth", f"{issuer}/token")
    assert auth.userdata_url == f"{issuer}/me"
    assert auth.auth_state_groups_key == "oauth_user.wlcg.groups"
    assert auth.allow_all  # no allowed groups or users: anyone the issuer vouches for
    assert auth.username_claim == "sub"  # unique and stable, unlike preferred_username


def test_oidc_claims_from_the_id_token(issuer: str) -> None:
    """A provider whose access tokens are WLCG storage tokens: the claims come from the ID token
    (its userinfo endpoint would refuse such a token), so no userinfo URL is set."""
    oidc = {"issuer": issuer, "userdataFromIdToken": True}
    auth = GenericOAuthenticator(
        config=build({**EDGE, "auth": {"type": "oidc", **CLIENT, "oidc": oidc}})
    )
    assert auth.userdata_from_id_token is True
    assert auth.userdata_url == ""
    assert auth.token_url == f"{issuer}/token"


def test_oidc_userinfo_and_id_token_together_are_refused(issuer: str) -> None:
    oidc = {"issuer": issuer, "userdataFromIdToken": True, "userdataUrl": f"{issuer}/me"}
    with pytest.raises(ConfigError, match=r"userdataFromIdToken .*auth\.oidc\.userdataUrl"):
        build({**EDGE, "auth": {"type": "oidc", **CLIENT, "oidc": oidc}})


def test_oidc_issuer_behind_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS with a site's own CA: without auth.oidc.caBundle the discovery fails and says
    to set it; with it (the file the chart mounts) discovery works, and the authenticator's
    requests (token, refresh) check the provider against the same CA."""
    pki = Pki()
    cert, key = pki.issue(["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(pki.pem)
    server = ThreadingHTTPServer(("127.0.0.1", 0), discovery_handler("https"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    https = f"https://127.0.0.1:{server.server_address[1]}"
    values = {**EDGE, "auth": {"type": "oidc", **CLIENT, "oidc": {"issuer": https}}}
    try:
        with pytest.raises(ConfigError, match=r"CERTIFICATE_VERIFY_FAILED.*auth\.oidc\.caBundle"):
            build(values)
        monkeypatch.setenv("FACILITY_OIDC_CA_FILE", str(tmp_path / "ca.crt"))
        auth = GenericOAuthenticator(config=build(values))
        assert auth.token_url == f"{https}/token"
        assert auth.http_request_kwargs == {"ca_certs": str(tmp_path / "ca.crt")}
    finally:
        server.shutdown()


def test_oidc_unreachable_issuer_is_named() -> None:
    with pytest.raises(ConfigError, match=r"auth\.oidc\.issuer: cannot read"):
        build(
            {**EDGE, "auth": {"type": "oidc", **CLIENT, "oidc": {"issuer": "http://127.0.0.1:9"}}}
        )


def test_real_login_needs_the_client() -> None:
    with pytest.raises(ConfigError, match=r"auth\.clientId"):
        build({**EDGE, "auth": {"type": "cern"}})


def test_client_from_existing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACILITY_OAUTH_CLIENT_ID", "from-secret")
    monkeypatch.setenv("FACILITY_OAUTH_CLIENT_SECRET", "also-from-secret")
    c = build({**EDGE, "auth": {"type": "cern", "existingSecret": "cern-client"}})
    assert GenericOAuthenticator(config=c).client_id == "from-secret"


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner reads a kubeconfig when it is made; nothing here talks to the API server."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "unit",
        "clusters": [{"name": "unit", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "unit", "user": {"token": "unused"}}],
        "contexts": [{"name": "unit", "context": {"cluster": "unit", "user": "unit"}}],
    }))  # fmt: skip
    # (kubernetes_asyncio read $KUBECONFIG when it was imported, so point it there directly.)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def spawner(c: Config) -> KubeSpawner:
    """A KubeSpawner as the hub makes it (inside an event loop), to read its traits."""

    async def make() -> KubeSpawner:
        return KubeSpawner(config=c, _mock=True)

    return asyncio.run(make())


def test_user_pods(kubeconfig: None) -> None:
    c = build({"devMode": True, **EDGE})
    pod = spawner(c)
    assert pod.namespace == "facility"
    assert pod.image == "facility/analysis:0.1.0"
    # JupyterHub's single-user server, not the image's CMD (a JupyterLab outside the hub).
    assert pod.cmd == ["jupyterhub-singleuser"]
    assert (pod.uid, pod.fs_gid) == (1000, 100)
    assert pod.automount_service_account_token is False
    assert pod.allow_privilege_escalation is False
    assert pod.pvc_name_template == "home-{username}"
    assert pod.storage_pvc_ensure
    assert not pod.delete_pvc
    assert (pod.cpu_guarantee, pod.cpu_limit, pod.mem_limit) == (0.5, 2.0, 4 * 10**9)
    assert pod.extra_labels["app.kubernetes.io/component"] == "singleuser-server"
    assert pod.environment["FACILITY_DASK_DOMAIN"] == "dask.af.example.org"
    assert pod.environment["FACILITY_OPERATOR_URL"] == "http://af-facility-operator.facility:8000"
    # FacilityCluster() in a notebook dials the edge by its Service (no wildcard DNS needed).
    assert pod.environment["FACILITY_EDGE_HOST"] == "af-facility-edge.facility.svc"
    assert "FACILITY_XCACHE" not in pod.environment  # no XCache in these values
    xcache = {"enabled": True, "port": 11094, "origin": {"host": "origin.example.org"}}
    cached = build({"devMode": True, "xcache": xcache})
    assert cached.KubeSpawner.environment["FACILITY_XCACHE"] == (
        "root://af-facility-xcache.facility:11094"
    )
    assert "X509_CERT_FILE" not in cached.KubeSpawner.environment  # no TLS: no CA to trust
    assert set(cached.KubeSpawner.volumes) == {"home"}
    # XCache over TLS: its CA (ca.crt alone, not the key) is where the XRootD client looks.
    over_tls = build({"devMode": True, "xcache": {**xcache, "tls": {"secretName": "xc-tls"}}})
    served = over_tls.KubeSpawner
    assert served.environment["X509_CERT_FILE"] == "/etc/facility/xcache-ca/ca.crt"
    assert served.volumes["xcache-ca"]["secret"] == {
        "secretName": "xc-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }  # fmt: skip
    assert served.volume_mounts["xcache-ca"]["mountPath"] == "/etc/facility/xcache-ca"
    assert set(served.volumes) == {"home", "xcache-ca"}
    tokens = "http://af-facility-proxy-http.facility:8000/services/tokens/"
    assert pod.environment["FACILITY_TOKENS_URL"] == tokens


PROFILES = [
    {"name": "Small", "default": True, "cpu": {"guarantee": 1, "limit": 2}},
    {"name": "GPU", "gpus": 1, "groups": ["gpu-users"],
     "memory": {"guarantee": "8G", "limit": "16G"},
     "image": {"repository": "facility/analysis-gpu", "tag": "1"},
     "nodeSelector": {"gpu": "true"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]},
]  # fmt: skip


def test_profiles_follow_groups() -> None:
    c = build({"devMode": True, "singleuser": {"profiles": PROFILES}})
    visible = c.KubeSpawner.profile_list

    def user_in(*groups: str) -> SimpleNamespace:
        return SimpleNamespace(
            user=SimpleNamespace(groups=[SimpleNamespace(name=g) for g in groups])
        )

    assert [p["display_name"] for p in visible(user_in())] == ["Small"]
    gpu = visible(user_in("gpu-users"))[1]
    override = gpu["kubespawner_override"]
    assert override["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert override["image"] == "facility/analysis-gpu:1"
    assert (override["mem_guarantee"], override["mem_limit"]) == (8 * 10**9, 16 * 10**9)
    assert override["node_selector"] == {"gpu": "true"}


def test_impossible_profile_is_named() -> None:
    bad = [{"name": "Broken", "cpu": {"guarantee": 8, "limit": 4}}]
    with pytest.raises(ConfigError, match=r"singleuser\.profiles\[0\] \(Broken\)\.cpu"):
        build({"devMode": True, "singleuser": {"profiles": bad}})


def test_passthrough_sets_traits_and_names_mistakes(kubeconfig: None) -> None:
    c = build({"devMode": True, "hub": {"config": {"KubeSpawner": {"start_timeout": 42}}}})
    assert spawner(c).start_timeout == 42
    with pytest.raises(ConfigError, match=r"hub\.config\.Kubespawner: Kubespawner is not"):
        build({"devMode": True, "hub": {"config": {"Kubespawner": {"start_timeout": 1}}}})
    with pytest.raises(ConfigError, match=r"hub\.config\.KubeSpawner\.cpu_limt"):
        build({"devMode": True, "hub": {"config": {"KubeSpawner": {"cpu_limt": 1}}}})


def test_idle_culler_has_the_least_scopes() -> None:
    c = build({"devMode": True, "culler": {"timeout": 1800}})
    services = {s["name"]: s for s in c.JupyterHub.services}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "--timeout=1800" in services["idle-culler"]["command"]
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert set(roles["idle-culler"]["scopes"]) == {
        "list:users", "read:users:activity", "read:servers", "delete:servers"
    }  # fmt: skip
    for role in roles.values():
        assert all(scope.split("!")[0] in scope_definitions for scope in role["scopes"])
    disabled = build({"devMode": True, "culler": {"enabled": False}})
    assert [s["name"] for s in disabled.JupyterHub.services] == ["tokens", "dask"]


def test_token_service_beside_the_hub() -> None:
    c = build({"devMode": True})
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "tokens"]
    assert service["url"] == "http://af-facility-hub.facility:10101"
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "tokens"]
    assert set(role["scopes"]) == {"read:users:name", "admin:auth_state"}


def test_site_services_are_kept() -> None:
    mine = {"name": "monitor", "api_token": "x" * 32}
    c = build({"devMode": True, "hub": {"config": {"JupyterHub": {"services": [mine]}}}})
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["monitor", "idle-culler", "tokens", "dask"]


def test_the_scraper_reads_the_hubs_metrics_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.hub.tokenSecret: the site's Prometheus is a service whose token (from the chart's
    FACILITY_METRICS_TOKEN) has read:metrics and nothing else; without it, no such service, and
    JupyterHub keeps asking for a token at /hub/metrics (which the edge would otherwise serve)."""
    assert "metrics" not in [s["name"] for s in build({"devMode": True}).JupyterHub.services]
    assert build({"devMode": True}).JupyterHub.get("authenticate_prometheus", True) is True
    with_secret = {"devMode": True, "metrics": {"hub": {"tokenSecret": "prom-token"}}}
    with pytest.raises(ConfigError, match=r"metrics\.hub\.tokenSecret: .* Secret 'prom-token'"):
        build(with_secret)
    monkeypatch.setenv("FACILITY_METRICS_TOKEN", "t" * 32)
    c = build(with_secret)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "metrics"]
    assert service["api_token"] == "t" * 32
    # The scraper runs elsewhere: the hub neither starts nor routes to it.
    assert "url" not in service
    assert "command" not in service
    (role,) = [r for r in c.JupyterHub.load_roles if "metrics" in r.get("services", [])]
    assert role["scopes"] == ["read:metrics"]
    assert "read:metrics" in scope_definitions


def test_dask_service_is_the_operator() -> None:
    c = build({"devMode": True})
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "dask"]
    assert service["url"] == "http://af-facility-operator.facility:8000"
    assert c.KubeSpawner.environment["FACILITY_OPERATOR_URL"] == service["url"]
    assert not [r for r in c.JupyterHub.load_roles if "dask" in r.get("services", [])]
    off = build({"devMode": True, "operator": {"enabled": False}})
    assert "dask" not in [s["name"] for s in off.JupyterHub.services]


def test_users_and_their_servers_reach_the_services_and_visitors_do_not() -> None:
    """Every user's role grants the two services; the server's own token asks for exactly those
    and JupyterHub's server scopes (a token it gets for a visitor has none of them), and the
    service names are the ones the operator and the token service check."""
    from facility_operator.api import SERVICE_NAME

    from hub_config import token_service

    c = build({"devMode": True})
    (user,) = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert user["scopes"] == [
        "self", "access:services!service=dask", "access:services!service=tokens"
    ]  # fmt: skip
    assert c.KubeSpawner.server_token_scopes == [
        "users:activity!user", "access:servers!server",
        "access:services!service=dask", "access:services!service=tokens",
    ]  # fmt: skip
    names = {s["name"] for s in c.JupyterHub.services}
    assert {SERVICE_NAME, token_service.NAME} <= names
    # A site's own "user" role keeps its scopes and gains the services.
    site_role = {"name": "user", "scopes": ["self", "read:groups"]}
    mine = build({"devMode": True, "hub": {"config": {"JupyterHub": {"load_roles": [site_role]}}}})
    (user,) = [r for r in mine.JupyterHub.load_roles if r["name"] == "user"]
    assert user["scopes"] == [
        "self", "read:groups", "access:services!service=dask", "access:services!service=tokens"
    ]  # fmt: skip
