"""What a user may hold at once: clusters, workers (the sum of their clusters' maxWorkers) and
cores (the sum of maxWorkers times worker.cores).

The chart's operator.quotas gives default, users and groups entries. Each limit is looked up on
its own: the user's own entry, else the most generous of the entries of the user's groups, else
default; a limit that none of them sets is no limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from facility_operator.errors import ApiError

log = logging.getLogger(__name__)

KINDS = ("clusters", "workers", "cores")
# What each sum counts, for the refusal; and the request field that moves it.
COUNTED = {
    "clusters": "",
    "workers": " (maxWorkers summed over their clusters)",
    "cores": " (maxWorkers times worker.cores, summed over their clusters)",
}
FIELDS = {"clusters": None, "workers": "maxWorkers", "cores": "maxWorkers"}


@dataclass(frozen=True)
class Limit:
    kind: str  # clusters, workers or cores
    value: int
    source: str  # where the chart sets it, e.g. operator.quotas.groups.cms.workers


class QuotaExceeded(ApiError):
    """A refusal (403) by one of the user's limits, which it names (the operator counts them)."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(403, message, FIELDS[limit.kind])
        self.limit = limit


def limits(quotas: Mapping[str, Any], user: str, groups: Iterable[str]) -> list[Limit]:
    """The user's limits, from the chart's operator.quotas."""
    users = quotas.get("users") or {}
    by_group = quotas.get("groups") or {}
    default = quotas.get("default") or {}
    out = []
    for kind in KINDS:
        own = (users.get(user) or {}).get(kind)
        if own is not None:
            out.append(Limit(kind, int(own), f"operator.quotas.users.{user}.{kind}"))
            continue
        granted = [
            (int(value), group)
            for group in sorted(groups)
            if (value := (by_group.get(group) or {}).get(kind)) is not None
        ]
        if granted:
            value, group = max(granted, key=lambda pair: pair[0])
            out.append(Limit(kind, value, f"operator.quotas.groups.{group}.{kind}"))
        elif default.get(kind) is not None:
            out.append(Limit(kind, int(default[kind]), f"operator.quotas.default.{kind}"))
    return out


def usage(specs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """What these DaskCluster specs (as the API server stores them, defaults filled) hold: the
    default worker group and every one of spec.workerGroups."""
    totals = dict.fromkeys(KINDS, 0)
    for spec in specs:
        totals["clusters"] += 1
        for group in [
            {**spec["worker"], "maxWorkers": spec["maxWorkers"]},
            *spec.get("workerGroups", []),
        ]:
            totals["workers"] += group["maxWorkers"]
            totals["cores"] += group["maxWorkers"] * group["cores"]
    return totals


def check(
    limits: Iterable[Limit],
    user: str,
    others: list[Mapping[str, Any]],
    proposed: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> None:
    """Refuse (403, naming the limit) a new cluster, or a change of `current` into `proposed`,
    that takes the user past a limit. A change that lowers a sum is always allowed, so a user
    over a limit (lowered since) can still scale down."""
    before = usage([*others, current] if current is not None else others)
    after = usage([*others, proposed])
    for limit in limits:
        wanted = after[limit.kind]
        if wanted > limit.value and wanted > before[limit.kind]:
            message = (
                f"quota exceeded: at most {limit.value} {limit.kind} for {user}"
                f"{COUNTED[limit.kind]}, and this would make {wanted} ({limit.source})"
            )
            # The access line says only 403: the operator's log says which limit held.
            log.info("refused: %s", message)
            raise QuotaExceeded(limit, message)
