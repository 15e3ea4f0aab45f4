"""The operator's metrics (facility_operator.metrics) and the users' usage (usage.py), read back
as Prometheus parses the exposition, after exercising the code that counts: the users' API
through aiohttp's test server (with a stand-in hub), the worker controller's ticks, the sweep,
the handlers' error counting, and the usage ledger over simulated time (no sleeps)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from facility_operator import api, handlers, quotas, reconcile
from facility_operator.backends.base import PENDING, RUNNING, Job
from facility_operator.edge_routes import EdgeRoutes
from facility_operator.hub_auth import User
from facility_operator.metrics import ClusterIndex, OperatorMetrics
from facility_operator.resources import ANNOTATION_OWNER_GROUPS
from facility_operator.settings import Settings
from facility_operator.usage import DATA_KEY, NO_GROUP, UsageLedger, UsageStore
from facility_operator.workers import WorkerController
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from harness.paths import CHART

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SETTINGS = Settings.from_values(VALUES, "af-facility", "facility")
SINCE = "2026-12-01T00:00:00+00:00"
ID = "alice-x1y2z"
# The stand-in hub's users, by token: what JupyterHub's GET /hub/api/user answers for them.
HUB_USERS = {
    "alice-token": {"name": "alice", "admin": False, "groups": ["cms"]},
    "root-token": {"name": "root", "admin": True, "groups": []},
}


def job(number: int, state: str = RUNNING, group: str = "default") -> Job:
    return Job(f"{ID}-{group}-{number}", f"id-{group}-{number}", group, state)


class StandInBackend:
    """A backend that lists its jobs and does nothing else."""

    name = "stand-in"

    def __init__(self, jobs: list[Job]) -> None:
        self.listed = jobs

    def jobs(self, key: str, owner: str = "") -> list[Job]:
        return list(self.listed)


class StandInScheduler:
    def __init__(self, connected: dict[str, str]) -> None:
        self.connected = connected

    async def workers(self) -> dict[str, str]:
        return dict(self.connected)


class StandInKube:
    """The Kube calls of a tick that starts no worker."""

    def clusters_of(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        return []


class Clock:
    """Seconds that tests move on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: OperatorMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one sample name, by their sorted labels, as Prometheus would read them."""
    text = metrics.exposition().decode()
    found: list[Sample] = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return {tuple(sorted(s.labels.items())): s.value for s in found}


def cluster_body(
    name: str, owner: str, phase: str | None, states: dict[str, int] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"workerStates": states or {}}
    if phase:
        status["phase"] = phase
    return {
        "metadata": {"name": name, "namespace": "facility"},
        "spec": {"owner": owner, "backend": "slurm"},
        "status": status,
    }


# The usage ledger over simulated time.


def test_usage_counts_every_running_worker_at_the_mean_of_two_looks() -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    ledger.running("facility/a", "alice", ["cms", "atlas"], workers=2, cores=8)
    clock.now += 10
    ledger.running("facility/a", "alice", ["cms", "atlas"], workers=2, cores=8)
    assert (ledger.users["alice"].core_seconds, ledger.users["alice"].worker_seconds) == (80, 20)
    # From 2 workers to none: half of the interval at the mean.
    clock.now += 10
    ledger.running("facility/a", "alice", ["cms", "atlas"], workers=0, cores=0)
    assert (ledger.users["alice"].core_seconds, ledger.users["alice"].worker_seconds) == (120, 30)
    # Once in each of her groups.
    assert ledger.by_group[("alice", "cms")] == ledger.by_group[("alice", "atlas")]
    assert ledger.by_group[("alice", "cms")].core_seconds == 120


def test_usage_of_clusters_at_once_adds_up_and_a_removal_counts_until_then() -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    ledger.running("facility/a", "alice", [], workers=3, cores=3)
    ledger.running("facility/b", "alice", [], workers=1, cores=16)
    ledger.running("facility/c", "bob", ["cms"], workers=1, cores=2)
    clock.now += 60
    ledger.running("facility/a", "alice", [], workers=3, cores=3)
    ledger.running("facility/b", "alice", [], workers=1, cores=16)
    # bob's cluster is deleted: what ran at its last look ran until its workers were removed.
    ledger.ended("facility/c")
    assert ledger.users["alice"].core_seconds == 60 * (3 + 16)
    assert ledger.users["alice"].worker_seconds == 60 * 4
    assert ledger.by_group[("alice", NO_GROUP)].core_seconds == 60 * 19
    assert ledger.users["bob"].core_seconds == 120
    assert "facility/c" not in ledger.looks
    # A removal that is seen again counts nothing more.
    clock.now += 60
    ledger.ended("facility/c")
    assert ledger.users["bob"].core_seconds == 120


def test_usage_survives_a_restart_and_counts_nothing_twice() -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    ledger.running("facility/a", "alice", ["cms"], workers=1, cores=4)
    clock.now += 100
    ledger.running("facility/a", "alice", ["cms"], workers=1, cores=4)
    kube = StandInConfigMaps()
    store = UsageStore(kube, SETTINGS)  # type: ignore[arg-type]
    assert store.load(clock).since != SINCE  # none yet: one is made, counting from now
    store.save(ledger)
    assert not ledger.changed
    # The operator restarts: the totals come back, the clock of each cluster does not, so the
    # time while no operator ran is not counted.
    again = store.load(clock)
    assert again.since == SINCE
    assert again.report() == {**ledger.report(), "until": again.report()["until"]}
    clock.now += 500
    again.running("facility/a", "alice", ["cms"], workers=1, cores=4)
    assert again.users["alice"].core_seconds == 400
    clock.now += 10
    again.running("facility/a", "alice", ["cms"], workers=1, cores=4)
    assert again.users["alice"].core_seconds == 440


def test_a_failed_save_is_made_good_by_the_next() -> None:
    clock = Clock()
    kube = StandInConfigMaps()
    store = UsageStore(kube, SETTINGS)  # type: ignore[arg-type]
    ledger = store.load(clock)
    ledger.running("facility/a", "alice", [], workers=1, cores=1)
    clock.now += 5
    ledger.running("facility/a", "alice", [], workers=1, cores=1)
    kube.refuse = True
    with pytest.raises(RuntimeError):
        store.save(ledger)
    assert ledger.changed
    kube.refuse = False
    store.save(ledger)
    saved = json.loads(kube.data[SETTINGS.usage_config_map][DATA_KEY])
    assert saved["users"]["alice"]["coreSeconds"] == 5
    writes = kube.writes
    store.save(ledger)  # nothing new: no write
    assert kube.writes == writes


def test_unreadable_usage_stops_the_operator_rather_than_count_from_zero() -> None:
    kube = StandInConfigMaps()
    kube.data[SETTINGS.usage_config_map] = {DATA_KEY: '{"users": {}}'}  # no "since"
    with pytest.raises(RuntimeError, match="af-facility-operator-usage holds no usage the"):
        UsageStore(kube, SETTINGS).load()  # type: ignore[arg-type]
    assert kube.writes == 0


def test_usage_report_by_user_and_group() -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    for owner, groups in (("alice", ["cms"]), ("bob", ["cms", "atlas"]), ("carol", [])):
        ledger.running(f"facility/{owner}", owner, groups, workers=1, cores=2)
    clock.now += 10
    for owner, groups in (("alice", ["cms"]), ("bob", ["cms", "atlas"]), ("carol", [])):
        ledger.running(f"facility/{owner}", owner, groups, workers=1, cores=2)
    report = ledger.report()
    assert report["since"] == SINCE
    assert report["until"]
    assert report["users"]["alice"] == {
        "coreSeconds": 20,
        "workerSeconds": 10,
        "groups": {"cms": {"coreSeconds": 20, "workerSeconds": 10}},
    }
    assert report["users"]["carol"]["groups"] == {}
    assert report["groups"] == {
        "atlas": {"coreSeconds": 20, "workerSeconds": 10, "users": ["bob"]},
        "cms": {"coreSeconds": 40, "workerSeconds": 20, "users": ["alice", "bob"]},
    }
    one = ledger.report("bob")
    assert list(one["users"]) == ["bob"]
    assert one["groups"]["cms"]["users"] == ["bob"]
    assert ledger.report("nobody")["users"] == {}


def test_the_worker_controller_counts_running_workers_with_their_groups_cores() -> None:
    clock = Clock()
    jobs = [job(0), job(1), job(0, PENDING, "gpu")]
    backend = StandInBackend(jobs)
    scheduler = StandInScheduler({j.name: f"tls://w{j.number}" for j in jobs[:2]})
    made = WorkerController(StandInKube(), SETTINGS, ledger=UsageLedger(SINCE, clock))  # type: ignore[arg-type]
    made.backend = lambda name: backend  # type: ignore[assignment,method-assign]
    made.scheduler = lambda body: scheduler  # type: ignore[assignment,method-assign]
    cluster = {
        "metadata": {
            "name": ID,
            "namespace": "facility",
            "uid": "u",
            "generation": 1,
            "annotations": {ANNOTATION_OWNER_GROUPS: json.dumps(["cms"])},
        },
        "spec": {
            "owner": "alice", "backend": "slurm", "worker": {"cores": 4},
            "minWorkers": 2, "maxWorkers": 2,
            "workerGroups": [{"name": "gpu", "cores": 8, "minWorkers": 1, "maxWorkers": 1}],
        },
    }  # fmt: skip
    asyncio.run(made.tick(cluster))
    clock.now += 30
    asyncio.run(made.tick(cluster))
    # Two running workers of 4 cores for 30 s; the queued gpu worker holds no cores.
    assert made.ledger.by_group[("alice", "cms")].core_seconds == 2 * 4 * 30
    assert made.ledger.by_group[("alice", "cms")].worker_seconds == 2 * 30
    # The scheduler stops: its workers count until now, and none after.
    clock.now += 30
    made.scheduler_stopped(cluster)
    clock.now += 300
    made.scheduler_stopped(cluster)
    assert made.ledger.users["alice"].core_seconds == 2 * 4 * 30 + 4 * 30


class StandInConfigMaps:
    """The Kube calls of UsageStore, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self.refuse = False
        self.writes = 0

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.data.get(name)

    def create(self, obj: dict[str, Any]) -> bool:
        assert (obj["kind"], obj["metadata"]["namespace"]) == ("ConfigMap", "facility")
        self.data.setdefault(obj["metadata"]["name"], dict(obj["data"]))
        return True

    def replace_config_map(self, obj: dict[str, Any]) -> None:
        if self.refuse:
            raise RuntimeError("the API server does not answer")
        self.writes += 1
        self.data[obj["metadata"]["name"]] = dict(obj["data"])


# What exists, read at scrape time.


def test_clusters_and_workers_gauges_come_from_the_watch() -> None:
    index = ClusterIndex()
    metrics = OperatorMetrics(index, UsageLedger(SINCE))
    states = {"pending": 1, "starting": 2, "connected": 3}
    index.observe(cluster_body("alice-a", "alice", "Running", states), deleted=False)
    index.observe(cluster_body("alice-b", "alice", "Running", {"connected": 1}), deleted=False)
    index.observe(cluster_body("bob-a", "bob", None), deleted=False)
    index.observe(cluster_body("bob-b", "bob", "Failed", {"connected": 9}), deleted=False)
    assert samples(metrics, "facility_dask_clusters") == {
        (("phase", "Running"), ("user", "alice")): 2,
        (("phase", "Pending"), ("user", "bob")): 1,
        (("phase", "Failed"), ("user", "bob")): 1,
    }
    # Only the workers of Running clusters: a failed cluster's last states are history.
    assert samples(metrics, "facility_dask_workers") == {
        (("backend", "slurm"), ("state", "pending")): 1,
        (("backend", "slurm"), ("state", "starting")): 2,
        (("backend", "slurm"), ("state", "connected")): 4,
    }
    index.observe(cluster_body("alice-b", "alice", "Running"), deleted=True)
    assert (
        samples(metrics, "facility_dask_clusters")[(("phase", "Running"), ("user", "alice"))] == 1
    )


def test_a_listing_prunes_what_the_watch_missed_but_not_what_came_after_it() -> None:
    index = ClusterIndex()
    index.observe(cluster_body("alice-a", "alice", "Running"), deleted=False)
    index.observe(cluster_body("alice-b", "alice", "Running"), deleted=False)
    mark = index.mark()
    index.observe(cluster_body("alice-c", "alice", "Pending"), deleted=False)  # after the listing
    index.prune([cluster_body("alice-a", "alice", "Running")], mark)
    assert sorted(index.clusters) == ["facility/alice-a", "facility/alice-c"]


def test_usage_counters_by_user_and_group() -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    metrics = OperatorMetrics(ClusterIndex(), ledger)
    ledger.running("facility/a", "alice", ["cms"], workers=2, cores=6)
    ledger.running("facility/b", "carol", [], workers=1, cores=1)
    clock.now += 10
    ledger.running("facility/a", "alice", ["cms"], workers=2, cores=6)
    ledger.running("facility/b", "carol", [], workers=1, cores=1)
    assert samples(metrics, "facility_usage_core_seconds_total") == {
        (("group", "cms"), ("user", "alice")): 60,
        (("group", ""), ("user", "carol")): 10,
    }
    assert samples(metrics, "facility_usage_worker_seconds_total") == {
        (("group", "cms"), ("user", "alice")): 20,
        (("group", ""), ("user", "carol")): 10,
    }


# What happens, counted where it happens.


Hub = tuple[asyncio.AbstractEventLoop, str]


@pytest.fixture
def stand_in_hub() -> Iterator[Hub]:
    """JupyterHub's GET /hub/api/user for HUB_USERS' tokens, on loopback: the loop it runs in,
    and its API's URL."""

    async def user(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("token ")
        if token not in HUB_USERS:
            return web.json_response({"status": 403}, status=403)
        scopes = ["access:services!service=dask"]
        return web.json_response({"kind": "user", "scopes": scopes, **HUB_USERS[token]})

    app = web.Application()
    app.router.add_get("/hub/api/user", user)
    server = TestServer(app)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start_server())
    yield loop, f"http://{server.host}:{server.port}/hub/api"
    loop.run_until_complete(server.close())
    loop.close()


def api_calls(
    hub: Hub, ledger: UsageLedger, calls: list[tuple[str, str, str | None]]
) -> tuple[OperatorMetrics, list[tuple[int, Any]]]:
    """Each (method, path, token) against the users' API: the metrics and the answers."""
    loop, hub_url = hub
    settings = dataclasses.replace(SETTINGS, hub_api_url=hub_url)
    kube = client.ApiClient()
    controller = WorkerController(StandInKube(), settings, kube, ledger)  # type: ignore[arg-type]
    metrics = OperatorMetrics(ClusterIndex(), ledger)
    app = api.make_app(settings, kube=kube, controller=controller, metrics=metrics)

    async def run() -> list[tuple[int, Any]]:
        answers = []
        async with TestClient(TestServer(app)) as session:
            for method, path, token in calls:
                headers = {"Authorization": f"token {token}"} if token else {}
                answer = await session.request(method, path, headers=headers)
                answers.append((answer.status, await answer.json()))
        return answers

    return metrics, loop.run_until_complete(run())


def test_api_requests_are_counted_by_route_pattern_method_and_status(stand_in_hub: Hub) -> None:
    metrics, answers = api_calls(
        stand_in_hub,
        UsageLedger(SINCE),
        [
            ("GET", "/clusters/alice-x1y2z", None),
            ("GET", "/services/dask/clusters/alice-x2y3z", None),
            ("DELETE", "/clusters/alice-x1y2z/workers", "alice-token"),
            ("GET", "/no/such/path/alice-x1y2z", "alice-token"),
            ("GET", "/usage", "root-token"),
        ],
    )
    assert [status for status, _ in answers] == [401, 401, 405, 404, 200]
    assert samples(metrics, "facility_operator_api_requests_total") == {
        # Both ways in count as one route, by its pattern (never the cluster's id).
        (("method", "GET"), ("route", "/clusters/{id}"), ("status", "401")): 2,
        (("method", "DELETE"), ("route", "unmatched"), ("status", "405")): 1,
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 1,
        (("method", "GET"), ("route", "/usage"), ("status", "200")): 1,
    }
    durations = samples(metrics, "facility_operator_api_request_duration_seconds_count")
    assert durations[(("method", "GET"), ("route", "/clusters/{id}"))] == 2
    buckets = samples(metrics, "facility_operator_api_request_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("method", "GET"), ("route", "/usage"))] == 1


def test_usage_is_for_admins_and_a_user_may_be_picked(stand_in_hub: Hub) -> None:
    clock = Clock()
    ledger = UsageLedger(SINCE, clock)
    for owner in ("alice", "bob"):
        ledger.running(f"facility/{owner}", owner, ["cms"], workers=1, cores=2)
    clock.now += 10
    for owner in ("alice", "bob"):
        ledger.running(f"facility/{owner}", owner, ["cms"], workers=1, cores=2)
    metrics, answers = api_calls(
        stand_in_hub,
        ledger,
        [
            ("GET", "/usage", "alice-token"),
            ("GET", "/services/dask/usage", "root-token"),
            ("GET", "/usage?user=bob", "root-token"),
            ("GET", "/usage", None),
        ],
    )
    (refused, body), (whole, everyone), (picked, bob), (anonymous, _) = answers
    assert refused == 403
    assert body == {
        "error": "the usage of the facility is for the hub's admins only, and alice is none",
        "field": None,
    }
    assert (whole, sorted(everyone["users"]), everyone["since"]) == (200, ["alice", "bob"], SINCE)
    assert everyone["groups"]["cms"] == {"coreSeconds": 40, "workerSeconds": 20,
                                         "users": ["alice", "bob"]}  # fmt: skip
    assert (picked, list(bob["users"]), bob["users"]["bob"]["coreSeconds"]) == (200, ["bob"], 20)
    assert anonymous == 401
    counted = samples(metrics, "facility_operator_api_requests_total")
    assert counted[(("method", "GET"), ("route", "/usage"), ("status", "403"))] == 1


def test_quota_refusals_are_counted_by_user_and_limit() -> None:
    settings = dataclasses.replace(SETTINGS, quotas={"default": {"clusters": 1, "cores": 4}})
    app = web.Application()
    metrics = OperatorMetrics(ClusterIndex(), UsageLedger(SINCE))
    app[api.SETTINGS], app[api.METRICS] = settings, metrics
    request = make_mocked_request("POST", "/clusters", app=app)
    alice = User("alice", frozenset())
    spec = {"worker": {"cores": 4}, "maxWorkers": 1}
    api.check_quotas(request, alice, [], spec)  # within every limit: nothing counted
    for mine, proposed, kind in (
        ([spec], spec, "clusters"),
        ([], {**spec, "maxWorkers": 2}, "cores"),
    ):
        with pytest.raises(quotas.QuotaExceeded) as refused:
            api.check_quotas(request, alice, mine, proposed)
        assert (refused.value.status, refused.value.limit.kind) == (403, kind)
    assert samples(metrics, "facility_operator_quota_refusals_total") == {
        (("quota", "clusters"), ("user", "alice")): 1,
        (("quota", "cores"), ("user", "alice")): 1,
    }


def test_reconcile_errors_are_counted_by_handler_but_a_wait_is_none() -> None:
    metrics = OperatorMetrics(ClusterIndex(), UsageLedger(SINCE))
    memo = kopf.Memo(metrics=metrics)
    with pytest.raises(RuntimeError), handlers.errors_counted(memo, "reconcile"):
        raise RuntimeError("the API server refused")
    with pytest.raises(kopf.TemporaryError), handlers.errors_counted(memo, "delete"):
        raise kopf.TemporaryError("the scheduler pod has not stopped yet")
    assert samples(metrics, "facility_operator_reconcile_errors_total") == {
        (("handler", "reconcile"),): 1
    }
    with pytest.raises(ValueError, match="unknown handler 'typo'"):
        metrics.reconcile_error("typo")


class StandInSweepKube:
    """The operator's Kube for a sweep: clusters that exist."""

    api = None

    def __init__(self, live: list[dict[str, Any]]) -> None:
        self.live = live

    def clusters(self, namespace: str) -> list[dict[str, Any]]:
        return self.live


class SweptBackend:
    def __init__(self, by_key: dict[str, list[str]]) -> None:
        self.by_key = by_key

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        return self.by_key

    def remove_all(self, key: str) -> int:
        return len(self.by_key[key])


def test_sweep_removals_are_counted_by_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    backends = {
        "slurm": SweptBackend({"facility/gone-a": ["1", "2"], "facility/alice-a": ["3"]}),
        "kubernetes": SweptBackend({"facility/gone-b": ["p"], "other/gone-c": ["q"]}),
        "htcondor": SweptBackend({}),
    }
    monkeypatch.setattr(reconcile, "backend_for", lambda name, config, api: backends[name])
    live = [cluster_body("alice-a", "alice", "Running")]
    index = ClusterIndex()
    index.observe(cluster_body("gone-a", "bob", "Running"), deleted=False)  # a missed deletion
    metrics = OperatorMetrics(index, UsageLedger(SINCE))
    memo = kopf.Memo(
        settings=SETTINGS, kube=StandInSweepKube(live), metrics=metrics,
        backends_seen={"slurm", "kubernetes"}, routes=EdgeRoutes(SETTINGS), clusters_seen=index,
    )  # fmt: skip
    asyncio.run(handlers.sweep_once(memo))
    assert samples(metrics, "facility_operator_sweep_removals_total") == {
        (("backend", "slurm"),): 2,
        (("backend", "kubernetes"),): 1,
    }
    assert list(index.clusters) == []  # the listing has no gone-a
