"""The users' HTTP API (operators/README.md, "User API"): a JupyterHub service in the operator.

Every request carries the user's JupyterHub token; the hub says whose it is (hub_auth). A user
sees and changes only their own clusters: somebody else's answers 404, as a missing one does.
A new cluster is owned by the user's notebook pod, so stopping the server ends the cluster; a
user with no server running is refused (409): a cluster nobody's server owns would outlive its
user until its idle timeout.

The hub's proxy forwards /services/dask/... with its prefix; notebooks call the operator's
Service directly without it. Both are served.

GET /usage (the hub's admins only) answers what each user's workers used, and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes import client

from facility_operator import kube_config, quotas, resources, validation
from facility_operator.backends.base import is_worker_of
from facility_operator.clusters import Clusters
from facility_operator.errors import ApiError
from facility_operator.hub_auth import HubAuth, User
from facility_operator.kube import Kube
from facility_operator.metrics import ClusterIndex, OperatorMetrics
from facility_operator.names import new_cluster_id, user_slug
from facility_operator.settings import Settings
from facility_operator.workers import WorkerController

SERVICE_NAME = "dask"  # the JupyterHub service's name (hub_config.services.DASK_SERVICE)
PREFIX = f"/services/{SERVICE_NAME}"

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
CLUSTERS = web.AppKey("clusters", Clusters)
HUB = web.AppKey("hub", HubAuth)
WORKERS = web.AppKey("workers", WorkerController)
METRICS = web.AppKey("metrics", OperatorMetrics)
# One change at a time per user: a quota check and the create or patch it allows happen
# together (the operator runs as one replica).
LOCKS = web.AppKey("locks", defaultdict)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer but a success is JSON {"error", "field"}."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return ApiError(error.status, error.reason).response()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "internal error of the operator's API; see its log").response()


async def caller(request: web.Request) -> User:
    return await request.app[HUB].user(request.headers.get("Authorization"))


async def body_of(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as error:
        raise ApiError(400, f"the body is not JSON ({error})") from error


def check_quotas(
    request: web.Request,
    user: User,
    others: list[Mapping[str, Any]],
    proposed: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> None:
    """quotas.check for the caller, counting a refusal by the limit that held."""
    limits = quotas.limits(request.app[SETTINGS].quotas, user.name, user.groups)
    try:
        quotas.check(limits, user.name, others, proposed, current)
    except quotas.QuotaExceeded as refusal:
        counter = request.app[METRICS].quota_refusals
        counter.labels(user=user.name, quota=refusal.limit.kind).inc()
        raise


def view(cluster: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A DaskCluster as the API shows it (operators/README.md, "User API")."""
    spec, status = cluster["spec"], cluster.get("status") or {}
    return {
        "id": resources.cluster_id(cluster),
        "owner": spec["owner"],
        "backend": spec["backend"],
        "worker": spec["worker"],
        "minWorkers": spec["minWorkers"],
        "maxWorkers": spec["maxWorkers"],
        "workerGroups": spec.get("workerGroups", []),
        "idleTimeout": spec["idleTimeout"],
        "address": resources.scheduler_address(settings, cluster),
        "phase": status.get("phase", "Pending"),
        "workers": status.get("workers", 0),
        "workerStates": status.get("workerStates", {}),
        "heldBack": status.get("heldBack", ""),
        "dashboardLink": status.get("dashboardLink", ""),
        "message": status.get("message", ""),
        "created": cluster["metadata"]["creationTimestamp"],
    }


def manifest(
    settings: Settings, user: User, cluster_id: str, spec: dict[str, Any], pod: client.V1Pod
) -> dict[str, Any]:
    return {
        "apiVersion": f"{resources.GROUP}/{resources.VERSION}",
        "kind": resources.KIND,
        "metadata": {
            "name": cluster_id,
            # The owner's groups, for the quotas the operator applies to the workers.
            "annotations": {resources.ANNOTATION_OWNER_GROUPS: json.dumps(sorted(user.groups))},
            "labels": {
                resources.LABEL_CLUSTER: cluster_id,
                resources.LABEL_OWNER: user_slug(user.name),
                resources.LABEL_MANAGED_BY: resources.MANAGED_BY,
                # The release's NetworkPolicies select the cluster's pods by it; the objects
                # the operator and the Kubernetes backend make copy it from here.
                resources.LABEL_INSTANCE: settings.release,
            },
            # Not a controller, and no blockOwnerDeletion: the pod goes at once when the
            # server stops, and the garbage collector then deletes the cluster.
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                }
            ],
        },
        "spec": {"owner": user.name, **spec},
    }


async def create_cluster(request: web.Request) -> web.Response:
    user = await caller(request)
    settings, clusters = request.app[SETTINGS], request.app[CLUSTERS]
    spec = validation.cluster_request(await body_of(request), settings)
    async with request.app[LOCKS][user.name]:
        pod = await clusters.server_pod(user.name)
        if pod is None:
            message = f"{user.name} has no server running: start your server first"
            raise ApiError(409, message)
        body = manifest(settings, user, new_cluster_id(user.name), spec, pod)
        # The API server validates the object and fills its defaults; the quota counts that.
        proposed = await clusters.create(body, dry_run=True)
        mine = [c["spec"] for c in await clusters.mine(user.name)]
        check_quotas(request, user, mine, proposed["spec"])
        created = await clusters.create(body)
    return web.json_response(view(created, settings), status=201)


async def list_clusters(request: web.Request) -> web.Response:
    user = await caller(request)
    found = await request.app[CLUSTERS].mine(user.name)
    return web.json_response([view(c, request.app[SETTINGS]) for c in found])


async def get_cluster(request: web.Request) -> web.Response:
    user = await caller(request)
    found = await request.app[CLUSTERS].one(user.name, request.match_info["id"])
    return web.json_response(view(found, request.app[SETTINGS]))


async def scale_cluster(request: web.Request) -> web.Response:
    user = await caller(request)
    settings, clusters = request.app[SETTINGS], request.app[CLUSTERS]
    cluster_id = request.match_info["id"]
    group, sizes = validation.scale_request(await body_of(request))
    async with request.app[LOCKS][user.name]:
        current = await clusters.one(user.name, cluster_id)
        change = scale_change(current["spec"], group, sizes)
        proposed = await clusters.patch_spec(cluster_id, change, dry_run=True)
        mine = await clusters.mine(user.name)
        others = [c["spec"] for c in mine if c["metadata"]["name"] != cluster_id]
        check_quotas(request, user, others, proposed["spec"], current["spec"])
        patched = await clusters.patch_spec(cluster_id, change)
    return web.json_response(view(patched, settings))


def scale_change(spec: dict[str, Any], group: str | None, sizes: dict[str, int]) -> dict[str, Any]:
    """The spec patch for a new size of the default group, or of one of spec.workerGroups."""
    if group is None or group == "default":
        return dict(sizes)
    groups = [dict(g) for g in spec.get("workerGroups", [])]
    for found in groups:
        if found["name"] == group:
            found.update(sizes)
            return {"workerGroups": groups}
    known = ", ".join(["default", *(g["name"] for g in groups)])
    raise ApiError(400, f"the cluster has no worker group {group!r}; it has: {known}", "group")


@contextlib.asynccontextmanager
async def backend_errors(cluster: dict[str, Any]) -> AsyncIterator[None]:
    """A batch system that does not answer is the site's trouble, named as such (503)."""
    try:
        yield
    except ApiError:
        raise
    except Exception as error:
        backend = cluster["spec"]["backend"]
        log.warning("the %s backend does not answer: %s", backend, error)
        raise ApiError(503, f"the {backend} backend does not answer: {error}") from error


async def list_workers(request: web.Request) -> web.Response:
    """Every worker of the cluster: name, backend id, group, state, since, reason; and the
    recent failures (GET .../workers/{name}/logs gives the end of one's log)."""
    user = await caller(request)
    cluster = await request.app[CLUSTERS].one(user.name, request.match_info["id"])
    async with backend_errors(cluster):
        return web.json_response(await request.app[WORKERS].describe(cluster))


async def worker_logs(request: web.Request) -> web.Response:
    user = await caller(request)
    cluster = await request.app[CLUSTERS].one(user.name, request.match_info["id"])
    name = request.match_info["name"]
    if not is_worker_of(name, resources.cluster_id(cluster)):
        raise ApiError(404, f"no worker {name} in cluster {resources.cluster_id(cluster)}")
    async with backend_errors(cluster):
        text = await request.app[WORKERS].log_of(cluster, name)
    if text is None:
        raise ApiError(404, f"no worker {name} in cluster {resources.cluster_id(cluster)}")
    return web.json_response({"name": name, "log": text})


async def delete_cluster(request: web.Request) -> web.Response:
    user = await caller(request)
    clusters = request.app[CLUSTERS]
    cluster_id = request.match_info["id"]
    await clusters.one(user.name, cluster_id)
    await clusters.delete(cluster_id)
    return web.Response(status=204)


async def share_token(request: web.Request) -> web.Response:
    """The user's bearer token for the cluster's pods (XCache reads with it): a Secret that the
    scheduler pod and the Kubernetes backend's workers mount, owned by the cluster."""
    user = await caller(request)
    settings, clusters = request.app[SETTINGS], request.app[CLUSTERS]
    token = validation.token_request(await body_of(request))
    cluster = await clusters.one(user.name, request.match_info["id"])
    await clusters.put_secret(resources.user_token_secret(settings, cluster, token))
    return web.Response(status=204)


async def credentials(request: web.Request) -> web.Response:
    """What the user's client needs for mutual TLS with the cluster (facility_client.security)."""
    user = await caller(request)
    settings, clusters = request.app[SETTINGS], request.app[CLUSTERS]
    cluster_id = request.match_info["id"]
    cluster = await clusters.one(user.name, cluster_id)
    try:
        secret = await clusters.secret(resources.secret_name(cluster))
    except ApiError as error:
        if error.status != 404:
            raise
        message = f"the operator has not made the credentials of {cluster_id} yet; ask again"
        raise ApiError(409, message) from error
    return web.json_response({
        # The cluster's own CA, not the facility's: a client that trusts it alone (partial
        # chain) refuses a scheduler that presents any other cluster's leaf.
        "ca": secret["cluster-ca.crt"],
        "tls_cert": secret["tls.crt"],
        "tls_key": secret["tls.key"],
        "address": resources.scheduler_address(settings, cluster),
    })  # fmt: skip


async def usage(request: web.Request) -> web.Response:
    """Core-seconds and worker-seconds by user and group since the facility began counting
    (usage.py), for the hub's admins; ?user=<name> for one user's."""
    user = await caller(request)
    if not user.admin:
        message = f"the usage of the facility is for the hub's admins only, and {user.name} is none"
        raise ApiError(403, message)
    wanted = request.query.get("user") or None
    return web.json_response(request.app[WORKERS].ledger.report(wanted))


def make_app(
    settings: Settings,
    *,
    kube: client.ApiClient | None = None,
    controller: WorkerController | None = None,
    metrics: OperatorMetrics | None = None,
) -> web.Application:
    """The API as an aiohttp application. kube: the Kubernetes client to use (default: the
    in-cluster service account, or the kubeconfig outside a cluster); controller: the
    operator's worker controller (default: one of the API's own, to read the workers);
    metrics: where the API counts its requests (default: a registry of its own)."""
    if kube is None:
        kube_config.load()
        kube = client.ApiClient()
    if controller is None:
        controller = WorkerController(Kube(kube), settings, kube)
    if metrics is None:
        metrics = OperatorMetrics(ClusterIndex(), controller.ledger)
    # Measured outside the error middleware: the status counted is the one answered.
    app = web.Application(middlewares=[metrics.api_middleware(PREFIX), json_errors])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[CLUSTERS] = Clusters(kube, settings.namespace)
    app[LOCKS] = defaultdict(asyncio.Lock)
    app[WORKERS] = controller

    async def hub_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[HUB] = HubAuth(settings.hub_api_url, session, SERVICE_NAME)
            yield

    app.cleanup_ctx.append(hub_session)
    for prefix in ("", PREFIX):
        app.router.add_post(f"{prefix}/clusters", create_cluster)
        app.router.add_get(f"{prefix}/clusters", list_clusters)
        app.router.add_get(f"{prefix}/clusters/{{id}}", get_cluster)
        app.router.add_patch(f"{prefix}/clusters/{{id}}", scale_cluster)
        app.router.add_delete(f"{prefix}/clusters/{{id}}", delete_cluster)
        app.router.add_get(f"{prefix}/clusters/{{id}}/credentials", credentials)
        app.router.add_put(f"{prefix}/clusters/{{id}}/token", share_token)
        app.router.add_get(f"{prefix}/clusters/{{id}}/workers", list_workers)
        app.router.add_get(f"{prefix}/clusters/{{id}}/workers/{{name}}/logs", worker_logs)
        app.router.add_get(f"{prefix}/usage", usage)
    return app
