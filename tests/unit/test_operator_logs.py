"""The operator's log (facility_operator.logs): no line per poll, probe or watch event, one line
per request of a user and per failure, kopf's lines naming their object."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator

import kopf
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from facility_operator import handlers, logs
from facility_operator.edge_routes import EdgeRoutes
from facility_operator.settings import Settings
from facility_operator.workers import ClusterState
from kubernetes import client

from harness.paths import CHART


@pytest.fixture
def quiet_access_log() -> Iterator[logging.Logger]:
    """aiohttp's access logger with the operator's filter, as logs.configure installs it."""
    logger = logging.getLogger(logs.ACCESS_LOGGER)
    quiet = logs.QuietPolls()
    logger.addFilter(quiet)
    yield logger
    logger.removeFilter(quiet)


def operator_app() -> web.Application:
    """The edge's real routes app, with a user API route, a probe path and a failing poll."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app = EdgeRoutes(Settings.from_values(values, "af", "facility")).app()

    async def answer(_: web.Request) -> web.Response:
        return web.json_response([])

    async def broken(_: web.Request) -> web.Response:
        raise web.HTTPInternalServerError()

    app.router.add_get("/clusters", answer)
    app.router.add_get("/healthz", answer)
    app.router.add_get("/metrics", broken)
    return app


async def get_all(paths: list[str]) -> None:
    # TestServer serves with aiohttp's default access logger, as the operator's runners do.
    async with TestClient(TestServer(operator_app())) as http:
        for path in paths:
            async with http.get(path) as response:
                await response.read()


def access_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logs.ACCESS_LOGGER and r.levelno >= level
    ]  # fmt: skip


def test_polls_and_probes_leave_no_access_line_other_requests_one_each(
    quiet_access_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    asyncio.run(get_all(["/routes"] * 5 + ["/routes?since=1", "/healthz", "/clusters"]))
    lines = access_lines(caplog)
    assert len(lines) == 1
    assert '"GET /clusters HTTP/1.1" 200' in lines[0]


def test_a_failed_poll_keeps_its_access_line(
    quiet_access_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    asyncio.run(get_all(["/metrics"]))
    (line,) = access_lines(caplog)
    assert '"GET /metrics HTTP/1.1" 500' in line


def test_polls_show_at_debug(
    quiet_access_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=logs.ACCESS_LOGGER)
    asyncio.run(get_all(["/routes", "/routes"]))
    polls = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert [r.levelname for r in polls] == ["DEBUG", "DEBUG"]


def record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(logs.KOPF_OBJECTS_LOGGER, level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def kopf_handlers() -> list[object]:
    """The operator's handlers as kopf registered them (their str is kopf's name for them)."""
    registry = kopf.get_default_registry()
    found = [
        *registry._watching.get_all_handlers(),
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    assert found, "facility_operator.handlers registered no handler"
    return found


def test_kopf_success_lines_are_quiet_its_failures_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    quiet = logs.QuietHandlers()
    assert handlers.route_cluster  # registered with kopf on import
    # kopf's own words, for each of the operator's handlers (kopf._core.actions.execution).
    named = [str(h) for h in kopf_handlers() if str(h).startswith("Handler ")]
    # (Daemons are not among them: one line when a cluster's daemon ends is an event.)
    assert "Handler 'route_cluster'" in named
    for handler in named:
        assert quiet.filter(record(f"{handler} succeeded.")) is False
    for title in ("Creation", "Updating", "Resuming", "Deletion"):
        assert quiet.filter(record(f"{title} is processed: 1 succeeded; 0 failed.")) is False
    kept = [
        "Creation is processed: 0 succeeded; 1 failed.",
        "Handler 'reconcile_cluster' failed with an exception and will try again in 60 seconds",
        "Daemon 'run_cluster' succeeded.",
    ]
    assert all(quiet.filter(record(text)) for text in kept)
    assert quiet.filter(record("Handler 'x' succeeded.", logging.WARNING))


def test_kopf_lines_name_their_object() -> None:
    formatter = logs.ObjectFormatter("%(levelname)s %(message)s")
    ref = {"namespace": "facility", "name": "alice-x1y2z", "kind": "DaskCluster"}
    about = record("Handler %r failed", logging.ERROR, k8s_ref=ref)
    about.args = ("reconcile_cluster",)
    assert (
        formatter.format(about) == "ERROR [facility/alice-x1y2z] Handler 'reconcile_cluster' failed"
    )
    assert about.args == ("reconcile_cluster",)  # the record is left as it was
    assert formatter.format(record("the edge's routes are served")) == (
        "INFO the edge's routes are served"
    )


def test_a_repeated_failure_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    trouble = logs.Trouble(logging.getLogger("test"), "managing the workers")
    for _ in range(3):
        trouble.failed(ConnectionError("slurmrestd does not answer"))
    trouble.failed(TimeoutError("slurmrestd timed out"))
    for _ in range(3):
        trouble.ok()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "managing the workers failed: ConnectionError: slurmrestd does not answer"),
        ("ERROR", "managing the workers failed: TimeoutError: slurmrestd timed out"),
        ("INFO", "managing the workers works again"),
    ]
    assert caplog.records[0].exc_info is not None


def test_cluster_events_say_what_changed() -> None:
    gpu = {"name": "gpu", "minWorkers": 0, "maxWorkers": 2}
    spec = {"owner": "Alice", "backend": "slurm", "worker": {}, "minWorkers": 1, "maxWorkers": 4}
    body: dict[str, object] = {"spec": {**spec, "workerGroups": [gpu]}}
    assert handlers.spec_event(kopf.Reason.CREATE, body) == (
        "created for Alice on slurm; workers default 1-4, gpu 0-2"
    )
    assert handlers.spec_event(kopf.Reason.UPDATE, body) == "scaled: workers default 1-4, gpu 0-2"
    body["status"] = {"phase": "Running"}
    assert handlers.spec_event(kopf.Reason.RESUME, body).startswith("resumed (Running)")


def test_a_phase_is_logged_when_it_changes_only() -> None:
    running = {"phase": "Running", "message": "the scheduler runs"}
    assert handlers.phase_event("Pending", running) == "Pending -> Running: the scheduler runs"
    assert handlers.phase_event("Running", running) is None
    # A new cluster's first Pending: its creation is logged already.
    assert handlers.phase_event(None, {"phase": "Pending"}) is None


def test_the_operator_installs_the_quiet_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    for name in (logs.ACCESS_LOGGER, logs.KOPF_OBJECTS_LOGGER):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    monkeypatch.setattr(root, "level", root.level)
    logs.configure()
    assert [type(f) for f in logging.getLogger(logs.ACCESS_LOGGER).filters] == [logs.QuietPolls]
    assert [type(f) for f in logging.getLogger(logs.KOPF_OBJECTS_LOGGER).filters] == [
        logs.QuietHandlers
    ]
    assert isinstance(root.handlers[0].formatter, logs.ObjectFormatter)


class Stopped:
    """kopf's stop flag of a daemon: false until set."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


class StandInKube:
    """The scheduler pod's phase over the daemon's loops, and the status patches."""

    def __init__(self, phases: list[str]) -> None:
        self.phases = phases
        self.patches: list[dict[str, object]] = []

    def pod(self, namespace: str, name: str) -> client.V1Pod:
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return client.V1Pod(status=client.V1PodStatus(phase=phase))

    def patch_status(self, namespace: str, name: str, changed: dict[str, object]) -> None:
        self.patches.append(changed)


class StandInController:
    """Its batch system does not answer for the first ticks; the daemon stops after `loops`."""

    def __init__(self, stopped: Stopped, failing: int, loops: int) -> None:
        self.stopped, self.failing, self.loops = stopped, failing, loops
        self.ticks = 0

    def state(self, body: object) -> ClusterState:
        return ClusterState()

    def scheduler_stopped(self, body: object) -> None:
        """Nothing to count while the scheduler is Pending."""

    async def tick(self, body: object) -> dict[str, object]:
        self.ticks += 1
        if self.ticks >= self.loops:
            self.stopped.event.set()
        if self.ticks <= self.failing:
            raise ConnectionError("slurmrestd does not answer")
        return {}


class CountedErrors:
    """The operator's metrics as far as the daemon uses them: its errors, by handler."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def reconcile_error(self, handler: str) -> None:
        self.errors.append(handler)


def test_the_daemon_logs_a_change_once_not_at_every_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=handlers.log.name)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    fast = dataclasses.replace(
        Settings.from_values(values, "af", "facility"), worker_interval=0, status_interval=0
    )
    body = {
        "metadata": {"name": "alice-x1y2z", "namespace": "facility"},
        "spec": {"owner": "alice", "backend": "slurm"},
        "status": {"phase": "Pending"},
    }

    counted = CountedErrors()

    async def run() -> None:
        stopped = Stopped()
        memo = kopf.Memo(
            settings=fast,
            kube=StandInKube(["Pending", "Pending", "Running"]),
            workers=StandInController(stopped, failing=3, loops=8),
            metrics=counted,
        )
        await handlers.run_cluster(body=body, memo=memo, stopped=stopped)

    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if r.name == handlers.log.name]
    key = "facility/alice-x1y2z"
    assert lines == [
        f"{key}: Pending -> Running: the scheduler runs",
        f"{key}: managing the workers failed: ConnectionError: slurmrestd does not answer",
        f"{key}: managing the workers works again",
    ]
    # Logged once, counted each time (the metric shows how long it lasted).
    assert counted.errors == ["workers"] * 3
