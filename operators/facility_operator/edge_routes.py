"""The edge's Dask routes, served to Traefik's HTTP provider (operators/README.md, "Edge").

The edge is internet-facing, so it holds no Kubernetes credential: instead of watching the API
server (Traefik's CRD provider lists every Secret of the namespaces it serves), it polls this
small HTTP endpoint of the operator for its dynamic configuration. The operator keeps one SNI
route per live DaskCluster, from its own watch: a TCP router `HostSNI(<id>.<domain>)` on the
public entrypoint, TLS passed through to the cluster's scheduler Service, which terminates it.

Only the edge may reach the endpoint (the chart's NetworkPolicies); what it serves is no
secret: cluster names and Service addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from facility_client.contract import SCHEDULER_PORT

from facility_operator import resources as res
from facility_operator.settings import Settings

PATH = "/routes"


def sni_router(sni: str, service: str) -> dict[str, Any]:
    """A TCP router that passes the TLS connection for `sni` through to `service`."""
    return {
        "entryPoints": [res.EDGE_ENTRYPOINT],
        "rule": f"HostSNI(`{sni}`)",
        "service": service,
        "tls": {"passthrough": True},
    }


def traefik_config(schedulers: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """Traefik's dynamic configuration for {cluster id: (SNI name, scheduler host:port)}."""
    if not schedulers:
        return {}
    return {
        "tcp": {
            "routers": {
                cid: sni_router(sni, res.scheduler_name({"metadata": {"name": cid}}))
                for cid, (sni, _) in sorted(schedulers.items())
            },
            "services": {
                res.scheduler_name({"metadata": {"name": cid}}): {
                    "loadBalancer": {"servers": [{"address": address}]}
                }
                for cid, (_, address) in sorted(schedulers.items())
            },
        }
    }


@dataclass
class EdgeRoutes:
    """The route of every DaskCluster of the namespace that is not being deleted."""

    settings: Settings
    schedulers: dict[str, tuple[str, str]] = field(default_factory=dict)

    def observe(self, body: Mapping[str, Any], deleted: bool) -> None:
        """A watch event of a DaskCluster: its route is there while the cluster lives."""
        cluster_id = res.cluster_id(body)
        if deleted or body["metadata"].get("deletionTimestamp"):
            self.schedulers.pop(cluster_id, None)
            return
        service = f"{res.scheduler_name(body)}.{body['metadata']['namespace']}.svc"
        self.schedulers[cluster_id] = (
            res.sni_host(self.settings, cluster_id),
            f"{service}:{SCHEDULER_PORT}",
        )

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Every route from a fresh listing (at start, and with each sweep: an event the watch
        missed leaves no route behind for long)."""
        self.schedulers.clear()
        for body in bodies:
            self.observe(body, deleted=False)

    def config(self) -> dict[str, Any]:
        return traefik_config(self.schedulers)

    def app(self) -> web.Application:
        """GET /routes: the configuration, as Traefik's HTTP provider reads it (JSON)."""

        async def routes(_: web.Request) -> web.Response:
            return web.json_response(self.config())

        app = web.Application()
        app.router.add_get(PATH, routes)
        return app
