"""The worker controller's planning (facility_operator.workers): each group's size from the
spec and the scheduler's wish, what to start within the quotas, what to retire or remove."""

from __future__ import annotations

import dataclasses

from facility_operator.backends.base import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Job,
    WorkerGroup,
)
from facility_operator.workers import Room, WorkerController, desired_sizes, plan, worker_groups

ID = "alice-x1y2z"


def group(name: str = "default", minimum: int = 0, maximum: int = 0, cores: int = 1) -> WorkerGroup:
    return WorkerGroup(name, cores, "2Gi", "4Gi", 0, "img", minimum, maximum)


def job(number: int, state: str = RUNNING, group_name: str = "default") -> Job:
    return Job(f"{ID}-{group_name}-{number}", f"id{group_name}{number}", group_name, state)


def test_groups_from_the_spec_the_default_first() -> None:
    spec = {
        "worker": {"cores": 2, "memory": "4Gi", "disk": "8Gi", "image": ""},
        "minWorkers": 1,
        "maxWorkers": 3,
        "workerGroups": [
            {"name": "gpu", "cores": 4, "memory": "16Gi", "disk": "8Gi", "gpus": 1, "image": "g:1",
             "minWorkers": 0, "maxWorkers": 2},
        ],
    }  # fmt: skip
    default, gpu = worker_groups(spec, "facility/worker:1")
    assert (default.name, default.cores, default.gpus, default.image) == (
        "default",
        2,
        0,
        "facility/worker:1",
    )
    assert (default.minimum, default.maximum, default.adaptive) == (1, 3, True)
    assert (gpu.name, gpu.gpus, gpu.image, gpu.memory_bytes) == ("gpu", 1, "g:1", 16 * 2**30)
    assert gpu.resources() == {"GPU": 1}
    assert default.resources() == {}


def test_sizes_fixed_groups_keep_theirs_adaptive_ones_share_the_target() -> None:
    groups = [group("fixed", 2, 2), group("a", 1, 3), group("b", 0, 5)]
    assert desired_sizes(groups, 0, {}) == {"fixed": 2, "a": 1, "b": 0}
    assert desired_sizes(groups, 5, {}) == {"fixed": 2, "a": 3, "b": 0}
    assert desired_sizes(groups, 7, {}) == {"fixed": 2, "a": 3, "b": 2}
    # A wish beyond every maximum is held at the maxima.
    assert desired_sizes(groups, 1000, {}) == {"fixed": 2, "a": 3, "b": 5}
    # The scheduler does not answer: adaptive groups keep what runs, within their range.
    assert desired_sizes(groups, None, {"a": 7, "b": 1}) == {"fixed": 2, "a": 3, "b": 1}


def test_missing_workers_start_within_the_quota() -> None:
    groups = [group(minimum=4, maximum=4, cores=2)]
    room = Room(
        workers=10, cores=5, workers_source="w", cores_source="operator.quotas.default.cores"
    )
    todo = plan(groups, [job(0)], connected=None, sizes={"default": 4}, room=room)
    # 3 missing, but 5 cores left fit 2 workers of 2 cores.
    assert todo.start == {"default": 2}
    assert "operator.quotas.default.cores" in todo.held_back
    assert "3 of 4 workers" in todo.held_back
    assert (room.workers, room.cores) == (8, 1)


def test_no_room_starts_nothing_and_says_why() -> None:
    room = Room(workers=0, workers_source="operator.quotas.users.alice.workers")
    todo = plan([group(minimum=2, maximum=2)], [], connected=set(), sizes={"default": 2}, room=room)
    assert todo.start == {}
    assert "operator.quotas.users.alice.workers" in todo.held_back


def test_blocked_starts_nothing() -> None:
    groups = [group(), group("gpu")]
    sizes = {"default": 1, "gpu": 1}
    todo = plan(groups, [], connected=set(), sizes=sizes, room=Room(), blocked={"gpu": "why"})
    # Only the failing group is held; the other still gets its worker.
    assert todo.start == {"default": 1}
    assert todo.held_back == "why"


def test_scale_down_removes_queued_first_then_retires_connected_newest_first() -> None:
    jobs = [job(0), job(1), job(2, PENDING), job(3)]
    connected = {job(0).name, job(1).name}
    todo = plan([group()], jobs, connected, {"default": 1}, Room())
    # Queued job 2, then job 3 (running, not connected), then connected job 1.
    assert [j.name for j in todo.remove] == [job(2).name, job(3).name]
    assert [j.name for j in todo.retire] == [job(1).name]
    assert todo.start == {}


def test_scale_down_without_an_answering_scheduler_removes_only_queued_workers() -> None:
    jobs = [job(0), job(1, PENDING)]
    todo = plan([group()], jobs, None, {"default": 0}, Room())
    assert [j.name for j in todo.remove] == [job(1).name]
    assert todo.retire == []


def test_ended_workers_are_removed_and_replaced() -> None:
    jobs = [job(0), job(1, FAILED), job(2, SUCCEEDED)]
    todo = plan([group()], jobs, {job(0).name}, {"default": 2}, Room())
    assert {j.name for j in todo.remove} == {job(1).name, job(2).name}
    assert todo.start == {"default": 1}


def test_workers_of_a_gone_group_go() -> None:
    jobs = [job(0), job(0, RUNNING, "gpu")]
    connected = {j.name for j in jobs}
    todo = plan([group()], jobs, connected, {"default": 1}, Room())
    assert [j.name for j in todo.retire] == [job(0, RUNNING, "gpu").name]


def test_room_counts_workers_and_cores() -> None:
    room = Room(workers=3, cores=None, workers_source="w")
    assert room.take(5, 1) == (3, "the worker quota (w)")
    assert room.take(1, 1) == (0, "the worker quota (w)")
    assert Room().take(5, 8) == (5, "")


# --- the controller's tick, with a stand-in backend, scheduler and Kubernetes (the real ones
# are tests/integration/test_backend_slurm.py and test_operator.py)


class StandInBackend:
    name = "stand-in"

    def __init__(self, jobs: list[Job]) -> None:
        self.listed = jobs
        self.started: list[str] = []
        self.removed: list[str] = []

    def jobs(self, key: str, owner: str = "") -> list[Job]:
        return [j for j in self.listed if j.id not in self.removed]

    def credential_secret(self, owner: str) -> str | None:
        return None

    def start(self, cluster: object, group: WorkerGroup, names: list[str]) -> None:
        self.started += names

    def remove(self, key: str, jobs: list[Job]) -> None:
        self.removed += [j.id for j in jobs]

    def log_tail(self, key: str, job: Job, lines: int = 20) -> str:
        return "the end of the log"


class StandInScheduler:
    def __init__(self, connected: dict[str, str], keeps: set[str] = frozenset()) -> None:
        self.connected, self.keeps = connected, keeps

    async def workers(self) -> dict[str, str]:
        return dict(self.connected)

    async def adaptive_target(self) -> int:
        return 0

    async def retire(self, addresses: list[str]) -> set[str]:
        return set(addresses) - self.keeps


class StandInKube:
    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return {"cluster-ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"}

    def patch_status(self, *args: object) -> None:
        pass

    def clusters_of(self, namespace: str, owner: str) -> list[dict[str, object]]:
        return []


def controller(backend: StandInBackend, scheduler: StandInScheduler) -> WorkerController:
    import yaml
    from facility_operator.settings import Settings

    from harness.paths import CHART

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    settings = Settings.from_values(values, "af", "facility")
    made = WorkerController(StandInKube(), settings)  # type: ignore[arg-type]
    made.backend = lambda name: backend  # type: ignore[assignment,method-assign]
    made.scheduler = lambda body: scheduler  # type: ignore[assignment,method-assign]
    return made


def body(minimum: int, maximum: int, groups: list[dict[str, object]] | None = None) -> dict:
    return {
        "metadata": {"name": ID, "namespace": "facility", "uid": "u", "generation": 1},
        "spec": {"owner": "alice", "backend": "slurm", "worker": {"cores": 1},
                 "minWorkers": minimum, "maxWorkers": maximum, "workerGroups": groups or []},
    }  # fmt: skip


def test_a_worker_the_scheduler_keeps_is_not_removed() -> None:
    import asyncio

    jobs = [job(0), job(1)]
    backend = StandInBackend(jobs)
    scheduler = StandInScheduler({j.name: f"tls://w{j.number}" for j in jobs}, keeps={"tls://w1"})
    status = asyncio.run(controller(backend, scheduler).tick(body(0, 0)))
    # Job 0 was retired, then removed; job 1 holds results the scheduler could not move.
    assert backend.removed == [job(0).id]
    assert "could not retire" in status["heldBack"]


def test_failures_block_their_own_group_and_a_restart_counts_none_twice() -> None:
    import asyncio

    gpu = [{"name": "gpu", "cores": 1, "minWorkers": 1, "maxWorkers": 1}]
    failed = [job(n, FAILED, "gpu") for n in range(3)]
    backend = StandInBackend(failed)
    first = controller(backend, StandInScheduler({}))
    # The first tick after a start learns what ended before it: recorded, not counted.
    status = asyncio.run(first.tick(body(1, 1, gpu)))
    assert status["startFailures"] == {}
    assert len(status["recentFailures"]) == 3
    assert status["recentFailures"][0]["log"] == "the end of the log"
    # Then each new failure of the gpu group counts, and at the limit only gpu stops.
    limit = first.settings.max_start_failures
    for n in range(3, 3 + limit):
        backend.listed.append(job(n, FAILED, "gpu"))
        status = asyncio.run(first.tick(body(1, 1, gpu)))
    assert status["startFailures"] == {"gpu": limit}
    assert status["heldBack"].startswith(f"gpu: {limit} workers in a row ended")
    started = list(backend.started)
    asyncio.run(first.tick(body(1, 1, gpu)))
    assert [n for n in backend.started[len(started) :] if "-gpu-" in n] == []


def test_the_log_says_each_worker_event_once_not_at_every_tick(caplog) -> None:
    """A worker that connects, one that fails, a group held back by its failures: one line
    each, however many ticks see the same."""
    import asyncio
    import logging

    caplog.set_level(logging.INFO, logger="facility_operator.workers")
    gpu = [{"name": "gpu", "cores": 1, "minWorkers": 1, "maxWorkers": 1}]
    backend = StandInBackend([job(0)])
    scheduler = StandInScheduler({})
    made = controller(backend, scheduler)
    made.settings = dataclasses.replace(made.settings, max_start_failures=1)
    asyncio.run(made.tick(body(1, 1, gpu)))  # the first tick learns what is there
    scheduler.connected = {job(0).name: "tls://w0"}
    backend.listed.append(job(1, FAILED, "gpu"))
    for _ in range(3):
        asyncio.run(made.tick(body(1, 1, gpu)))
    lines = [r.getMessage() for r in caplog.records if r.name == "facility_operator.workers"]
    key = f"facility/{ID}"
    assert lines.count(f"{key}: worker {job(0).name} connected") == 1
    assert lines.count(f"{key}: worker {job(1, FAILED, 'gpu').name} failed: ") == 1
    held = [line for line in lines if "workers in a row ended" in line]
    assert len(held) == 1, lines


def test_the_client_dials_the_edge_at_the_port_it_is_given() -> None:
    """edge_host alone: the public port of the cluster's address; host:port (a node port, from a
    laptop): that port."""
    from facility_client.cluster import edge_address

    assert edge_address("edge.facility.svc", 443) == "tls://edge.facility.svc:443"
    assert edge_address("10.0.0.5:30443", 443) == "tls://10.0.0.5:30443"


def test_a_clusters_pod_reads_with_a_private_copy_of_the_mounted_token(
    tmp_path, monkeypatch
) -> None:
    """XRootD's ztn refuses a token file others may read, which a Secret's volume gives
    (0440): the pod's programs point $BEARER_TOKEN_FILE at a 0600 copy of their own, made when
    the Secret appears and again when it changes."""
    import os
    import stat

    from facility_client.tokens import PrivateCopy

    mounted = tmp_path / "secret" / "token"
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(mounted))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    copy = PrivateCopy.from_env()
    assert copy is not None
    assert copy.private == tmp_path / "run" / f"bt_u{os.getuid()}"
    assert copy.refresh() is False  # no Secret yet: nothing to copy
    mounted.parent.mkdir()
    mounted.write_text("first")
    mounted.chmod(0o440)
    copy.start()
    assert os.environ["BEARER_TOKEN_FILE"] == str(copy.private)
    assert copy.private.read_text() == "first"
    assert stat.S_IMODE(copy.private.stat().st_mode) == 0o600
    mounted.chmod(0o640)
    mounted.write_text("second")
    assert copy.refresh() is True
    assert copy.private.read_text() == "second"
