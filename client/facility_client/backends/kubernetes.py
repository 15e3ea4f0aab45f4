"""Kubernetes: workers are pods next to their scheduler (sites without a batch system; tests).

The scheduler pod makes its worker pods through the Kubernetes API with a namespaced
ServiceAccount, which needs: pods get, list, create, delete; daskclusters get (for the
ownerReference). Each worker pod carries the labels of operators/README.md
(component `dask-worker`), is owned by the DaskCluster (so Kubernetes removes it with the
cluster), meets the Pod Security Standard "restricted", mounts the cluster's TLS Secret and
gets no ServiceAccount token.

Config (the chart's `backends.kubernetes` values): `edge_host` (e.g. the edge Service's
in-cluster name, when the public name does not resolve inside the cluster), `death_timeout`,
`python`, `node_selector`, `tolerations`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from distributed.deploy import SpecCluster
from distributed.deploy.spec import ProcessInterface

from facility_client import kube_config
from facility_client.backends.base import (
    WORKER_MODULE,
    Backend,
    ClusterSpec,
    WorkerConnection,
    scheduler_spec,
)
from facility_client.security import ClusterSecurity

GROUP, VERSION, PLURAL = "facility.hep.io", "v1alpha1", "daskclusters"
CLUSTER_LABEL = "facility.hep.io/cluster"
OWNER_LABEL = "facility.hep.io/owner"
INSTANCE_LABEL = "app.kubernetes.io/instance"
WORKER_SELECTOR = (
    "app.kubernetes.io/component=dask-worker,app.kubernetes.io/managed-by=facility-operator"
)
TLS_MOUNT = "/etc/facility/tls"
# The user's bearer token, when the user's client has shared it (operators/README.md).
TOKEN_MOUNT = "/etc/facility/token"


def _api() -> Any:
    """The core API, configured in-cluster (the pod's ServiceAccount) or from a kubeconfig."""
    import kubernetes

    kube_config.load()
    return kubernetes.client.CoreV1Api()


def owner_slug(cluster_id: str) -> str:
    """The user slug: a cluster id is `<user-slug>-<5 random characters>`."""
    return cluster_id.rsplit("-", 1)[0]


def worker_pod(
    spec: ClusterSpec,
    config: Mapping[str, Any],
    name: str,
    command: list[str],
    owner: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of one worker pod, owned by the DaskCluster `owner` (its metadata)."""
    resources = {"cpu": str(spec.cores), "memory": spec.memory, "ephemeral-storage": spec.disk}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {
                CLUSTER_LABEL: spec.cluster_id,
                OWNER_LABEL: owner_slug(spec.cluster_id),
                "app.kubernetes.io/managed-by": "facility-operator",
                "app.kubernetes.io/component": "dask-worker",
                # The release's label: its NetworkPolicies let the scheduler reach the workers.
                INSTANCE_LABEL: owner.get("labels", {}).get(INSTANCE_LABEL, ""),
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "DaskCluster",
                    "name": spec.cluster_id,
                    "uid": owner["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 100,
                # The Secret's files belong to this group, readable by it alone (0440).
                "fsGroup": 100,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "nodeSelector": dict(config.get("node_selector", {})),
            "tolerations": list(config.get("tolerations", [])),
            "containers": [
                {
                    "name": "worker",
                    "image": spec.image,
                    "command": command,
                    "env": [
                        {"name": k, "value": v}
                        for k, v in {
                            **spec.job_environment(),
                            "BEARER_TOKEN_FILE": f"{TOKEN_MOUNT}/token",
                        }.items()
                    ],
                    "resources": {"requests": resources, "limits": resources},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True},
                        {"name": "user-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "tls",
                    "secret": {"secretName": f"{spec.cluster_id}-tls", "defaultMode": 0o440},
                },
                {
                    "name": "user-token",
                    "secret": {
                        "secretName": f"{spec.cluster_id}-token",
                        "defaultMode": 0o440,
                        "optional": True,
                    },
                },
            ],
        },
    }


class WorkerPod(ProcessInterface):
    """One worker: start creates its pod, close deletes it."""

    def __init__(
        self,
        scheduler: str | None = None,
        name: str | None = None,
        *,
        spec: ClusterSpec,
        config: Mapping[str, Any],
        connection: WorkerConnection,
        python: str,
        death_timeout: int,
        owner: Mapping[str, Any],
    ) -> None:
        super().__init__(scheduler=connection.address, name=name)
        command = [
            python,
            "-m",
            WORKER_MODULE,
            connection.address,
            "--name",
            str(name),
            "--nthreads",
            str(spec.cores),
            "--memory-limit",
            str(spec.memory_bytes),
            "--death-timeout",
            str(death_timeout),
            "--tls-ca-file",
            connection.ca_file,
            "--tls-cert",
            connection.cert_file,
            "--tls-key",
            connection.key_file,
            *connection.worker_args(),
        ]
        self.manifest = worker_pod(spec, config, str(name), command, owner)
        self.namespace = spec.namespace

    async def start(self) -> None:
        await asyncio.to_thread(_api().create_namespaced_pod, self.namespace, self.manifest)
        await super().start()

    async def close(self) -> None:
        import kubernetes

        try:
            await asyncio.to_thread(
                _api().delete_namespaced_pod, self.manifest["metadata"]["name"], self.namespace
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:  # already gone: what close wants
                raise
        await super().close()


class KubernetesCluster(SpecCluster):
    """A SpecCluster of worker pods, named `<cluster-id>-worker-<n>` (pod and Dask worker)."""

    def _new_worker_name(self, worker_number: int) -> str:
        return f"{self.name}-worker-{worker_number}"


class KubernetesBackend(Backend):
    name = "kubernetes"

    def make_cluster(
        self,
        spec: ClusterSpec,
        security: ClusterSecurity,
        scheduler_options: Mapping[str, Any],
    ) -> SpecCluster:
        import kubernetes

        kube_config.load()
        owner = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, spec.namespace, PLURAL, spec.cluster_id
        )
        worker = {
            "cls": WorkerPod,
            "options": {
                "spec": spec,
                "config": self.config,
                "connection": WorkerConnection.for_spec(spec, self.config, TLS_MOUNT),
                "python": self.python,
                "death_timeout": self.death_timeout,
                "owner": owner["metadata"],
            },
        }
        return KubernetesCluster(
            # The worker pods' names start with it; shared with the user's FacilityCluster
            # through the scheduler's metadata.
            name=spec.cluster_id,
            scheduler=scheduler_spec(security, scheduler_options),
            worker=worker,
            security=security,
            asynchronous=True,
        )

    # --- the operator side: pods by label

    @staticmethod
    def _split(cluster_key: str) -> tuple[str, str]:
        namespace, cluster_id = cluster_key.split("/", 1)
        return namespace, cluster_id

    def list_jobs(self, cluster_key: str) -> list[str]:
        namespace, cluster_id = self._split(cluster_key)
        pods = _api().list_namespaced_pod(
            namespace, label_selector=f"{WORKER_SELECTOR},{CLUSTER_LABEL}={cluster_id}"
        )
        return [pod.metadata.name for pod in pods.items]

    def remove_jobs(self, cluster_key: str) -> int:
        namespace, _ = self._split(cluster_key)
        names = self.list_jobs(cluster_key)
        api = _api()
        for name in names:
            api.delete_namespaced_pod(name, namespace)
        return len(names)

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        # Namespaced: the operator's Role allows nothing wider.
        pods = _api().list_namespaced_pod(namespace, label_selector=WORKER_SELECTOR)
        jobs: dict[str, list[str]] = {}
        for pod in pods.items:
            key = f"{pod.metadata.namespace}/{pod.metadata.labels[CLUSTER_LABEL]}"
            jobs.setdefault(key, []).append(pod.metadata.name)
        return jobs
