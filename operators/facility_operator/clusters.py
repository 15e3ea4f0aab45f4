"""The user API's side of Kubernetes: a user's DaskClusters, their Secrets, the user's server.

The kubernetes client is synchronous; each call runs in a worker thread so the API's event loop
(shared with the operator) never waits on the API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from facility_operator.errors import ApiError
from facility_operator.names import user_slug
from facility_operator.resources import GROUP, LABEL_OWNER, PLURAL, VERSION

# KubeSpawner's pods: the component label, and the user's name unescaped in an annotation (the
# username label is a slug that may carry a hash).
SERVER_SELECTOR = "component=singleuser-server"
USERNAME_ANNOTATION = "hub.jupyter.org/username"
SERVERNAME_ANNOTATION = "hub.jupyter.org/servername"

T = TypeVar("T")


def api_error(error: ApiException, what: str) -> ApiError:
    """The API server's refusal, for the user: 422 names the field (without `spec.`)."""
    if error.status == 404:
        return ApiError(404, f"no {what}")
    try:
        status = json.loads(error.body or "{}")
    except ValueError:
        status = {}
    if error.status == 422:
        causes = (status.get("details") or {}).get("causes") or [{}]
        field = str(causes[0].get("field") or "").removeprefix("spec.") or None
        return ApiError(400, causes[0].get("message") or status.get("message", ""), field)
    return ApiError(502, f"the Kubernetes API refused: {status.get('message') or error.reason}")


class Clusters:
    """DaskClusters in one namespace, through an ApiClient."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except ApiException as error:
            raise api_error(error, what) from error

    async def mine(self, user: str) -> list[dict[str, Any]]:
        """The user's clusters, oldest first."""
        found = await self.call(
            "clusters", self.custom.list_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, label_selector=f"{LABEL_OWNER}={user_slug(user)}",
        )  # fmt: skip
        # Two names can share a slug ("Alice", "alice"): the spec holds the exact owner.
        items = [c for c in found["items"] if c["spec"]["owner"] == user]
        return sorted(items, key=lambda c: c["metadata"]["creationTimestamp"])

    async def one(self, user: str, cluster_id: str) -> dict[str, Any]:
        """The user's cluster cluster_id; 404 alike for a missing one and somebody else's."""
        what = f"cluster {cluster_id}"
        found = await self.call(
            what, self.custom.get_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, cluster_id,
        )  # fmt: skip
        if found["spec"]["owner"] != user:
            raise ApiError(404, f"no {what}")
        return found

    async def create(self, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        extra = {"dry_run": "All"} if dry_run else {}
        return await self.call(
            "cluster", self.custom.create_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, body, **extra,
        )  # fmt: skip

    async def patch_spec(
        self, cluster_id: str, spec: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        extra = {"dry_run": "All"} if dry_run else {}
        return await self.call(
            f"cluster {cluster_id}", self.custom.patch_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, cluster_id, {"spec": spec}, **extra,
        )  # fmt: skip

    async def delete(self, cluster_id: str) -> None:
        # Background: the answer does not wait for the operator's finalizer (the batch jobs).
        await self.call(
            f"cluster {cluster_id}", self.custom.delete_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, cluster_id, propagation_policy="Background",
        )  # fmt: skip

    async def put_secret(self, manifest: dict[str, Any]) -> None:
        """Create the Secret, or replace its data if it exists."""
        name = manifest["metadata"]["name"]

        def put() -> None:
            try:
                self.core.create_namespaced_secret(self.namespace, manifest)
            except ApiException as error:
                if error.status != 409:
                    raise
                self.core.replace_namespaced_secret(name, self.namespace, manifest)

        await self.call(f"Secret {name}", put)

    async def secret(self, name: str) -> dict[str, str]:
        """A Secret's data, decoded."""
        found = await self.call(
            f"Secret {name}", self.core.read_namespaced_secret, name, self.namespace
        )
        return {key: base64.b64decode(value).decode() for key, value in (found.data or {}).items()}

    async def server_pod(self, user: str) -> client.V1Pod | None:
        """The user's live notebook pod (the default server before a named one), or None."""
        pods = await self.call(
            "servers", self.core.list_namespaced_pod, self.namespace,
            label_selector=SERVER_SELECTOR,
        )  # fmt: skip
        live = [
            pod
            for pod in pods.items
            if (pod.metadata.annotations or {}).get(USERNAME_ANNOTATION) == user
            and pod.metadata.deletion_timestamp is None
            and pod.status.phase in {"Pending", "Running"}
        ]

        def order(pod: client.V1Pod) -> tuple[bool, Any]:
            named = bool((pod.metadata.annotations or {}).get(SERVERNAME_ANNOTATION))
            return named, pod.metadata.creation_timestamp

        return min(live, key=order, default=None)
