"""The operator's Prometheus metrics, served on a port of their own (operator.metricsPort).

What exists (clusters, workers, usage) is read at scrape time from the operator's own state, so
it cannot drift from it: the DaskClusters as the operator's watch last saw them (ClusterIndex:
their phase, and their workers' states as the worker controller wrote them into the status)
and the usage ledger (usage.py). What happens (API requests, errors, refusals, removals) is
counted where it happens.

Labels stay bounded: `user` where it makes sense (a site has hundreds of users), no cluster
label, API routes by aiohttp's pattern (`/clusters/{id}`), never the path, and any method but
the usual HTTP ones as "other". Each registry is its own (not prometheus_client's global one),
so that tests and several apps in one process do not share counters.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from facility_operator import resources as res
from facility_operator.backends.base import PENDING
from facility_operator.usage import UsageLedger
from facility_operator.workers import CONNECTED, STARTING

PATH = "/metrics"
UNMATCHED = "unmatched"  # the route of a request that matched none (404, 405)
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The worker controller's states of a live worker (WorkerController.status, workerStates).
WORKER_STATES = (PENDING, STARTING, CONNECTED)
# What facility_operator_reconcile_errors_total's handler label names.
HANDLERS = {
    "reconcile": "making a cluster's objects",
    "workers": "managing a cluster's workers",
    "status": "writing a cluster's status",
    "delete": "removing a deleted cluster's workers",
    "sweep": "removing the workers of gone clusters",
    "routes": "listing the clusters for the edge's routes",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One DaskCluster as the watch last saw it."""

    owner: str
    backend: str
    phase: str
    worker_states: Mapping[str, int]  # by WORKER_STATES


class ClusterIndex:
    """Every DaskCluster of the namespace, from the operator's watch (handlers.route_cluster),
    pruned by the sweep's listing (a deletion the watch missed counts for one sweep at most)."""

    def __init__(self) -> None:
        self.clusters: dict[str, Seen] = {}
        # A count of events, and each cluster's latest: a listing taken before an event does
        # not undo it (as EdgeRoutes).
        self._clock = 0
        self._last_event: dict[str, int] = {}

    def mark(self) -> int:
        """Call before taking a listing for prune()."""
        return self._clock

    def prune(self, bodies: Iterable[Mapping[str, Any]], mark: int) -> None:
        """Forget the clusters that a listing taken after `mark` lacks, but those with an
        event since."""
        listed = {res.cluster_key(body) for body in bodies}
        for key in set(self.clusters) - listed:
            if self._last_event.get(key, 0) <= mark:
                del self.clusters[key]
        self._last_event = {k: at for k, at in self._last_event.items() if at > mark}

    def observe(self, body: Mapping[str, Any], deleted: bool) -> None:
        key = res.cluster_key(body)
        self._clock += 1
        self._last_event[key] = self._clock
        if deleted:
            self.clusters.pop(key, None)
            return
        spec, status = body.get("spec") or {}, body.get("status") or {}
        states = status.get("workerStates") or {}
        self.clusters[key] = Seen(
            owner=str(spec.get("owner", "")),
            backend=str(spec.get("backend", "")),
            phase=str(status.get("phase") or "Pending"),
            worker_states={state: int(states.get(state, 0)) for state in WORKER_STATES},
        )


class StateCollector(Collector):
    """The gauges of what exists and the usage totals, computed when Prometheus scrapes."""

    def __init__(self, index: ClusterIndex, ledger: UsageLedger) -> None:
        self.index = index
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        yield self._clusters()
        yield self._workers()
        yield from self._usage()

    def _clusters(self) -> Metric:
        family = GaugeMetricFamily(
            "facility_dask_clusters",
            "DaskClusters by phase (Pending, Running, Failed, Ending) and owner.",
            labels=["phase", "user"],
        )
        counts = collections.Counter((s.phase, s.owner) for s in self.index.clusters.values())
        for (phase, user), count in sorted(counts.items()):
            family.add_metric([phase, user], count)
        return family

    def _workers(self) -> Metric:
        """Only the workers of Running clusters: the controller manages (and counts) no others."""
        family = GaugeMetricFamily(
            "facility_dask_workers",
            "Live workers of Running clusters by state (pending: queued; starting: running, "
            "not connected yet; connected: known to the scheduler) and backend.",
            labels=["state", "backend"],
        )
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for seen in self.index.clusters.values():
            if seen.phase != "Running":
                continue
            for state in WORKER_STATES:
                counts[(state, seen.backend)] += seen.worker_states.get(state, 0)
        for (state, backend), count in sorted(counts.items()):
            family.add_metric([state, backend], count)
        return family

    def _usage(self) -> Iterator[Metric]:
        doc = (
            "{what} of the user's running workers since the facility began counting, once in "
            'each of the user\'s groups (group="": in none). Sum by group, not over groups.'
        )
        cores = CounterMetricFamily(
            "facility_usage_core_seconds",
            doc.format(what="Cores times seconds"),
            labels=["user", "group"],
        )
        workers = CounterMetricFamily(
            "facility_usage_worker_seconds",
            doc.format(what="Seconds"),
            labels=["user", "group"],
        )
        for (user, group), used in sorted(self.ledger.by_group.items()):
            cores.add_metric([user, group], used.core_seconds)
            workers.add_metric([user, group], used.worker_seconds)
        yield cores
        yield workers


class OperatorMetrics:
    """The operator's registry and the counters its parts increment."""

    def __init__(self, index: ClusterIndex, ledger: UsageLedger) -> None:
        self.registry = CollectorRegistry()
        self.api_requests = Counter(
            "facility_operator_api_requests",
            "Requests to the users' API by route pattern, method and answer status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.api_duration = Histogram(
            "facility_operator_api_request_duration_seconds",
            "Time the users' API took to answer, by route pattern and method.",
            ["route", "method"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "facility_operator_reconcile_errors",
            "Failures of the operator's work, by handler: "
            + "; ".join(f"{name}: {what}" for name, what in HANDLERS.items())
            + ".",
            ["handler"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "facility_operator_quota_refusals",
            "Requests of the users' API refused by a quota, by user and the limit that held "
            "(clusters, workers or cores).",
            ["user", "quota"],
            registry=self.registry,
        )
        self.sweep_removals = Counter(
            "facility_operator_sweep_removals",
            "Workers of gone clusters that the sweep removed, by backend.",
            ["backend"],
            registry=self.registry,
        )
        self.registry.register(StateCollector(index, ledger))

    def reconcile_error(self, handler: str) -> None:
        if handler not in HANDLERS:
            raise ValueError(f"unknown handler {handler!r}: one of {', '.join(HANDLERS)}")
        self.reconcile_errors.labels(handler=handler).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def app(self) -> web.Application:
        """The /metrics endpoint, for the site's scraper."""

        async def serve(_: web.Request) -> web.Response:
            return web.Response(
                body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get(PATH, serve)
        return app

    def api_middleware(
        self, prefix: str
    ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        """Counts and times every request of an API app; `prefix`, under which the API is also
        served, is left out of the route, so that both ways in count as one route."""

        @web.middleware
        async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
            route, method = route_of(request, prefix)
            started = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as error:  # what the error middleware lets through
                self._count(route, method, error.status, started)
                raise
            self._count(route, method, response.status, started)
            return response

        return measured

    def _count(self, route: str, method: str, status: int, started: float) -> None:
        self.api_requests.labels(route=route, method=method, status=str(status)).inc()
        self.api_duration.labels(route=route, method=method).observe(time.perf_counter() - started)


def route_of(request: web.Request, prefix: str) -> tuple[str, str]:
    """A request's route pattern and method, as bounded labels."""
    resource = request.match_info.route.resource
    if request.match_info.http_exception is not None or resource is None:
        method = request.method if request.method in METHODS else OTHER_METHOD
        return UNMATCHED, method
    return resource.canonical.removeprefix(prefix), request.method
