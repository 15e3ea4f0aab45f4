"""Request bodies of the user API, checked field by field before anything reaches Kubernetes.

The bounds are the CRD's (charts/facility/crds/daskcluster.yaml; a unit test keeps the two
equal): checking them here names the field in words a user understands, and lets the quota
arithmetic trust the numbers. What depends on the whole object (minWorkers <= maxWorkers, also
across a PATCH of one of them) is left to the API server, whose refusal the API passes on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from facility_operator.errors import ApiError
from facility_operator.settings import Settings

WORKERS = (0, 10000)
CORES = (1, 128)
IMAGE_LENGTH = 512
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")

GPUS = (0, 16)
GROUPS = 8
GROUP_NAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")

CLUSTER_FIELDS = ("backend", "worker", "minWorkers", "maxWorkers", "idleTimeout", "workerGroups")
WORKER_FIELDS = ("cores", "memory", "disk", "image", "gpus")
GROUP_FIELDS = ("name", *WORKER_FIELDS, "minWorkers", "maxWorkers")
SCALE_FIELDS = ("minWorkers", "maxWorkers", "group")
TOKEN_LENGTH = 16384  # far above any JWT; a Secret holds at most 1 MiB


def refuse(field: str | None, message: str) -> ApiError:
    return ApiError(400, message, field)


def json_object(body: Any, where: str | None, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """body as a JSON object whose keys are all in allowed; an unknown key is refused by name."""
    what = f"{where} " if where else "the body "
    if not isinstance(body, Mapping):
        raise refuse(where, f"{what}must be a JSON object")
    for key in body:
        if key not in allowed:
            field = f"{where}.{key}" if where else str(key)
            raise refuse(field, f"unknown field {field}; known: {', '.join(allowed)}")
    return body


def integer(value: Any, field: str, low: int, high: int, unit: str = "") -> int:
    # JSON true is a Python int: refuse it as what it is, not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise refuse(field, f"{field} must be an integer between {low} and {high}{unit}")
    return value


def worker(
    body: Any, where: str = "worker", allowed: tuple[str, ...] = WORKER_FIELDS
) -> dict[str, Any]:
    given = json_object(body, where, allowed)
    out: dict[str, Any] = {}
    if "cores" in given:
        out["cores"] = integer(given["cores"], f"{where}.cores", *CORES)
    if "gpus" in given:
        out["gpus"] = integer(given["gpus"], f"{where}.gpus", *GPUS)
    for name in ("memory", "disk"):
        if name in given:
            value = given[name]
            if not isinstance(value, str) or not QUANTITY.match(value):
                raise refuse(f"{where}.{name}", f"{where}.{name} must be a quantity such as 4Gi")
            out[name] = value
    if "image" in given:
        image = given["image"]
        if not isinstance(image, str) or len(image) > IMAGE_LENGTH:
            message = f"{where}.image must be an image name of at most {IMAGE_LENGTH} characters"
            raise refuse(f"{where}.image", message)
        out["image"] = image
    return out


def worker_groups(body: Any) -> list[dict[str, Any]]:
    """spec.workerGroups: named groups beside the default one, each with its own range."""
    if not isinstance(body, list) or len(body) > GROUPS:
        raise refuse("workerGroups", f"workerGroups must be a list of at most {GROUPS} groups")
    out, seen = [], set()
    for index, given in enumerate(body):
        where = f"workerGroups[{index}]"
        group = worker(given, where, GROUP_FIELDS)
        name = given.get("name")
        if not isinstance(name, str) or not GROUP_NAME.match(name) or name == "default":
            raise refuse(
                f"{where}.name",
                f"{where}.name must be 1-15 lower-case letters and digits, starting with a"
                ' letter, and not "default"',
            )
        if name in seen:
            raise refuse(f"{where}.name", f"{where}.name: two groups are called {name}")
        seen.add(name)
        group["name"] = name
        for key in ("minWorkers", "maxWorkers"):
            if key in given:
                group[key] = integer(given[key], f"{where}.{key}", *WORKERS)
        out.append(group)
    return out


def idle_timeout(value: Any, settings: Settings) -> int:
    longest = settings.max_idle_timeout
    if not longest:
        return integer(value, "idleTimeout", 0, 2**31 - 1, " seconds (0: never)")
    # A site that sets a longest timeout also rules out "never".
    unit = " seconds (operator.idleTimeout.max)"
    return integer(value, "idleTimeout", 1, longest, unit)


def cluster_request(body: Any, settings: Settings) -> dict[str, Any]:
    """The spec (without owner) that a POST /clusters body asks for, with the site's defaults."""
    given = json_object(body, None, CLUSTER_FIELDS)
    backend = given.get("backend", settings.default_backend)
    if backend not in settings.backends:
        known = ", ".join(sorted(settings.backends))
        raise refuse("backend", f"backend must be one of {known}")
    spec: dict[str, Any] = {
        "backend": backend,
        "idleTimeout": idle_timeout(given.get("idleTimeout", settings.idle_timeout), settings),
    }
    if "worker" in given:
        spec["worker"] = worker(given["worker"])
    if "workerGroups" in given:
        spec["workerGroups"] = worker_groups(given["workerGroups"])
    for name in ("minWorkers", "maxWorkers"):
        if name in given:
            spec[name] = integer(given[name], name, *WORKERS)
    return spec


def scale_request(body: Any) -> tuple[str | None, dict[str, int]]:
    """(worker group or None for the default one, the minWorkers and maxWorkers) that a PATCH
    body asks for (at least one of them)."""
    given = dict(json_object(body, None, SCALE_FIELDS))
    group = given.pop("group", None)
    if group is not None and not isinstance(group, str):
        raise refuse("group", "group must be the name of one of the cluster's worker groups")
    if not given:
        raise refuse(None, "send minWorkers, maxWorkers or both")
    return group, {name: integer(value, name, *WORKERS) for name, value in given.items()}


def token_request(body: Any) -> str:
    """The bearer token that a PUT .../token body shares with the cluster's pods."""
    given = json_object(body, None, ("token",))
    token = given.get("token")
    if not isinstance(token, str) or not token.strip() or len(token) > TOKEN_LENGTH:
        raise refuse(
            "token", f"token must be a non-empty string of at most {TOKEN_LENGTH} characters"
        )
    if any(c.isspace() for c in token.strip()):
        raise refuse("token", "token must be one bearer token (no spaces or line breaks inside)")
    return token.strip()
