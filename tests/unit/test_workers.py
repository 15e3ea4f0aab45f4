"""The worker controller's planning (facility_operator.workers): each group's size from the
spec and the scheduler's wish, what to start within the quotas, what to retire or remove."""

from __future__ import annotations

from facility_operator.backends.base import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Job,
    WorkerGroup,
)
from facility_operator.workers import Room, desired_sizes, plan, worker_groups

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
    todo = plan([group()], [], connected=set(), sizes={"default": 1}, room=Room(), blocked="why")
    assert todo.start == {}
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
