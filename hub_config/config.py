"""The whole hub configuration, from the facility's values: what jupyterhub_config.py calls."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from traitlets.config import Config

from hub_config import logs, passthrough, services
from hub_config.auth import login
from hub_config.facility import Facility, load
from hub_config.spawner import spawner

DATA_DIR = Path("/srv/jupyterhub")


def configure(c: Config, facility: Facility) -> None:
    """Set every trait the facility needs on c; hub.config comes last and may override."""
    hub = facility.values["hub"]
    ns = facility.namespace
    names = facility.release["names"]

    # The hub listens for the proxy and the user servers; the proxy is its own Deployment.
    c.JupyterHub.hub_bind_url = f"http://:{hub['port']}"
    c.JupyterHub.hub_connect_url = f"http://{names['hub']}.{ns}:{hub['port']}"
    c.ConfigurableHTTPProxy.should_start = False
    proxy_api_port = facility.values["proxy"]["apiPort"]
    c.ConfigurableHTTPProxy.api_url = f"http://{names['proxyApi']}.{ns}:{proxy_api_port}"
    # Users' servers outlive a hub restart or upgrade.
    c.JupyterHub.cleanup_servers = False
    if hub["db"]["type"] == "url":
        c.JupyterHub.db_url = hub["db"]["url"]
    else:
        c.JupyterHub.db_url = f"sqlite:///{DATA_DIR / 'jupyterhub.sqlite'}"

    chosen = login(facility)
    c.JupyterHub.authenticator_class = chosen.class_path
    for trait, value in chosen.traits.items():
        c[chosen.class_name][trait] = value

    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    for trait, value in spawner(facility).items():
        c.KubeSpawner[trait] = value

    passthrough.apply(c, hub["config"])

    # The facility's services come on top of any the site adds through hub.config; the token
    # service runs beside the hub, wherever the hub is reached.
    hub_host = urlparse(c.JupyterHub.hub_connect_url).hostname or "127.0.0.1"
    all_services = list(c.JupyterHub.get("services", []))
    all_roles = list(c.JupyterHub.get("load_roles", []))
    for more_services, more_roles in (services.idle_culler(facility),
                                      services.tokens(facility, hub_host),
                                      services.dask(facility),
                                      services.metrics(facility)):  # fmt: skip
        all_services += more_services
        all_roles += more_roles
    c.JupyterHub.services = all_services
    c.JupyterHub.load_roles = services.user_role(all_roles)


def load_config(c: Config) -> None:
    """The entry point of the hub image's jupyterhub_config.py, in the hub's own process."""
    configure(c, load(Path(os.environ.get("FACILITY_CONFIG_DIR", "/etc/facility"))))
    logs.quiet_routine()
