"""kopf handlers of DaskCluster resources, and the operator's own start and stop.

The Kubernetes client blocks, so every call runs in a thread (asyncio.to_thread); the handlers
themselves stay async so that per-cluster daemons do not each hold a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from facility_operator import reconcile
from facility_operator import resources as res
from facility_operator.edge_routes import EdgeRoutes
from facility_operator.kube import Kube
from facility_operator.logs import Trouble
from facility_operator.metrics import ClusterIndex, OperatorMetrics
from facility_operator.settings import Settings
from facility_operator.usage import FLUSH_SECONDS, UsageStore
from facility_operator.workers import WorkerController, worker_groups

DASK_CLUSTERS = (res.GROUP, res.VERSION, res.PLURAL)
FINALIZER = f"{res.GROUP}/batch-jobs"
log = logging.getLogger(__name__)

STOP_POLL = 0.5  # seconds between checks that a deleted scheduler pod is gone
STOP_WAIT = 40  # seconds the finalizer waits for it in one go (the pod's grace period is 30)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's state in annotations of the DaskClusters themselves (no extra resources), and
    nothing that needs more than the chart's namespaced Role."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=res.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=res.GROUP)
    settings.posting.level = logging.WARNING  # Kubernetes events only for what needs a look
    # One named namespace, the CRD installed with the chart: no cluster-wide watch of
    # namespaces and CRDs, which a namespaced Role could not allow anyway.
    settings.scanning.disabled = True


@contextlib.contextmanager
def errors_counted(memo: kopf.Memo, handler: str) -> Iterator[None]:
    """Count a handler's failure (kopf retries it); a wait that it asks kopf for is none."""
    try:
        yield
    except kopf.TemporaryError:
        raise
    except Exception:
        memo.metrics.reconcile_error(handler)
        raise


def _api_app(
    settings: Settings, controller: WorkerController, metrics: OperatorMetrics
) -> web.Application | None:
    """The users' API (facility_operator.api), when this build has it."""
    try:
        api = importlib.import_module("facility_operator.api")
    except ModuleNotFoundError as error:
        if error.name != "facility_operator.api":
            raise
        return None
    return api.make_app(settings, kube=controller.kube.api, controller=controller, metrics=metrics)


@dataclass
class SweepTroubles:
    """The sweep's two steps, each of whose failures is said once, not at every sweep."""

    sweeping: Trouble
    listing: Trouble

    @classmethod
    def of(cls, settings: Settings) -> SweepTroubles:
        return cls(
            Trouble(log, f"the sweep (every {settings.sweep_interval:g} s)"),
            Trouble(log, "listing the edge's routes (with every sweep)"),
        )


async def sweep_once(memo: kopf.Memo, troubles: SweepTroubles | None = None) -> None:
    """Remove the workers of gone clusters; renew the edge's routes, and the clusters the
    metrics count, from a listing."""
    settings: Settings = memo.settings
    troubles = troubles or SweepTroubles.of(settings)
    # Backends in use, and the default: a gone cluster's jobs are on one of these.
    backends = {settings.default_backend, *memo.backends_seen}
    try:
        removed = await asyncio.to_thread(reconcile.sweep, memo.kube, settings, backends)
    except Exception as error:
        # An API server hiccup must not end the sweeping for the operator's lifetime.
        memo.metrics.reconcile_error("sweep")
        troubles.sweeping.failed(error)
    else:
        troubles.sweeping.ok()
        for backend, count in removed.items():
            memo.metrics.sweep_removals.labels(backend=backend).inc(count)
    try:
        mark, seen_mark = memo.routes.mark(), memo.clusters_seen.mark()
        listed = await asyncio.to_thread(memo.kube.clusters, settings.namespace)
        memo.routes.replace(listed, mark)
        memo.clusters_seen.prune(listed, seen_mark)
        troubles.listing.ok()
    except Exception as error:
        memo.metrics.reconcile_error("routes")
        troubles.listing.failed(error)


async def _sweep_forever(memo: kopf.Memo) -> None:
    troubles = SweepTroubles.of(memo.settings)
    while True:
        await sweep_once(memo, troubles)
        await asyncio.sleep(memo.settings.sweep_interval)


async def _save_usage_forever(memo: kopf.Memo) -> None:
    saving = Trouble(log, f"saving the usage (every {FLUSH_SECONDS} s)")
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            await asyncio.to_thread(memo.usage_store.save, memo.workers.ledger)
            saving.ok()
        except Exception as error:
            saving.failed(error)


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, port=port).start()
    return runner


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    configure(settings)
    memo.kube = await asyncio.to_thread(Kube.connect)
    await asyncio.to_thread(reconcile.ensure_ca, memo.kube, memo.settings)
    memo.backends_seen = set()
    # The usage so far, before any tick adds to it.
    memo.usage_store = UsageStore(memo.kube, memo.settings)
    ledger = await asyncio.to_thread(memo.usage_store.load)
    memo.workers = WorkerController(memo.kube, memo.settings, memo.kube.api, ledger)
    memo.clusters_seen = ClusterIndex()
    memo.metrics = OperatorMetrics(memo.clusters_seen, ledger)
    memo.runners = [await _serve(memo.metrics.app(), memo.settings.metrics_port)]
    logger.info(f"the metrics are served on port {memo.settings.metrics_port}")
    # The edge's routes from a listing before they are served: an edge that polls a
    # restarted operator never sees an empty table while clusters run.
    memo.routes = EdgeRoutes(memo.settings)
    listed = await asyncio.to_thread(memo.kube.clusters, memo.settings.namespace)
    memo.routes.replace(listed, memo.routes.mark())
    memo.runners.append(await _serve(memo.routes.app(), memo.settings.edge_routes_port))
    logger.info(f"the edge's routes are served on port {memo.settings.edge_routes_port}")
    memo.tasks = [
        asyncio.create_task(_sweep_forever(memo)),
        asyncio.create_task(_save_usage_forever(memo)),
    ]
    app = _api_app(memo.settings, memo.workers, memo.metrics)
    if app is not None:
        memo.runners.append(await _serve(app, memo.settings.api_port))
        logger.info(f"the users' API listens on port {memo.settings.api_port}")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for runner in memo.runners:
        await runner.cleanup()
    await memo.workers.close()
    await asyncio.to_thread(memo.usage_store.save, memo.workers.ledger)


@kopf.on.event(*DASK_CLUSTERS)
async def route_cluster(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The edge's route of the cluster, and the cluster as the metrics count it: there from
    its first sight until it is deleted."""
    memo.routes.observe(body, deleted=event["type"] == "DELETED")
    memo.clusters_seen.observe(body, deleted=event["type"] == "DELETED")


def sizes(spec: dict[str, Any]) -> str:
    """The cluster's worker groups and their ranges, as the log says them."""
    return ", ".join(f"{g.name} {g.minimum}-{g.maximum}" for g in worker_groups(spec, ""))


def spec_event(reason: kopf.Reason, cluster: dict[str, Any]) -> str:
    """The log's line for a cluster seen for the first time, changed (scaled: users change
    nothing else), or seen again after the operator's restart."""
    spec = cluster["spec"]
    if reason == kopf.Reason.CREATE:
        return f"created for {spec['owner']} on {spec['backend']}; workers {sizes(spec)}"
    if reason == kopf.Reason.UPDATE:
        return f"scaled: workers {sizes(spec)}"
    phase = (cluster.get("status") or {}).get("phase", "Pending")
    return f"resumed ({phase}); workers {sizes(spec)}"


def phase_event(before: str | None, status: dict[str, Any]) -> str | None:
    """The log's line when the cluster's phase changes (None when it does not): its first
    Pending is the creation's, which is logged already."""
    phase = status["phase"]
    if phase == before or (before is None and phase == "Pending"):
        return None
    return f"{before or 'new'} -> {phase}: {status.get('message', '')}"


@kopf.on.resume(*DASK_CLUSTERS)
@kopf.on.create(*DASK_CLUSTERS)
@kopf.on.update(*DASK_CLUSTERS, field="spec")
async def reconcile_cluster(
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    patch: kopf.Patch,
    reason: kopf.Reason,
    **_: Any,
) -> None:
    settings: Settings = memo.settings
    cluster = dict(body)
    memo.backends_seen.add(cluster["spec"]["backend"])
    with errors_counted(memo, "reconcile"):
        await asyncio.to_thread(reconcile.ensure_objects, memo.kube, settings, cluster)
    log.info("%s: %s", res.cluster_key(cluster), spec_event(reason, cluster))
    patch.status["schedulerAddress"] = res.scheduler_address(settings, cluster)
    patch.status["dashboardLink"] = res.dashboard_link(cluster)
    patch.status["observedGeneration"] = meta["generation"]
    if not status.get("phase"):
        patch.status["phase"] = "Pending"
    memo.workers.wake(cluster)  # a new size: act on it now, not at the next tick


@kopf.daemon(*DASK_CLUSTERS, cancellation_timeout=10)
async def run_cluster(body: kopf.Body, memo: kopf.Memo, stopped: Any, **_: Any) -> None:
    """The cluster's phase from its scheduler pod, and its workers while the scheduler runs:
    every operator.workers.interval, and at once when the spec changes. Ends the cluster when
    its scheduler has ended."""
    settings: Settings = memo.settings
    controller: WorkerController = memo.workers
    key = res.cluster_key(body)
    # A batch system or API server that stays down fails every loop: said once, not each time.
    managing = Trouble(log, f"{key}: managing the workers")
    patching = Trouble(log, f"{key}: writing the status")
    # The phase as last logged (not as the body says: the watch may bring the patch late).
    phase = (body.get("status") or {}).get("phase")
    while not stopped:
        cluster = dict(body)  # kopf keeps `body` current: this is the latest object
        state = controller.state(cluster)
        state.wake.clear()
        status = await asyncio.to_thread(reconcile.scheduler_state, memo.kube, cluster)
        event = phase_event(phase, status)
        if event:
            log.info("%s: %s", key, event)
        phase = status["phase"]
        if status["phase"] != "Running":
            controller.scheduler_stopped(cluster)
        # Once deleted, the finalizer removes every worker: start none behind its back.
        elif not cluster["metadata"].get("deletionTimestamp"):
            try:
                status |= await controller.tick(cluster)
                managing.ok()
            except Exception as error:
                # A batch system that does not answer must not end the daemon: next tick.
                memo.metrics.reconcile_error("workers")
                managing.failed(error)
                status["message"] = f"the scheduler runs; the workers could not be managed: {error}"
        try:
            await asyncio.to_thread(reconcile.patch_status, memo.kube, cluster, status)
            patching.ok()
        except Exception as error:
            # (A CRD older than this operator refuses a field, the API server restarts, ...):
            # the daemon goes on, and says why in its log.
            memo.metrics.reconcile_error("status")
            patching.failed(error)
        interval = (
            settings.worker_interval if status["phase"] == "Running" else settings.status_interval
        )
        waits = {asyncio.ensure_future(state.wake.wait()), asyncio.ensure_future(stopped.wait())}
        _, pending = await asyncio.wait(
            waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED
        )
        for waiting in pending:
            waiting.cancel()


@kopf.on.delete(*DASK_CLUSTERS)
async def remove_batch_jobs(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Before the cluster goes: stop its scheduler (no new jobs), then remove its jobs."""
    with errors_counted(memo, "delete"):
        await _remove_batch_jobs(dict(body), memo, patch)


async def _remove_batch_jobs(cluster: dict[str, Any], memo: kopf.Memo, patch: kopf.Patch) -> None:
    patch.status["phase"] = "Ending"
    await asyncio.to_thread(reconcile.stop_scheduler, memo.kube, cluster)
    deadline = asyncio.get_running_loop().time() + STOP_WAIT
    while not await asyncio.to_thread(reconcile.scheduler_gone, memo.kube, cluster):
        if asyncio.get_running_loop().time() > deadline:
            raise kopf.TemporaryError("the scheduler pod has not stopped yet", delay=STOP_WAIT)
        await asyncio.sleep(STOP_POLL)
    controller: WorkerController = memo.workers
    # No tick may start a worker from now on; one under way finishes first (the owner's lock).
    controller.deleting.add(res.cluster_key(cluster))
    async with controller.owner_locks[cluster["spec"]["owner"]]:
        removed = await asyncio.to_thread(reconcile.remove_jobs, memo.kube, memo.settings, cluster)
    controller.forget(cluster)
    log.info(
        "%s: ended; its scheduler stopped, %d workers removed", res.cluster_key(cluster), removed
    )
