"""The few Kubernetes calls the operator makes, by object name (blocking: run in threads)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from facility_operator import kube_config
from facility_operator.names import user_slug
from facility_operator.resources import GROUP, LABEL_OWNER, PLURAL, VERSION


def _missing(error: ApiException) -> bool:
    return error.status == 404


class Kube:
    """Core and custom-object calls in one namespace-agnostic wrapper."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.networking = client.NetworkingV1Api(api)

    @classmethod
    def connect(cls) -> Kube:
        """In the pod: its service account; elsewhere (tests): KUBECONFIG."""
        kube_config.load()
        return cls(client.ApiClient())

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create the object; False when one of its name exists already (it is kept)."""
        namespace = obj["metadata"]["namespace"]
        creators = {
            "Secret": self.core.create_namespaced_secret,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        try:
            creators[obj["kind"]](namespace, obj)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded; None when there is no such Secret."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if _missing(error):
                return None
            raise
        return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data; None when there is no such ConfigMap."""
        try:
            found = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if _missing(error):
                return None
            raise
        return dict(found.data or {})

    def replace_config_map(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.core.replace_namespaced_config_map(meta["name"], meta["namespace"], obj)

    def pod(self, namespace: str, name: str) -> client.V1Pod | None:
        try:
            return self.core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if _missing(error):
                return None
            raise

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as error:
            if not _missing(error):
                raise

    def clusters(self, namespace: str) -> list[dict[str, Any]]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(listing["items"])

    def clusters_of(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The clusters of one user (their exact JupyterHub name)."""
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{LABEL_OWNER}={user_slug(owner)}"
        )
        return [c for c in listing["items"] if c["spec"]["owner"] == owner]

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def delete_cluster(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if not _missing(error):
                raise
