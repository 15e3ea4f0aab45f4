"""Kubernetes: workers are pods next to their scheduler (sites without a batch system; tests).

The operator makes each worker pod itself (the scheduler pod holds no Kubernetes token). A
worker pod carries the contract's labels (component `dask-worker`, its worker group), is owned
by its DaskCluster (so Kubernetes removes it with the cluster), meets the Pod Security Standard
"restricted", mounts the cluster's TLS Secret and the user's token, gets no ServiceAccount token,
and never restarts: the operator replaces a worker that ends.

Config (the chart's `backends.kubernetes` values): `edge_host` (e.g. the edge Service's
in-cluster name, when the public name does not resolve inside the cluster), `death_timeout`,
`python`, `node_selector`, `tolerations`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from facility_client import contract
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from facility_operator.backends.base import (
    EVICTED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Backend,
    ClusterWorkers,
    Job,
    WorkerGroup,
    xcache_ca,
)

WORKER_SELECTOR = (
    f"{contract.LABEL_COMPONENT}={contract.WORKER},"
    f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
)
GPU_LIMIT = "nvidia.com/gpu"
log = logging.getLogger(__name__)
WORKER_UID = 1000
WORKER_GID = 100  # the worker image's user (images/worker); the Secrets' files are 0440 for it


def worker_pod(
    cluster: ClusterWorkers,
    group: WorkerGroup,
    name: str,
    command: list[str],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of one worker pod."""
    resources: dict[str, Any] = {
        "cpu": str(group.cores),
        "memory": group.memory,
        "ephemeral-storage": group.disk,
    }
    if group.gpus:
        resources[GPU_LIMIT] = str(group.gpus)
    ca = xcache_ca(cluster.xcache_tls_secret)
    environment = {
        **cluster.environment(),
        contract.BEARER_TOKEN_FILE: f"{contract.USER_TOKEN_DIR}/{contract.USER_TOKEN_KEY}",
        **ca.env,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": {
                contract.LABEL_CLUSTER: cluster.cluster_id,
                contract.LABEL_OWNER: cluster.owner_slug,
                contract.LABEL_WORKER_GROUP: group.name,
                contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
                contract.LABEL_COMPONENT: contract.WORKER,
                # The release's label: its NetworkPolicies select the workers by it.
                contract.LABEL_INSTANCE: cluster.instance,
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{contract.GROUP}/{contract.VERSION}",
                    "kind": contract.KIND,
                    "name": cluster.cluster_id,
                    "uid": cluster.uid,
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
                "runAsUser": WORKER_UID,
                "runAsGroup": WORKER_GID,
                "fsGroup": WORKER_GID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "nodeSelector": dict(config.get("node_selector", {})),
            "tolerations": list(config.get("tolerations", [])),
            "containers": [
                {
                    "name": "worker",
                    "image": group.image,
                    "command": command,
                    "env": [{"name": k, "value": v} for k, v in environment.items()],
                    "resources": {"requests": resources, "limits": resources},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "tls", "mountPath": contract.TLS_DIR, "readOnly": True},
                        {
                            "name": "user-token",
                            "mountPath": contract.USER_TOKEN_DIR,
                            "readOnly": True,
                        },
                        *ca.mounts,
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "tls",
                    "secret": {"secretName": f"{cluster.cluster_id}-tls", "defaultMode": 0o440},
                },
                {
                    "name": "user-token",
                    "secret": {
                        "secretName": f"{cluster.cluster_id}-token",
                        "defaultMode": 0o440,
                        "optional": True,
                    },
                },
                *ca.volumes,
            ],
        },
    }


def _time(value: Any) -> str:
    return value.isoformat() if value is not None else ""


def pod_job(pod: client.V1Pod) -> Job:
    """A worker pod as a Job: its state and, where it waits or ended, why."""
    status = pod.status
    labels = pod.metadata.labels or {}
    common = {
        "name": pod.metadata.name,
        "id": pod.metadata.name,
        "group": labels.get(contract.LABEL_WORKER_GROUP, ""),
    }
    containers = status.container_statuses or []
    if status.phase in ("Succeeded", "Failed"):
        if status.reason == "Evicted":
            return Job(**common, state=EVICTED, reason=status.message or "evicted")
        for container in containers:
            ended = container.state.terminated
            if ended is not None:
                reason = ended.reason or ""
                state = SUCCEEDED if ended.exit_code == 0 else FAILED
                text = f"exit code {ended.exit_code}" + (f" ({reason})" if reason else "")
                return Job(**common, state=state, since=_time(ended.finished_at), reason=text)
        return Job(
            **common,
            state=FAILED if status.phase == "Failed" else SUCCEEDED,
            reason=status.message or "",
        )
    if status.phase == "Running":
        started = next((c.state.running.started_at for c in containers if c.state.running), None)
        return Job(**common, state=RUNNING, since=_time(started or status.start_time))
    # Pending: not scheduled (the scheduler's reason), or its container waits (image, ...).
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            reason = (
                f"{condition.reason}: {condition.message}"
                if condition.message
                else condition.reason
            )
            return Job(
                **common,
                state=PENDING,
                since=_time(condition.last_transition_time),
                reason=reason or "",
            )
    for container in containers:
        waiting = container.state.waiting
        if waiting is not None:
            reason = f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
            return Job(**common, state=PENDING, reason=reason or "")
    return Job(**common, state=PENDING, since=_time(pod.metadata.creation_timestamp))


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, config: Mapping[str, Any], api: client.ApiClient | None = None) -> None:
        super().__init__(config)
        self.core = client.CoreV1Api(api)

    def start(self, cluster: ClusterWorkers, group: WorkerGroup, names: list[str]) -> None:
        for name in names:
            command = self.worker_command(cluster, group, name, contract.TLS_DIR)
            try:
                self.core.create_namespaced_pod(
                    cluster.namespace, worker_pod(cluster, group, name, command, self.config)
                )
            except ApiException as error:
                if error.status != 409:  # made before a restart: it counts as started
                    raise

    @staticmethod
    def _split(cluster_key: str) -> tuple[str, str]:
        namespace, cluster_id = cluster_key.split("/", 1)
        return namespace, cluster_id

    def _pods(self, cluster_key: str) -> list[client.V1Pod]:
        namespace, cluster_id = self._split(cluster_key)
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=f"{WORKER_SELECTOR},{contract.LABEL_CLUSTER}={cluster_id}"
        )
        # A pod being deleted is on its way out: it is no longer one of the cluster's workers.
        return [pod for pod in pods.items if pod.metadata.deletion_timestamp is None]

    def jobs(self, cluster_key: str, owner: str = "") -> list[Job]:
        return [pod_job(pod) for pod in self._pods(cluster_key)]

    def remove(self, cluster_key: str, jobs: list[Job]) -> None:
        namespace, _ = self._split(cluster_key)
        for job in jobs:
            try:
                self.core.delete_namespaced_pod(job.id, namespace)
            except ApiException as error:
                if error.status != 404:
                    raise

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        # Namespaced: the operator's Role allows nothing wider.
        pods = self.core.list_namespaced_pod(namespace, label_selector=WORKER_SELECTOR)
        jobs: dict[str, list[str]] = {}
        for pod in pods.items:
            key = f"{pod.metadata.namespace}/{pod.metadata.labels[contract.LABEL_CLUSTER]}"
            jobs.setdefault(key, []).append(pod.metadata.name)
        return jobs

    def log_tail(self, cluster_key: str, job: Job, lines: int = 20) -> str:
        namespace, _ = self._split(cluster_key)
        try:
            return str(self.core.read_namespaced_pod_log(job.id, namespace, tail_lines=lines))
        except ApiException as error:
            # No log yet (not started), the pod is gone, or its node's kubelet does not answer:
            # the worker's state and reason still say what is known.
            log.info("no log of %s/%s: %s", namespace, job.id, error.reason)
            return ""
