"""The worker controller: the operator makes, scales, watches and removes every worker.

For each cluster, every tick (operator.workers.interval seconds, and at once when its spec
changes) it:

1. lists the cluster's workers from its backend (pods or batch jobs, each with a state) and the
   workers connected to the scheduler (Dask's HTTP API);
2. decides each worker group's size: a fixed group (minWorkers = maxWorkers) has its size; the
   adaptive groups share what the scheduler's `adaptive_target` asks for, each kept within its
   range (a smaller target holds for ADAPT_DOWN_TICKS ticks before workers go);
3. starts the missing workers, within the owner's worker and core quotas (counted over all the
   owner's clusters, as the workers exist, not as asked); retires surplus workers through the
   scheduler first (their results move, no task is lost), then removes their jobs; a worker not
   yet connected is removed at once;
4. records every worker that ended otherwise than by its own retirement (its reason and the last
   lines of its log) and replaces it. Workers that keep failing before they connect
   (operator.workers.maxStartFailures in a row) are not replaced until the cluster's size
   changes: a broken image must not loop forever.

The planning (`plan`) is a pure function; `WorkerController.tick` does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from facility_client import contract
from kubernetes import client

from facility_operator import quotas
from facility_operator import resources as res
from facility_operator.backends import backend_for
from facility_operator.backends.base import (
    ACTIVE,
    ENDED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Backend,
    ClusterWorkers,
    Job,
    WorkerGroup,
)
from facility_operator.kube import Kube
from facility_operator.scheduler_api import SchedulerAPI
from facility_operator.settings import Settings
from facility_operator.usage import UsageLedger, utc_now

log = logging.getLogger(__name__)

ADAPT_DOWN_TICKS = 3  # as Dask's own Adaptive (wait_count): a dip in load removes nothing
KEPT_FAILURES = 5  # the last failures shown in the cluster's status
LOG_LINES = 20

# What a worker is doing, as the user sees it: the backend's states, with "running" split by
# whether the scheduler knows the worker.
STARTING = "starting"  # running, not connected yet
CONNECTED = "connected"


def worker_groups(spec: Mapping[str, Any], default_image: str) -> list[WorkerGroup]:
    """The cluster's worker groups: the default one (spec.worker, spec.minWorkers/maxWorkers)
    and spec.workerGroups, in that order."""

    def group(name: str, worker: Mapping[str, Any], minimum: int, maximum: int) -> WorkerGroup:
        return WorkerGroup(
            name=name,
            cores=int(worker.get("cores", 1)),
            memory=str(worker.get("memory", "2Gi")),
            disk=str(worker.get("disk", "4Gi")),
            gpus=int(worker.get("gpus", 0)),
            image=str(worker.get("image") or default_image),
            minimum=minimum,
            maximum=maximum,
        )

    groups = [
        group(
            contract.DEFAULT_GROUP,
            spec.get("worker") or {},
            spec.get("minWorkers", 0),
            spec.get("maxWorkers", 0),
        )
    ]
    for extra in spec.get("workerGroups") or []:
        groups.append(
            group(extra["name"], extra, extra.get("minWorkers", 0), extra.get("maxWorkers", 0))
        )
    return groups


def desired_sizes(
    groups: list[WorkerGroup], target: int | None, active: Mapping[str, int]
) -> dict[str, int]:
    """Each group's size. target: the scheduler's adaptive target for the whole cluster (None:
    unknown, the adaptive groups keep their size within range)."""
    sizes = {g.name: g.minimum for g in groups if not g.adaptive}
    adaptive = [g for g in groups if g.adaptive]
    if target is None:
        sizes |= {g.name: min(max(active.get(g.name, 0), g.minimum), g.maximum) for g in adaptive}
        return sizes
    left = target - sum(sizes.values())
    for g in adaptive:
        sizes[g.name] = g.minimum
        left -= g.minimum
    for g in adaptive:
        extra = min(max(left, 0), g.maximum - g.minimum)
        sizes[g.name] += extra
        left -= extra
    return sizes


@dataclass
class Room:
    """How many more workers and cores the owner may have (None: no limit), and why not more."""

    workers: int | None = None
    cores: int | None = None
    workers_source: str = ""
    cores_source: str = ""

    def take(self, wanted: int, cores: int) -> tuple[int, str]:
        """How many of `wanted` workers of `cores` cores fit; the limit that held, if any."""
        allowed, why = wanted, ""
        if self.workers is not None and allowed > self.workers:
            allowed, why = max(self.workers, 0), f"the worker quota ({self.workers_source})"
        if self.cores is not None and allowed * cores > self.cores:
            allowed, why = max(self.cores // cores, 0), f"the core quota ({self.cores_source})"
        if self.workers is not None:
            self.workers -= allowed
        if self.cores is not None:
            self.cores -= allowed * cores
        return allowed, why


@dataclass
class Plan:
    start: dict[str, int] = field(default_factory=dict)  # group name -> workers to start
    retire: list[Job] = field(default_factory=list)  # connected: retire, then remove
    remove: list[Job] = field(default_factory=list)  # not connected, or ended: remove at once
    held_back: str = ""  # why fewer workers than wanted are started


def plan(
    groups: list[WorkerGroup],
    jobs: list[Job],
    connected: Iterable[str] | None,
    sizes: Mapping[str, int],
    room: Room,
    blocked: Mapping[str, str] | None = None,
) -> Plan:
    """What to do to bring the workers to `sizes`.

    connected: names the scheduler knows (None: it does not answer; then only queued workers,
    which hold nothing, are removed). blocked: by group, why none of its workers may start now.
    """
    known = None if connected is None else set(connected)
    out = Plan()
    out.remove = [job for job in jobs if job.state in ENDED]
    names = {g.name for g in groups}
    # Workers of a group the cluster no longer has are surplus, like any other.
    orphans = [job for job in jobs if job.state in ACTIVE and job.group not in names]
    for g in [*groups, None]:
        active = (
            orphans if g is None else [j for j in jobs if j.group == g.name and j.state in ACTIVE]
        )
        want = 0 if g is None else sizes.get(g.name, 0)
        if g is not None and want > len(active):
            if (blocked or {}).get(g.name):
                out.held_back = (blocked or {})[g.name]
                continue
            allowed, why = room.take(want - len(active), g.cores)
            if allowed:
                out.start[g.name] = allowed
            if why:
                out.held_back = (
                    f"{g.name}: {len(active) + allowed} of {want} workers, held back by {why}"
                )
        elif want < len(active):
            surplus = len(active) - want

            def order(job: Job) -> tuple[int, int]:
                # Queued first, then running but unknown to the scheduler, then connected;
                # the newest first within each.
                rank = (
                    0
                    if job.state == PENDING
                    else (2 if known is not None and job.name in known else 1)
                )
                return rank, -job.number

            for job in sorted(active, key=order)[:surplus]:
                if job.state == PENDING:
                    out.remove.append(job)
                elif known is None:
                    continue  # maybe connected: wait for the scheduler to answer
                elif job.name in known:
                    out.retire.append(job)
                else:
                    out.remove.append(job)
    return out


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ClusterState:
    """What the controller remembers of one cluster between ticks (rebuilt after a restart
    from the status and the backend's listing)."""

    next_number: int = 0
    low_ticks: int = 0
    # Workers in a row, by group, that ended before they connected.
    start_failures: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    ever_connected: set[str] = field(default_factory=set)
    recorded: set[str] = field(default_factory=set)  # ids of ended workers already recorded
    # False until the first tick after the operator's start: what ended or connected before
    # it is learned then, without counting it as news.
    primed: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)
    # Why the plan starts fewer workers than wanted (a quota, failed starts), as last logged:
    # the log says each change once, not at every tick.
    held_back: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Usage:
    owner: str
    workers: int
    cores: int


class WorkerController:
    """The workers of every cluster of the release's namespace."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        api: client.ApiClient | None = None,
        ledger: UsageLedger | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.api = api
        self.backends: dict[str, Backend] = {}
        self.states: dict[str, ClusterState] = {}
        # Starts are counted against the owner's quota one cluster at a time.
        self.owner_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Active workers and their cores by cluster key, as last listed.
        self.usage: dict[str, Usage] = {}
        # Clusters whose finalizer runs or ran: no tick starts a worker for them any more.
        self.deleting: set[str] = set()
        self.session: aiohttp.ClientSession | None = None
        # What the workers used (the operator's is loaded from, and saved to, its ConfigMap).
        self.ledger = ledger if ledger is not None else UsageLedger(utc_now())

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            self.backends[name] = backend_for(name, self.settings.backend_config(name), self.api)
        return self.backends[name]

    def scheduler(self, body: Mapping[str, Any]) -> SchedulerAPI:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return SchedulerAPI(self.session, res.scheduler_http_url(self.settings, body))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def state(self, body: Mapping[str, Any]) -> ClusterState:
        key = res.cluster_key(body)
        if key not in self.states:
            status = body.get("status") or {}
            self.states[key] = ClusterState(
                next_number=int(status.get("nextWorker", 0)),
                start_failures={
                    str(group): int(n) for group, n in (status.get("startFailures") or {}).items()
                },
                generation=int(body["metadata"].get("generation", 0)),
                failures=list(status.get("recentFailures") or []),
            )
        return self.states[key]

    def wake(self, body: Mapping[str, Any]) -> None:
        """Look at this cluster now (its spec changed)."""
        self.state(body).wake.set()

    def forget(self, body: Mapping[str, Any]) -> None:
        """The cluster's workers are removed: count their usage up to now, and no further."""
        self.states.pop(res.cluster_key(body), None)
        self.usage.pop(res.cluster_key(body), None)
        self.ledger.ended(res.cluster_key(body))

    def scheduler_stopped(self, body: Mapping[str, Any]) -> None:
        """The scheduler does not run: no tick counts the workers, which end on their own
        (their death timeout). Their usage counts up to now, none of theirs after it."""
        spec = body["spec"]
        self.ledger.running(res.cluster_key(body), spec["owner"], res.owner_groups(body), 0, 0)

    def count_usage(
        self, body: Mapping[str, Any], jobs: list[Job], groups: Mapping[str, WorkerGroup]
    ) -> None:
        """Tell the ledger what of the cluster runs now (queued workers hold no cores)."""
        running = [j for j in jobs if j.state == RUNNING and j.group in groups]
        cores = sum(groups[j.group].cores for j in running)
        owner = body["spec"]["owner"]
        self.ledger.running(
            res.cluster_key(body), owner, res.owner_groups(body), len(running), cores
        )

    def cluster_workers(
        self, body: Mapping[str, Any], tls: Mapping[str, str], token: str
    ) -> ClusterWorkers:
        meta = body["metadata"]
        return ClusterWorkers(
            cluster_id=res.cluster_id(body),
            namespace=meta["namespace"],
            owner=body["spec"]["owner"],
            owner_slug=res.labels(self.settings, body)[contract.LABEL_OWNER],
            uid=meta["uid"],
            instance=self.settings.release,
            contact_address=res.scheduler_address(self.settings, body),
            tls=tls,
            xcache=self.settings.xcache,
            xcache_tls_secret=self.settings.xcache_tls_secret,
            token=token,
        )

    async def _jobs(self, body: Mapping[str, Any]) -> list[Job]:
        return await asyncio.to_thread(
            self.backend(body["spec"]["backend"]).jobs, res.cluster_key(body), body["spec"]["owner"]
        )

    async def room(self, body: Mapping[str, Any], own: Usage) -> Room:
        """What the owner may still add: their quotas minus the workers of all their clusters."""
        owner = body["spec"]["owner"]
        limits = {
            limit.kind: limit
            for limit in quotas.limits(self.settings.quotas, owner, res.owner_groups(body))
        }
        if "workers" not in limits and "cores" not in limits:
            return Room()
        workers, cores = own.workers, own.cores
        for other in await asyncio.to_thread(self.kube.clusters_of, self.settings.namespace, owner):
            key = res.cluster_key(other)
            if key == res.cluster_key(body):
                continue
            if key not in self.usage:  # not listed since the operator started
                self.usage[key] = await self._listed_usage(other)
            workers += self.usage[key].workers
            cores += self.usage[key].cores
        room = Room()
        if "workers" in limits:
            room.workers, room.workers_source = (
                limits["workers"].value - workers,
                limits["workers"].source,
            )
        if "cores" in limits:
            room.cores, room.cores_source = limits["cores"].value - cores, limits["cores"].source
        return room

    async def _listed_usage(self, body: Mapping[str, Any]) -> Usage:
        """What one cluster holds, from its backend; its spec's most where the backend does not
        answer (counting too much holds the quota, counting too little would break it)."""
        groups = worker_groups(body["spec"], self.settings.worker_image)
        try:
            jobs = await self._jobs(body)
        except Exception as error:
            log.warning(
                "%s: cannot list its workers (%s): counting its most", res.cluster_key(body), error
            )
            return Usage(
                body["spec"]["owner"],
                sum(g.maximum for g in groups),
                sum(g.maximum * g.cores for g in groups),
            )
        cores = {g.name: g.cores for g in groups}
        active = [j for j in jobs if j.state in ACTIVE]
        return Usage(body["spec"]["owner"], len(active), sum(cores.get(j.group, 0) for j in active))

    async def tick(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One look at a cluster whose scheduler runs; the status fields it yields."""
        state = self.state(body)
        generation = int(body["metadata"].get("generation", 0))
        if generation != state.generation:
            # A new size (or any change of the spec) gives failing workers a new chance.
            state.generation, state.start_failures = generation, {}
        key = res.cluster_key(body)
        spec = body["spec"]
        groups = worker_groups(spec, self.settings.worker_image)
        by_name = {g.name: g for g in groups}
        backend = self.backend(spec["backend"])
        scheduler = self.scheduler(body)
        async with self.owner_locks[spec["owner"]]:
            if key in self.deleting:
                return {}
            jobs = await self._jobs(body)
            self.count_usage(body, jobs, by_name)
            connected = await scheduler.workers()
            names = set(connected or ())
            listed = {j.name: j for j in jobs}
            if state.primed:
                # A new worker of a group connected: that group's workers can start.
                for name in sorted(names - state.ever_connected):
                    if name in listed:
                        log.info("%s: worker %s connected", key, name)
                        state.start_failures.pop(listed[name].group, None)
            state.ever_connected = (state.ever_connected | names) & set(listed)
            active = [j for j in jobs if j.state in ACTIVE]
            state.next_number = max([state.next_number, *(j.number + 1 for j in jobs)])
            counts: defaultdict[str, int] = defaultdict(int)
            for job in active:
                counts[job.group] += 1
            target = None
            if any(g.adaptive for g in groups):
                target = await scheduler.adaptive_target()
                adaptive_now = sum(counts[g.name] for g in groups if g.adaptive)
                fixed = sum(g.minimum for g in groups if not g.adaptive)
                if target is not None and target - fixed < adaptive_now:
                    state.low_ticks += 1
                    if state.low_ticks < ADAPT_DOWN_TICKS:
                        target = fixed + adaptive_now
                else:
                    state.low_ticks = 0
            sizes = desired_sizes(groups, target, counts)
            most = sum(g.maximum if g.adaptive else g.minimum for g in groups)
            capped = ""
            if target is not None and target > most:
                capped = f"the scheduler asks for {target} workers; maxWorkers holds it at {most}"
            own = Usage(
                spec["owner"],
                len(active),
                sum(by_name[j.group].cores for j in active if j.group in by_name),
            )
            room = await self.room(body, own)
            # What ended is counted before the plan, so that a group that just reached its
            # limit of failed starts gets no other worker now.
            await self._record_ended(body, backend, state, [j for j in jobs if j.state in ENDED])
            state.primed = True
            todo = plan(
                groups,
                jobs,
                names if connected is not None else None,
                sizes,
                room,
                self.blocked(state),
            )
            started: dict[str, int] = {}
            gone: set[str] = set()
            kept: list[Job] = []
            try:
                await self._start(body, backend, state, todo.start, by_name, started)
                gone, kept = await self._retire(
                    scheduler, backend, key, todo.retire, connected or {}
                )
                if todo.remove:
                    surplus = [j.name for j in todo.remove if j.state in ACTIVE]
                    if surplus:
                        log.info("%s: removing %s (not connected)", key, ", ".join(surplus))
                    await asyncio.to_thread(backend.remove, key, todo.remove)
                    gone |= {j.id for j in todo.remove}
            finally:
                # Also after a failure half-way: the owner's other clusters count these.
                still = [j for j in active if j.id not in gone]
                self.usage[key] = Usage(
                    spec["owner"],
                    len(still) + sum(started.values()),
                    sum(by_name[j.group].cores for j in still if j.group in by_name)
                    + sum(by_name[g].cores * n for g, n in started.items()),
                )
        held_back = todo.held_back or capped
        if kept:
            held_back = held_back or (
                f"the scheduler keeps {len(kept)} worker(s) it could not retire (their results"
                " have nowhere else to go yet)"
            )
        if todo.held_back != state.held_back:
            log.info("%s: %s", key, todo.held_back or "no longer held back")
            state.held_back = todo.held_back
        return self.status(state, still, names, started, held_back, connected is not None)

    def blocked(self, state: ClusterState) -> dict[str, str]:
        """The groups whose workers kept failing before they connected: none of theirs starts."""
        limit = self.settings.max_start_failures
        out = {}
        for group, failures in state.start_failures.items():
            if limit and failures >= limit:
                last = next((f for f in reversed(state.failures) if f.get("group") == group), {})
                out[group] = (
                    f"{group}: {failures} workers in a row ended before they connected (last:"
                    f" {last.get('name', '?')}: {last.get('reason', '?')}); none is started until"
                    " the cluster is scaled again"
                )
        return out

    async def _start(
        self,
        body: Mapping[str, Any],
        backend: Backend,
        state: ClusterState,
        start: Mapping[str, int],
        groups: Mapping[str, WorkerGroup],
        started: dict[str, int],
    ) -> None:
        """Start the workers of `start` (by group); `started` says how many did, also when a
        group's start fails (which counts as a failed start of that group)."""
        if not start:
            return
        namespace = body["metadata"]["namespace"]
        tls = await asyncio.to_thread(self.kube.secret_data, namespace, res.secret_name(body))
        if tls is None:
            return  # the reconcile makes it first
        token_secret = await asyncio.to_thread(
            self.kube.secret_data, namespace, res.token_secret_name(body)
        )
        token = (token_secret or {}).get(contract.USER_TOKEN_KEY, "")
        cluster = self.cluster_workers(body, tls, token)
        credential = backend.credential_secret(cluster.owner)
        if credential:
            found = await asyncio.to_thread(self.kube.secret_data, namespace, credential)
            cluster = dataclasses.replace(
                cluster, submit_token=(found or {}).get(contract.USER_TOKEN_KEY, "")
            )
        for group, count in start.items():
            if cluster.key in self.deleting:
                return
            names = [
                contract.worker_name(cluster.cluster_id, group, state.next_number + i)
                for i in range(count)
            ]
            # The numbers are taken before the start: a retry after a crash makes new names,
            # never a second worker of one name.
            state.next_number += count
            await asyncio.to_thread(
                self.kube.patch_status,
                namespace,
                cluster.cluster_id,
                {"nextWorker": state.next_number},
            )
            log.info("%s: starting %s", cluster.key, ", ".join(names))
            try:
                await asyncio.to_thread(backend.start, cluster, groups[group], names)
            except Exception as error:
                # The batch system refused (a partition, a limit): the user sees why, and the
                # group stops after maxStartFailures such refusals.
                log.warning("%s: starting %s failed: %s", cluster.key, names[0], error)
                state.start_failures[group] = state.start_failures.get(group, 0) + 1
                state.failures.append({
                    "name": names[0], "id": "", "group": group, "state": "failed",
                    "reason": f"the {backend.name} backend refused the start: {error}",
                    "since": now(), "log": "",
                })  # fmt: skip
                del state.failures[:-KEPT_FAILURES]
                continue
            started[group] = count

    async def _retire(
        self,
        scheduler: SchedulerAPI,
        backend: Backend,
        key: str,
        jobs: list[Job],
        connected: Mapping[str, str],
    ) -> tuple[set[str], list[Job]]:
        """Retire connected workers through the scheduler, then remove the jobs of those it
        retired: (their ids, the workers it kept). A worker whose results have nowhere else to
        go the scheduler keeps; it stays until a later tick can retire it."""
        if not jobs:
            return set(), []
        log.info("%s: retiring %s", key, ", ".join(j.name for j in jobs))
        retired = await scheduler.retire([connected[j.name] for j in jobs])
        if retired is None:
            return set(), []  # try again next tick; nothing is removed under a running task
        done = [j for j in jobs if connected[j.name] in retired]
        if done:
            await asyncio.to_thread(backend.remove, key, done)
        return {j.id for j in done}, [j for j in jobs if j not in done]

    async def _record_ended(
        self, body: Mapping[str, Any], backend: Backend, state: ClusterState, ended: list[Job]
    ) -> None:
        """Keep why each worker ended (but a clean exit) and the end of its log, for the user;
        count those that never connected against their group (not on the first tick after a
        restart: what ended before it may have been counted already)."""
        key = res.cluster_key(body)
        # A batch system lists ended jobs for a while (SLURM's MinJobAge): record each once.
        seen = state.recorded | {f["id"] for f in state.failures}
        state.recorded = {job.id for job in ended if job.id in seen}
        for job in ended:
            if job.id in seen:
                continue
            if state.primed or job.state != SUCCEEDED:
                log.info("%s: worker %s %s: %s", key, job.name, job.state, job.reason)
            if job.state != SUCCEEDED:
                try:
                    text = await asyncio.to_thread(backend.log_tail, key, job, LOG_LINES)
                except Exception as error:
                    text = f"(the log could not be read: {error})"
                if state.primed and job.name not in state.ever_connected:
                    state.start_failures[job.group] = state.start_failures.get(job.group, 0) + 1
                state.failures.append({
                    "name": job.name, "id": job.id, "group": job.group, "state": job.state,
                    "reason": job.reason, "since": job.since or now(), "log": text[-4000:],
                })  # fmt: skip
            state.recorded.add(job.id)
        del state.failures[:-KEPT_FAILURES]

    @staticmethod
    def status(
        state: ClusterState,
        active: list[Job],
        connected: set[str],
        started: Mapping[str, int],
        held_back: str,
        scheduler_answers: bool,
    ) -> dict[str, Any]:
        counts = {PENDING: sum(started.values()), STARTING: 0, CONNECTED: 0}
        waiting = []
        for job in active:
            if job.name in connected:
                counts[CONNECTED] += 1
            elif job.state == PENDING:
                counts[PENDING] += 1
                if job.reason:
                    waiting.append(f"{job.name}: {job.reason}")
            else:
                counts[STARTING] += 1
        parts = ["the scheduler runs"]
        if not scheduler_answers:
            parts = ["the scheduler runs; its HTTP API does not answer yet"]
        if waiting:
            parts.append(f"{counts[PENDING]} worker(s) waiting ({waiting[0]})")
        if held_back:
            parts.append(held_back)
        return {
            "workers": counts[CONNECTED],
            "workerStates": counts,
            "heldBack": held_back,
            "startFailures": dict(state.start_failures),
            "recentFailures": list(state.failures),
            "message": "; ".join(parts),
        }

    async def describe(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every worker of a cluster, as the user API shows it, and the recent failures."""
        jobs = await self._jobs(body)
        connected = await self.scheduler(body).workers() or {}
        out = []
        for job in jobs:
            state = job.state
            if state != PENDING and state in ACTIVE:
                state = CONNECTED if job.name in connected else STARTING
            out.append({
                "name": job.name, "id": job.id, "group": job.group, "state": state,
                "since": job.since, "reason": job.reason,
            })  # fmt: skip
        live = {w["id"] for w in out}
        status = body.get("status") or {}
        for failure in status.get("recentFailures") or []:
            if failure["id"] not in live:
                out.append({k: v for k, v in failure.items() if k != "log"})
        return out

    async def log_of(self, body: Mapping[str, Any], name: str) -> str | None:
        """The last lines of one worker's log (live, else as recorded when it ended)."""
        for job in await self._jobs(body):
            if job.name == name:
                backend = self.backend(body["spec"]["backend"])
                return await asyncio.to_thread(
                    backend.log_tail, res.cluster_key(body), job, LOG_LINES
                )
        for failure in (body.get("status") or {}).get("recentFailures") or []:
            if failure["name"] == name:
                return str(failure.get("log", ""))
        return None
