"""Hub services the facility runs, each with a role of the least scopes it needs."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from hub_config import token_service
from hub_config.facility import ConfigError, Facility

Services = tuple[list[dict[str, Any]], list[dict[str, Any]]]

# The services' names: each accepts only tokens that carry access:services!service=<its name>
# (the operator's facility_operator.api.SERVICE_NAME is the first).
DASK_SERVICE = "dask"
TOKENS_SERVICE = token_service.NAME
USER_SERVICE_SCOPES = [f"access:services!service={name}" for name in (DASK_SERVICE, TOKENS_SERVICE)]
# A user's server token: JupyterHub's own server role, and the two services. A token that the
# server gets for a visitor (an admin opening it, or shared access) has neither.
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server", *USER_SERVICE_SCOPES]


def user_role(roles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The roles with JupyterHub's "user" role also granting the two services (a site's own
    "user" role keeps its scopes, and gains these)."""
    user = next((role for role in roles if role.get("name") == "user"), None)
    if user is None:
        return [*roles, {"name": "user", "scopes": ["self", *USER_SERVICE_SCOPES]}]
    user["scopes"] = list(dict.fromkeys([*user.get("scopes", ["self"]), *USER_SERVICE_SCOPES]))
    return roles


# What jupyterhub-idle-culler needs to find idle servers and stop them, and nothing more
# (it culls servers, never users).
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def idle_culler(facility: Facility) -> Services:
    """The idle culler as (services, roles), or nothing when culler.enabled is false."""
    culler = facility.values["culler"]
    if not culler["enabled"]:
        return [], []
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={culler['timeout']}",
        f"--cull-every={culler['every']}",
        f"--max-age={culler['maxAge']}",
    ]
    service = {"name": "idle-culler", "command": command}
    role = {"name": "idle-culler", "scopes": CULLER_SCOPES, "services": ["idle-culler"]}
    return [service], [role]


def tokens(facility: Facility, hub_host: str) -> Services:
    """The token service (hub_config.token_service), beside the hub on hub.tokenServicePort."""
    port = facility.values["hub"]["tokenServicePort"]
    service = {
        "name": TOKENS_SERVICE,
        "url": f"http://{hub_host}:{port}",
        "command": [sys.executable, "-m", "hub_config.token_service"],
        "display": False,
    }
    role = {"name": "tokens", "scopes": token_service.SCOPES, "services": [TOKENS_SERVICE]}
    return [service], [role]


# The site's Prometheus, as a service whose token reads the hub's /hub/metrics and nothing else
# (JupyterHub asks for a token there: authenticate_prometheus). The chart's hub Deployment puts
# the token of metrics.hub.tokenSecret in METRICS_TOKEN_ENV.
METRICS_SERVICE = "metrics"
METRICS_SCOPES = ["read:metrics"]
METRICS_TOKEN_ENV = "FACILITY_METRICS_TOKEN"


def metrics(facility: Facility, environ: Mapping[str, str] = os.environ) -> Services:
    """The scraper's service and role, or nothing when metrics.hub.tokenSecret is empty (then a
    scrape without a token is refused; letting it through would make /hub/metrics public, as
    the proxy routes /hub/ from the edge)."""
    secret = facility.values["metrics"]["hub"]["tokenSecret"]
    if not secret:
        return [], []
    token = environ.get(METRICS_TOKEN_ENV, "")
    if len(token) < 8:  # JupyterHub's own minimum for a service's token
        raise ConfigError(
            f"metrics.hub.tokenSecret: the key 'token' of Secret {secret!r} must hold the "
            f"scraper's API token, 8 characters or more (the hub reads it as ${METRICS_TOKEN_ENV})"
        )
    service = {"name": METRICS_SERVICE, "api_token": token, "display": False}
    role = {"name": METRICS_SERVICE, "scopes": METRICS_SCOPES, "services": [METRICS_SERVICE]}
    return [service], [role]


def operator_url(facility: Facility) -> str:
    """The operator's user API inside the cluster (FACILITY_OPERATOR_URL in the notebooks)."""
    port = facility.values["operator"]["apiPort"]
    return f"http://{facility.name('operator')}.{facility.namespace}:{port}"


def dask(facility: Facility) -> Services:
    """The operator's user API (facility_operator.api) as the service "dask", so the hub's proxy
    also routes /services/dask/ to it. It needs no role: it asks the hub who a token is with
    that token itself, which any token may do, and finds the token's scopes in the answer."""
    if not facility.values["operator"]["enabled"]:
        return [], []
    return [{"name": DASK_SERVICE, "url": operator_url(facility), "display": False}], []
