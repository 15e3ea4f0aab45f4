"""The objects of one Dask cluster, as plain dicts (operators/README.md, "Objects").

Pure functions of the DaskCluster and the Settings: the handlers create them by name, so that
the same cluster always yields the same names and a retried step makes no duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from facility_client.contract import (
    DASHBOARD_PORT,
    ENV_CLUSTER_ID,
    ENV_CONTACT_ADDRESS,
    ENV_IDLE_TIMEOUT,
    ENV_TLS_DIR,
    ENV_XCACHE,
    GROUP,
    KIND,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    MANAGED_BY,
    PLURAL,
    SCHEDULER,
    SCHEDULER_MODULE,
    SCHEDULER_PORT,
    SCHEDULER_SERVICE_SUFFIX,
    TLS_DIR,
    USER_TOKEN_DIR,
    USER_TOKEN_KEY,
    VERSION,
    WORKER,
)

from facility_operator.backends.base import xcache_ca
from facility_operator.certs import ClusterIdentity, KeyPair
from facility_operator.names import user_slug
from facility_operator.settings import Settings

__all__ = ["GROUP", "KIND", "LABEL_OWNER", "PLURAL", "VERSION"]

# The owner's JupyterHub groups when the cluster was made (the user API writes them; users
# cannot write DaskClusters): the operator's quotas for the workers look them up.
ANNOTATION_OWNER_GROUPS = f"{GROUP}/owner-groups"
EDGE_ENTRYPOINT = "websecure"

Body = Mapping[str, Any]


# What names one user's notebook pod (KubeSpawner's labels): the dashboard policy admits it.
USERNAME_LABEL = "hub.jupyter.org/username"
SERVER_POD_LABELS = (
    "app.kubernetes.io/instance", "app.kubernetes.io/component", USERNAME_LABEL,
    "hub.jupyter.org/servername",
)  # fmt: skip


def cluster_id(body: Body) -> str:
    return str(body["metadata"]["name"])


def scheduler_name(body: Body) -> str:
    return f"{cluster_id(body)}{SCHEDULER_SERVICE_SUFFIX}"


def secret_name(body: Body) -> str:
    return f"{cluster_id(body)}-tls"


def cluster_key(body: Body) -> str:
    """What every batch job of the cluster carries: <namespace>/<cluster-id>."""
    return f"{body['metadata']['namespace']}/{cluster_id(body)}"


def sni_host(settings: Settings, name: str) -> str:
    """The host name clients and workers dial; the edge routes on it (SNI)."""
    # Without a Dask domain the edge cannot route by name: only in-cluster clients that
    # resolve the id themselves reach the scheduler.
    return f"{name}.{settings.dask_domain}" if settings.dask_domain else name


def scheduler_address(settings: Settings, body: Body) -> str:
    return f"tls://{sni_host(settings, cluster_id(body))}:{settings.public_port}"


def dashboard_link(body: Body) -> str:
    """The dashboard through the owner's server (jupyter-server-proxy), via the hub's proxy."""
    host = f"{scheduler_name(body)}.{body['metadata']['namespace']}"
    return f"/user/{body['spec']['owner']}/proxy/{host}:{DASHBOARD_PORT}/status"


def labels(settings: Settings, body: Body, component: str | None = None) -> dict[str, str]:
    """The contract's labels of one of the cluster's objects; the release's instance label
    too, which the chart's NetworkPolicies match."""
    owner = body["metadata"].get("labels", {}).get(LABEL_OWNER) or user_slug(body["spec"]["owner"])
    out = {
        LABEL_CLUSTER: cluster_id(body),
        LABEL_OWNER: owner,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: settings.release,
    }
    if component:
        out[LABEL_COMPONENT] = component
    return out


def owner_reference(body: Body) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": cluster_id(body),
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    settings: Settings, body: Body, name: str, component: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": labels(settings, body, component),
        "ownerReferences": [owner_reference(body)],
    }


def ca_secret(settings: Settings, ca: KeyPair) -> dict[str, Any]:
    """The facility CA: no owner, so that it outlives every cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": settings.ca_secret,
            "namespace": settings.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_INSTANCE: settings.release,
                LABEL_COMPONENT: "dask-ca",
            },
        },
        "stringData": {"tls.crt": ca.cert, "tls.key": ca.key},
    }


def tls_secret(settings: Settings, body: Body, identity: ClusterIdentity) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(settings, body, secret_name(body)),
        "stringData": identity.secret_data(),
    }


def token_secret_name(body: Body) -> str:
    return f"{cluster_id(body)}-token"


def user_token_secret(settings: Settings, body: Body, token: str) -> dict[str, Any]:
    """The user's bearer token for the cluster's pods, owned by the cluster like the rest."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(settings, body, token_secret_name(body)),
        "stringData": {USER_TOKEN_KEY: token},
    }


def owner_groups(body: Body) -> list[str]:
    """The owner's groups as the user API recorded them (none when it did not)."""
    text = (body["metadata"].get("annotations") or {}).get(ANNOTATION_OWNER_GROUPS) or "[]"
    try:
        groups = json.loads(text)
    except ValueError:
        return []
    return [str(g) for g in groups] if isinstance(groups, list) else []


def scheduler_http_url(settings: Settings, body: Body) -> str:
    """The scheduler's dashboard (metrics and Dask's HTTP API), as the operator reaches it."""
    return settings.scheduler_url.format(
        scheduler=scheduler_name(body),
        cluster_id=cluster_id(body),
        namespace=body["metadata"]["namespace"],
        port=DASHBOARD_PORT,
    )


def _environment(settings: Settings, body: Body) -> list[dict[str, str]]:
    env = {
        ENV_CLUSTER_ID: cluster_id(body),
        ENV_CONTACT_ADDRESS: scheduler_address(settings, body),
        ENV_TLS_DIR: TLS_DIR,
        ENV_IDLE_TIMEOUT: str(body["spec"]["idleTimeout"]),
        "BEARER_TOKEN_FILE": f"{USER_TOKEN_DIR}/{USER_TOKEN_KEY}",
    }
    if settings.xcache:
        env[ENV_XCACHE] = settings.xcache
    env.update(xcache_ca(settings.xcache_tls_secret).env)
    return [{"name": name, "value": value} for name, value in env.items()]


def _volumes(settings: Settings, body: Body) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the cluster's TLS Secret, the user's token, a writable /tmp, and
    XCache's CA. Nothing else: the scheduler runs the user's code, so it holds only what is the
    user's own."""
    # 0440 with fsGroup 1000: readable by the scheduler's user, which does not own the files.
    secret_mode = 0o440
    volumes: list[dict[str, Any]] = [
        {"name": "tls", "secret": {"secretName": secret_name(body), "defaultMode": secret_mode}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "user-token",
            "secret": {
                "secretName": token_secret_name(body),
                "defaultMode": secret_mode,
                "optional": True,
            },
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "user-token", "mountPath": USER_TOKEN_DIR, "readOnly": True},
    ]
    ca = xcache_ca(settings.xcache_tls_secret)
    return volumes + ca.volumes, mounts + ca.mounts


def scheduler_pod(settings: Settings, body: Body) -> dict[str, Any]:
    """The scheduler: Pod Security "restricted", no Kubernetes token, no batch credential."""
    image = body["spec"]["worker"].get("image") or settings.worker_image
    volumes, mounts = _volumes(settings, body)
    pod_spec: dict[str, Any] = {
        # Never: when Dask's idle timeout closes the scheduler the pod succeeds, and the
        # operator then deletes the cluster.
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "scheduler",
                "image": image,
                "imagePullPolicy": settings.worker_image_pull_policy,
                "command": ["python", "-m", SCHEDULER_MODULE],
                "env": _environment(settings, body),
                "ports": [
                    {"name": "tls", "containerPort": SCHEDULER_PORT},
                    {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                ],
                # The dashboard's own health route: a TCP probe of the TLS port would log a
                # failed handshake at every period.
                "readinessProbe": {
                    "httpGet": {"path": "/health", "port": "dashboard"},
                    "periodSeconds": 5,
                },
                "resources": dict(settings.scheduler_resources),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    metadata = _metadata(settings, body, scheduler_name(body), SCHEDULER)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def scheduler_service(settings: Settings, body: Body) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(settings, body, scheduler_name(body), SCHEDULER),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_CLUSTER: cluster_id(body), LABEL_COMPONENT: SCHEDULER},
            "ports": [
                {"name": "tls", "port": SCHEDULER_PORT, "targetPort": "tls"},
                {"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": "dashboard"},
            ],
        },
    }


def owner_server(body: Body) -> str | None:
    """The name of the owner's notebook pod that owns the cluster (the user API sets it)."""
    refs = body["metadata"].get("ownerReferences") or []
    return next((ref["name"] for ref in refs if ref.get("kind") == "Pod"), None)


def dashboard_policy(
    settings: Settings, body: Body, server_labels: Mapping[str, str]
) -> dict[str, Any] | None:
    """Who else may reach the scheduler's dashboard port (plain HTTP, with Dask's HTTP API):
    the owner's own notebook pod, by its KubeSpawner labels (the user's server proxies the
    dashboard link to its owner's browser alone); None for a pod without its user's label,
    which would select every notebook. The chart's policy admits the operator."""
    if USERNAME_LABEL not in server_labels:
        return None
    server = {key: server_labels[key] for key in SERVER_POD_LABELS if key in server_labels}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(settings, body, f"{cluster_id(body)}-dashboard", SCHEDULER),
        "spec": {
            "podSelector": {
                "matchLabels": {LABEL_CLUSTER: cluster_id(body), LABEL_COMPONENT: SCHEDULER}
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": server}}],
                    "ports": [{"port": DASHBOARD_PORT}],
                }
            ],
        },
    }


def _workers_policy(
    settings: Settings, body: Body, name: str, direction: str, peers: str
) -> dict[str, Any]:
    own_cluster = {"podSelector": {"matchLabels": {LABEL_CLUSTER: cluster_id(body)}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(settings, body, name, WORKER),
        "spec": {
            "podSelector": {
                "matchLabels": {LABEL_CLUSTER: cluster_id(body), LABEL_COMPONENT: WORKER}
            },
            "policyTypes": [direction],
            direction.lower(): [{peers: [own_cluster]}],
        },
    }


def workers_policy(settings: Settings, body: Body) -> dict[str, Any]:
    """Who may reach the cluster's worker pods (Kubernetes backend): its own scheduler and its
    own workers, nothing else. The chart's worker policy admits nothing."""
    return _workers_policy(settings, body, f"{cluster_id(body)}-workers", "Ingress", "from")


def workers_egress_policy(settings: Settings, body: Body) -> dict[str, Any]:
    """Which pods the cluster's workers may reach beyond what the chart's worker policy opens
    (DNS, the edge, XCache, the site's extra egress): their own cluster's, nothing else. A
    policy of its own, so that clusters made before it get it when the operator resumes them."""
    return _workers_policy(settings, body, f"{cluster_id(body)}-workers-egress", "Egress", "to")
