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
    """The route of every DaskCluster of the namespace that is not being deleted: kept from the
    operator's watch events, and checked against a fresh listing now and then."""

    settings: Settings
    schedulers: dict[str, tuple[str, str]] = field(default_factory=dict)
    # When each cluster's latest event came (a count of events), so that a listing taken
    # before an event does not undo it.
    _clock: int = 0
    _last_event: dict[str, int] = field(default_factory=dict)

    def _route(self, body: Mapping[str, Any]) -> tuple[str, str]:
        cluster_id = res.cluster_id(body)
        service = f"{res.scheduler_name(body)}.{body['metadata']['namespace']}.svc"
        return res.sni_host(self.settings, cluster_id), f"{service}:{SCHEDULER_PORT}"

    @staticmethod
    def _live(body: Mapping[str, Any]) -> bool:
        return not body["metadata"].get("deletionTimestamp")

    def observe(self, body: Mapping[str, Any], deleted: bool) -> None:
        """A watch event of a DaskCluster: its route is there while the cluster lives."""
        cluster_id = res.cluster_id(body)
        self._clock += 1
        self._last_event[cluster_id] = self._clock
        if deleted or not self._live(body):
            self.schedulers.pop(cluster_id, None)
        else:
            self.schedulers[cluster_id] = self._route(body)

    def mark(self) -> int:
        """Call before taking a listing for replace()."""
        return self._clock

    def replace(self, bodies: Iterable[Mapping[str, Any]], mark: int) -> None:
        """Every route from a listing taken after `mark` (at start, and with each sweep: an
        event the watch missed leaves no route behind for long); a cluster with an event
        since `mark` keeps what its event said."""
        listed = {res.cluster_id(body): body for body in bodies if self._live(body)}
        newer = {cid for cid, at in self._last_event.items() if at > mark}
        for cluster_id in set(self.schedulers) - set(listed) - newer:
            del self.schedulers[cluster_id]
        for cluster_id, body in listed.items():
            if cluster_id not in newer:
                self.schedulers[cluster_id] = self._route(body)
        self._last_event = {cid: at for cid, at in self._last_event.items() if at > mark}

    def config(self) -> dict[str, Any]:
        return traefik_config(self.schedulers)

    def app(self) -> web.Application:
        """GET /routes: the configuration, as Traefik's HTTP provider reads it (JSON)."""

        async def routes(_: web.Request) -> web.Response:
            return web.json_response(self.config())

        app = web.Application()
        app.router.add_get(PATH, routes)
        return app
