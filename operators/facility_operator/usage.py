"""What each user's workers used: core-seconds and worker-seconds, per user and per group, so
that a site can say who used what in a month (the operator's /metrics, the admins' GET /usage).

Every look at a cluster's workers (WorkerController.tick) tells the ledger how many of them run
and with how many cores. The time since the cluster's previous look is counted at the mean of
the two looks: a worker that started or ended in between counts for half of it, so the error
is at most one operator.workers.interval per start or end, and averages out. The clusters of a
user, and the workers of a cluster, add up. A worker counts while its job or pod runs (queued
ones hold no cores), with the cores of its group's spec. A user's usage counts once in each of
the groups the user API recorded for the cluster (NO_GROUP when there are none).

The totals outlive the operator in a ConfigMap it owns (Settings.usage_config_map), written
whole every FLUSH_SECONDS and when the operator stops. One write for the facility however many
clusters run; absolute totals rather than increments, so that a repeated or retried write
changes nothing and a failed one is made good by the next; and kept when a cluster is deleted,
which a field of the DaskCluster's status would not be. An operator killed between two writes
loses at most FLUSH_SECONDS of usage, and the time no operator runs is not counted: after a
start, the first look at a cluster only sets its clock. Several of them cannot count twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from facility_operator import resources as res
from facility_operator.kube import Kube
from facility_operator.settings import Settings

NO_GROUP = ""  # the group of usage by a user in no group
FLUSH_SECONDS = 60.0  # the most usage an operator killed between two writes loses
DATA_KEY = "usage.json"

Clock = Callable[[], float]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Used:
    core_seconds: float = 0.0
    worker_seconds: float = 0.0

    def add(self, other: Used) -> None:
        self.core_seconds += other.core_seconds
        self.worker_seconds += other.worker_seconds

    def as_json(self) -> dict[str, float]:
        return {"coreSeconds": self.core_seconds, "workerSeconds": self.worker_seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Used:
        return cls(float(data.get("coreSeconds", 0)), float(data.get("workerSeconds", 0)))


@dataclass(frozen=True)
class Look:
    """What one cluster had running when the ledger last heard of it."""

    owner: str
    groups: tuple[str, ...]
    workers: int
    cores: int
    at: float  # the ledger's clock


class UsageLedger:
    """Usage totals by user, and by user and group; `clock` (seconds, monotonic) is injectable
    so that tests pass time without waiting."""

    def __init__(self, since: str, clock: Clock = time.monotonic) -> None:
        self.since = since  # when the facility began counting (RFC 3339)
        self.clock = clock
        self.users: dict[str, Used] = {}
        self.by_group: dict[tuple[str, str], Used] = {}  # (user, group)
        self.looks: dict[str, Look] = {}  # by cluster key
        self.changed = False  # since the last save

    def running(
        self, key: str, owner: str, groups: Iterable[str], workers: int, cores: int
    ) -> None:
        """The cluster `key` of `owner` runs `workers` workers with `cores` cores in all now."""
        now = self.clock()
        previous = self.looks.get(key)
        if previous is not None:
            elapsed = now - previous.at
            self._count(
                previous,
                Used(
                    core_seconds=elapsed * (previous.cores + cores) / 2,
                    worker_seconds=elapsed * (previous.workers + workers) / 2,
                ),
            )
        self.looks[key] = Look(owner, tuple(sorted(groups)) or (NO_GROUP,), workers, cores, now)

    def ended(self, key: str) -> None:
        """The cluster's workers were removed now: what ran at the last look ran until now."""
        previous = self.looks.pop(key, None)
        if previous is not None:
            elapsed = self.clock() - previous.at
            self._count(previous, Used(elapsed * previous.cores, elapsed * previous.workers))

    def _count(self, look: Look, used: Used) -> None:
        if not used.core_seconds and not used.worker_seconds:
            return
        self.users.setdefault(look.owner, Used()).add(used)
        for group in look.groups:
            self.by_group.setdefault((look.owner, group), Used()).add(used)
        self.changed = True

    def report(self, user: str | None = None) -> dict[str, Any]:
        """GET /usage's answer: by user (each with their groups) and by group, for every user
        or one."""
        names = sorted(self.users) if user is None else [user] if user in self.users else []
        users: dict[str, Any] = {}
        groups: dict[str, Any] = {}
        for name in names:
            mine = {g: u for (owner, g), u in sorted(self.by_group.items()) if owner == name}
            users[name] = {
                **self.users[name].as_json(),
                "groups": {g: u.as_json() for g, u in mine.items() if g != NO_GROUP},
            }
            for group, used in mine.items():
                if group == NO_GROUP:
                    continue
                total = groups.setdefault(group, {"used": Used(), "users": []})
                total["used"].add(used)
                total["users"].append(name)
        return {
            "since": self.since,
            "until": utc_now(),
            "users": users,
            "groups": {g: {**t["used"].as_json(), "users": t["users"]} for g, t in groups.items()},
        }

    def to_json(self) -> str:
        users = {
            name: {
                **used.as_json(),
                "groups": {
                    g: u.as_json()
                    for (owner, g), u in sorted(self.by_group.items())
                    if owner == name
                },
            }
            for name, used in sorted(self.users.items())
        }
        return json.dumps({"since": self.since, "users": users}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, clock: Clock = time.monotonic) -> UsageLedger:
        data = json.loads(text)
        ledger = cls(str(data["since"]), clock)
        for name, used in (data.get("users") or {}).items():
            ledger.users[name] = Used.from_json(used)
            for group, in_group in (used.get("groups") or {}).items():
                ledger.by_group[(name, group)] = Used.from_json(in_group)
        return ledger


def config_map(settings: Settings, ledger: UsageLedger) -> dict[str, Any]:
    """The ledger's ConfigMap: no owner, so that it outlives every cluster (and the release:
    a site's accounting is not the chart's to delete)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": settings.usage_config_map,
            "namespace": settings.namespace,
            "labels": {
                res.LABEL_MANAGED_BY: res.MANAGED_BY,
                res.LABEL_INSTANCE: settings.release,
                res.LABEL_COMPONENT: "operator-usage",
            },
        },
        "data": {DATA_KEY: ledger.to_json()},
    }


class UsageStore:
    """The ledger in its ConfigMap (blocking calls: run them in threads)."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings

    def load(self, clock: Clock = time.monotonic) -> UsageLedger:
        """The totals so far; a new ledger, counting from now, when there are none."""
        name = self.settings.usage_config_map
        data = self.kube.config_map_data(self.settings.namespace, name)
        if data is not None and DATA_KEY in data:
            try:
                return UsageLedger.from_json(data[DATA_KEY], clock)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                # Loud: counting from zero would overwrite the site's accounting at the next save.
                raise RuntimeError(
                    f"the ConfigMap {name} holds no usage the operator can read ({error!r}):"
                    f" fix its {DATA_KEY}, or delete it to count from zero"
                ) from error
        ledger = UsageLedger(utc_now(), clock)
        self.kube.create(config_map(self.settings, ledger))
        return ledger

    def save(self, ledger: UsageLedger) -> None:
        """Write the totals, when they changed since the last write."""
        if not ledger.changed:
            return
        ledger.changed = False
        try:
            self.kube.replace_config_map(config_map(self.settings, ledger))
        except Exception:
            ledger.changed = True  # the next write carries these totals too
            raise
