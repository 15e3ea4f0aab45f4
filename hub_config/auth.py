"""Login presets: `auth.type` in the chart's values -> an authenticator class and its traits.

Every real preset keeps the provider's tokens in the encrypted auth_state, refreshes them, and
manages JupyterHub groups from a token claim, so allowed and admin groups follow the provider:
a user who leaves the admin group is no admin at their next login.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from hub_config.facility import ConfigError, Facility

# Where the chart puts the OAuth client when it comes from auth.existingSecret.
CLIENT_ID_ENV = "FACILITY_OAUTH_CLIENT_ID"
CLIENT_SECRET_ENV = "FACILITY_OAUTH_CLIENT_SECRET"
# Where the chart puts the provider's CA bundle (auth.oidc.caBundle), when there is one.
OIDC_CA_ENV = "FACILITY_OIDC_CA_FILE"


@dataclass(frozen=True)
class Login:
    """The authenticator to use: its class (by import path) and the traits to set on it."""

    class_path: str
    traits: dict[str, Any]

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[1]


@dataclass(frozen=True)
class Preset:
    """An OAuth preset: the class, where it keeps the user's claims in auth_state, the claim
    that lists groups, and the preset's own traits."""

    class_path: str
    state_key: str
    groups_claim: str
    traits: dict[str, Any]


GENERIC = "oauthenticator.generic.GenericOAuthenticator"


def login(facility: Facility) -> Login:
    auth = facility.values["auth"]
    kind = auth["type"]
    if kind == "dummy":
        return dummy(facility)
    presets = {"cilogon": cilogon, "cern": cern, "oidc": oidc}
    if kind not in presets:
        raise ConfigError(f"auth.type {kind!r} is unknown: use one of cilogon, cern, oidc, dummy")
    preset = presets[kind](auth)
    return Login(preset.class_path, {**oauth_common(facility, preset), **preset.traits})


def dummy(facility: Facility) -> Login:
    if not facility.values.get("devMode"):
        raise ConfigError(
            "auth.type 'dummy' lets anyone in without a password: it is refused unless "
            "devMode is true. Set auth.type to cilogon, cern or oidc (or devMode: true on a "
            "development machine)."
        )
    auth = facility.values["auth"]
    return Login(
        "jupyterhub.auth.DummyAuthenticator",
        {"allow_all": True, "admin_users": set(auth["adminUsers"])},
    )


def cilogon(auth: dict[str, Any]) -> Preset:
    idps = auth["cilogon"]["allowedIdps"]
    if not idps:
        raise ConfigError(
            "auth.cilogon.allowedIdps is empty: name at least one identity provider "
            "(entity id -> username_derivation) that users may log in with"
        )
    return Preset(
        "oauthenticator.cilogon.CILogonOAuthenticator",
        "cilogon_user",
        auth["groupsClaim"] or "isMemberOf",
        {"idps": idps},
    )


def cern(auth: dict[str, Any]) -> Preset:
    issuer = auth["cern"]["issuer"].rstrip("/")
    endpoints = f"{issuer}/protocol/openid-connect"
    traits = {
        "login_service": "CERN SSO",
        "authorize_url": f"{endpoints}/auth",
        "token_url": f"{endpoints}/token",
        "userdata_url": f"{endpoints}/userinfo",
        "logout_redirect_url": f"{endpoints}/logout",
        "username_claim": "cern_upn",
        "scope": ["openid", "profile", "email"],
    }
    return Preset(GENERIC, "oauth_user", auth["groupsClaim"] or "cern_roles", traits)


def oidc(auth: dict[str, Any]) -> Preset:
    settings = auth["oidc"]
    from_id_token = settings["userdataFromIdToken"]
    if from_id_token and settings["userdataUrl"]:
        raise ConfigError(
            "auth.oidc.userdataFromIdToken reads the claims from the ID token, and "
            "auth.oidc.userdataUrl from the userinfo endpoint: set one of them"
        )
    endpoints = {"authorize_url": "authorization_endpoint", "token_url": "token_endpoint"}
    urls = {"authorize_url": settings["authorizeUrl"], "token_url": settings["tokenUrl"]}
    if not from_id_token:
        endpoints["userdata_url"] = "userinfo_endpoint"
        urls["userdata_url"] = settings["userdataUrl"]
    ca_file = os.environ.get(OIDC_CA_ENV, "")
    if not all(urls.values()):
        discovered = discover(settings["issuer"], list(endpoints.values()), ca_file)
        urls = {trait: url or discovered[endpoints[trait]] for trait, url in urls.items()}
    traits: dict[str, Any] = {
        "login_service": "OpenID Connect",
        **urls,
        "username_claim": settings["usernameClaim"],
        "scope": settings["scopes"],
    }
    if from_id_token:
        traits["userdata_from_id_token"] = True
    if ca_file:
        traits["http_request_kwargs"] = {"ca_certs": ca_file}
    return Preset(GENERIC, "oauth_user", auth["groupsClaim"] or "groups", traits)


def discover(issuer: str, needed: list[str], ca_file: str = "") -> dict[str, str]:
    """The issuer's discovery document (OpenID Connect Discovery 1.0), which must name the
    `needed` endpoints; over HTTPS checked against ca_file when given."""
    if not issuer:
        raise ConfigError(
            "auth.oidc.issuer is empty: set it, or all of auth.oidc.authorizeUrl, tokenUrl and "
            "userdataUrl"
        )
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    context = ssl.create_default_context(cafile=ca_file or None)
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        hint = "" if ca_file else " (a private CA: set auth.oidc.caBundle)"
        raise ConfigError(
            f"auth.oidc.issuer: cannot read the discovery document {url}: {error}"
            + (hint if "CERTIFICATE_VERIFY_FAILED" in str(error) else "")
        ) from error
    missing = [key for key in needed if key not in document]
    if missing:
        raise ConfigError(f"auth.oidc.issuer: {url} lacks {', '.join(missing)}")
    return document


def oauth_common(facility: Facility, preset: Preset) -> dict[str, Any]:
    """Traits every OAuth preset shares: client, callback, groups, tokens, the denial page."""
    auth = facility.values["auth"]
    client_id = auth["clientId"] or os.environ.get(CLIENT_ID_ENV, "")
    client_secret = auth["clientSecret"] or os.environ.get(CLIENT_SECRET_ENV, "")
    if not client_id or not client_secret:
        raise ConfigError(
            f"auth.type {auth['type']!r} needs the OAuth client: set auth.clientId and "
            "auth.clientSecret, or auth.existingSecret (keys client-id and client-secret)"
        )
    host = facility.values["edge"]["host"]
    callback = auth["callbackUrl"] or (f"https://{host}/hub/oauth_callback" if host else "")
    if not callback:
        raise ConfigError("edge.host (or auth.callbackUrl) is required for the OAuth callback URL")
    allowed_groups = set(auth["allowedGroups"])
    allowed_users = set(auth["allowedUsers"])
    return {
        "client_id": client_id,
        "client_secret": client_secret,
        "oauth_callback_url": callback,
        "enable_auth_state": True,
        "refresh_pre_spawn": True,
        "auth_refresh_age": auth["refreshAge"],
        "manage_groups": True,
        "auth_state_groups_key": f"{preset.state_key}.{preset.groups_claim}",
        "allowed_groups": allowed_groups,
        "admin_groups": set(auth["adminGroups"]),
        "allowed_users": allowed_users,
        "admin_users": set(auth["adminUsers"]),
        # Nobody named: anyone the provider vouches for (for CILogon, per idps' rules).
        "allow_all": not (allowed_groups or allowed_users),
        "custom_403_message": auth["deniedMessage"]
        or denied_message(allowed_groups, preset.groups_claim),
    }


def denied_message(groups: set[str], claim: str) -> str:
    return (
        "Your login worked, but this facility is open only to members of "
        f"{', '.join(sorted(groups)) or 'listed users'} (read from the '{claim}' claim of your "
        "identity provider), and your identity does not show that membership. Ask the "
        "facility's administrators to add you, then log in again."
    )
