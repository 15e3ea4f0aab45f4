"""The user API's pure parts: request bodies, quota arithmetic, cluster names, token headers."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import yaml
from facility_operator import quotas, validation
from facility_operator.errors import ApiError
from facility_operator.hub_auth import token_of
from facility_operator.names import new_cluster_id, user_slug
from facility_operator.settings import Settings

from harness.paths import CHART

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SETTINGS = Settings.from_values(VALUES, "af-facility", "facility")
CRD = yaml.safe_load((CHART / "crds" / "daskcluster.yaml").read_text())
SPEC = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def refusal(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_bounds_are_the_crds() -> None:
    # The API names a bad field in its own words; the API server must agree on what is bad.
    props, worker = SPEC["properties"], SPEC["properties"]["worker"]["properties"]
    for name in ("minWorkers", "maxWorkers"):
        assert (props[name]["minimum"], props[name]["maximum"]) == validation.WORKERS
    assert (worker["cores"]["minimum"], worker["cores"]["maximum"]) == validation.CORES
    assert worker["memory"]["pattern"] == worker["disk"]["pattern"] == validation.QUANTITY.pattern
    assert worker["image"]["maxLength"] == validation.IMAGE_LENGTH
    assert set(SETTINGS.backends) <= set(props["backend"]["enum"])
    assert set(validation.CLUSTER_FIELDS) == set(props) - {"owner"}
    assert set(validation.WORKER_FIELDS) == set(worker)
    assert (worker["gpus"]["minimum"], worker["gpus"]["maximum"]) == validation.GPUS
    groups = props["workerGroups"]
    assert groups["maxItems"] == validation.GROUPS
    assert set(validation.GROUP_FIELDS) == set(groups["items"]["properties"])
    assert groups["items"]["properties"]["name"]["pattern"] == validation.GROUP_NAME.pattern


def test_a_request_gets_the_sites_defaults() -> None:
    assert validation.cluster_request({}, SETTINGS) == {"backend": "htcondor", "idleTimeout": 3600}
    body = {"backend": "slurm", "worker": {"cores": 4, "memory": "8Gi", "disk": "20G",
            "image": "x/y:1"}, "minWorkers": 1, "maxWorkers": 10, "idleTimeout": 60}  # fmt: skip
    assert validation.cluster_request(body, SETTINGS) == body


BAD_BODIES = [
    ([], None, "the body must be a JSON object"),
    ({"workers": 3}, "workers", "unknown field workers; known: backend, worker, minWorkers"),
    ({"worker": {"tpus": 1}}, "worker.tpus", "unknown field worker.tpus"),
    ({"worker": {"gpus": 17}}, "worker.gpus", "worker.gpus must be an integer between 0 and 16"),
    ({"workerGroups": {}}, "workerGroups", "workerGroups must be a list of at most 8 groups"),
    (
        {"workerGroups": [{"name": "gpu", "maxWorkers": -1}]},
        "workerGroups[0].maxWorkers",
        "between 0 and 10000",
    ),
    ({"worker": 4}, "worker", "worker must be a JSON object"),
    ({"worker": {"cores": 0}}, "worker.cores", "worker.cores must be an integer between 1 and 128"),
    ({"worker": {"cores": 129}}, "worker.cores", "between 1 and 128"),
    ({"worker": {"cores": "2"}}, "worker.cores", "between 1 and 128"),
    ({"worker": {"cores": True}}, "worker.cores", "between 1 and 128"),
    ({"worker": {"memory": "lots"}}, "worker.memory", "worker.memory must be a quantity"),
    ({"worker": {"disk": 4}}, "worker.disk", "worker.disk must be a quantity"),
    ({"worker": {"image": "x" * 513}}, "worker.image", "at most 512 characters"),
    ({"backend": "lsf"}, "backend", "backend must be one of htcondor, kubernetes, slurm"),
    ({"maxWorkers": -1}, "maxWorkers", "maxWorkers must be an integer between 0 and 10000"),
    ({"minWorkers": 2.5}, "minWorkers", "minWorkers must be an integer between 0 and 10000"),
    ({"idleTimeout": 86401}, "idleTimeout", "between 1 and 86400 seconds (operator.idleTimeout"),
    ({"idleTimeout": 0}, "idleTimeout", "between 1 and 86400"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
def test_bad_requests_name_the_field(body: Any, field: str | None, message: str) -> None:
    error = refusal(validation.cluster_request, body, SETTINGS)
    assert (error.status, error.field) == (400, field)
    assert message in error.message


def test_never_idle_only_where_the_site_allows_it() -> None:
    unlimited = dataclasses.replace(SETTINGS, max_idle_timeout=0)
    assert validation.cluster_request({"idleTimeout": 0}, unlimited)["idleTimeout"] == 0


def test_scale_requests() -> None:
    assert validation.scale_request({"minWorkers": 2, "maxWorkers": 2}) == (
        None, {"minWorkers": 2, "maxWorkers": 2},
    )  # fmt: skip
    assert validation.scale_request({"maxWorkers": 5}) == (None, {"maxWorkers": 5})
    assert validation.scale_request({"group": "gpu", "maxWorkers": 5}) == ("gpu", {"maxWorkers": 5})
    # Across fields (minWorkers <= maxWorkers) is the API server's check.
    assert validation.scale_request({"minWorkers": 9, "maxWorkers": 1})[1]["minWorkers"] == 9
    assert refusal(validation.scale_request, {"group": 3, "maxWorkers": 1}).field == "group"
    assert refusal(validation.scale_request, {}).message == "send minWorkers, maxWorkers or both"
    assert refusal(validation.scale_request, {"backend": "slurm"}).field == "backend"
    assert refusal(validation.scale_request, {"maxWorkers": 10001}).field == "maxWorkers"


QUOTAS = {
    "default": {"clusters": 2, "workers": 50, "cores": 100},
    "users": {"carol": {"workers": 500}},
    "groups": {"cms": {"clusters": 4, "cores": 400}, "atlas": {"clusters": 3, "cores": 800}},
}


def by_kind(found: list[quotas.Limit]) -> dict[str, tuple[int, str]]:
    return {limit.kind: (limit.value, limit.source) for limit in found}


def test_limits_user_then_most_generous_group_then_default() -> None:
    assert by_kind(quotas.limits(QUOTAS, "alice", [])) == {
        "clusters": (2, "operator.quotas.default.clusters"),
        "workers": (50, "operator.quotas.default.workers"),
        "cores": (100, "operator.quotas.default.cores"),
    }
    assert by_kind(quotas.limits(QUOTAS, "bob", ["cms", "atlas", "other"])) == {
        "clusters": (4, "operator.quotas.groups.cms.clusters"),
        "workers": (50, "operator.quotas.default.workers"),
        "cores": (800, "operator.quotas.groups.atlas.cores"),
    }
    carol = by_kind(quotas.limits(QUOTAS, "carol", ["cms"]))
    assert carol["workers"] == (500, "operator.quotas.users.carol.workers")
    assert carol["clusters"] == (4, "operator.quotas.groups.cms.clusters")
    assert quotas.limits({"default": {"clusters": 1}}, "dave", []) == [
        quotas.Limit("clusters", 1, "operator.quotas.default.clusters")
    ]


def spec(max_workers: int, cores: int = 1) -> dict[str, Any]:
    return {"maxWorkers": max_workers, "worker": {"cores": cores}}


def test_usage_sums_workers_and_cores() -> None:
    assert quotas.usage([spec(10, 2), spec(3)]) == {"clusters": 2, "workers": 13, "cores": 23}


def test_quota_refusals_name_the_limit() -> None:
    limits = quotas.limits(QUOTAS, "alice", [])
    quotas.check(limits, "alice", [spec(10)], spec(40))  # 50 workers: at the limit, allowed
    error = refusal(quotas.check, limits, "alice", [spec(1), spec(1)], spec(1))
    assert (error.status, error.field) == (403, None)
    assert error.message == (
        "quota exceeded: at most 2 clusters for alice, and this would make 3 "
        "(operator.quotas.default.clusters)"
    )
    error = refusal(quotas.check, limits, "alice", [spec(10)], spec(41))
    assert error.field == "maxWorkers"
    assert "at most 50 workers for alice (maxWorkers summed" in error.message
    assert error.message.endswith("this would make 51 (operator.quotas.default.workers)")
    error = refusal(quotas.check, limits, "alice", [], spec(30, 4))
    assert "at most 100 cores" in error.message
    assert "would make 120 (operator.quotas.default.cores)" in error.message


def test_a_change_within_or_below_the_limit_is_allowed() -> None:
    limits = quotas.limits(QUOTAS, "alice", [])
    # Scaling one cluster counts it once, not twice.
    quotas.check(limits, "alice", [spec(10)], spec(40), current=spec(30))
    error = refusal(quotas.check, limits, "alice", [spec(10)], spec(41), current=spec(30))
    assert "would make 51" in error.message
    # Over a limit lowered since: scaling down is still allowed, scaling up is not.
    quotas.check(limits, "alice", [spec(60)], spec(5), current=spec(10))
    assert refusal(quotas.check, limits, "alice", [spec(60)], spec(11), current=spec(10))


# A Service's name (DNS-1035): the scheduler's is `<cluster-id>-scheduler`.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("name", "slug", "prefix"),
    [
        ("alice", "alice", "alice"),
        ("Alice.Smith@cern.ch", "alice-smith-cern-ch", "alice-smith-cern-ch"),
        ("_bob_", "bob", "bob"),
        ("x" * 60, "x" * 40, "x" * 40),
        ("élise", "lise", "lise"),
        ("???", "user", "user"),
        ("1alice", "1alice", "u1alice"),
        ("9" * 70, "9" * 40, "u" + "9" * 40),
    ],
)
def test_cluster_ids_are_dns_1035_labels(name: str, slug: str, prefix: str) -> None:
    assert user_slug(name) == slug
    cluster = new_cluster_id(name)
    assert re.fullmatch(rf"{re.escape(prefix)}-[a-z0-9]{{5}}", cluster)
    assert DNS_1035_LABEL.match(f"{cluster}-scheduler")
    assert len(f"{cluster}-scheduler") <= 63


def test_token_headers() -> None:
    assert token_of("token abc") == token_of("Bearer abc") == "abc"
    for header in (None, "", "token", "token  ", "Basic abc", "abc"):
        error = refusal(token_of, header)
        assert error.status == 401
        assert error.message == "send your JupyterHub token: Authorization: token <token>"
