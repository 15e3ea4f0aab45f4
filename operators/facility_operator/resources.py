"""The objects of one Dask cluster, as plain dicts (operators/README.md, "Objects").

Pure functions of the DaskCluster and the Settings: the handlers create them by name, so that
the same cluster always yields the same names and a retried step makes no duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from facility_operator.certs import ClusterIdentity, KeyPair
from facility_operator.names import user_slug
from facility_operator.settings import Settings

GROUP = "facility.hep.io"
VERSION = "v1alpha1"
PLURAL = "daskclusters"
KIND = "DaskCluster"

LABEL_CLUSTER = f"{GROUP}/cluster"
LABEL_OWNER = f"{GROUP}/owner"
LABEL_EDGE = f"{GROUP}/edge"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "facility-operator"
SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"

ANNOTATION_MIN = f"{GROUP}/min-workers"
ANNOTATION_MAX = f"{GROUP}/max-workers"

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
TLS_DIR = "/etc/facility/tls"
PODINFO_DIR = "/etc/facility/podinfo"
CONDOR_TOKENS_DIR = "/etc/facility/condor-tokens"
# The user's bearer token (WLCG/SciTokens, e.g. for XCache), shared by the user's client through
# the API (PUT /clusters/<id>/token): the scheduler and the Kubernetes backend's workers read it
# where the WLCG bearer-token discovery looks ($BEARER_TOKEN_FILE). Optional: absent until shared.
USER_TOKEN_DIR = "/etc/facility/token"
USER_TOKEN_KEY = "token"
EDGE_ENTRYPOINT = "websecure"

Body = Mapping[str, Any]


def cluster_id(body: Body) -> str:
    return str(body["metadata"]["name"])


def scheduler_name(body: Body) -> str:
    return f"{cluster_id(body)}-scheduler"


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
    too, which the chart's NetworkPolicies and the edge's route selector match."""
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


def scale_annotations(spec: Body) -> dict[str, str]:
    """The scheduler pod's desired scale, which it reads from its downward-API file."""
    return {ANNOTATION_MIN: str(spec["minWorkers"]), ANNOTATION_MAX: str(spec["maxWorkers"])}


def _environment(settings: Settings, body: Body, image: str) -> list[dict[str, str]]:
    spec = body["spec"]
    worker = spec["worker"]
    env = {
        "FACILITY_CLUSTER_ID": cluster_id(body),
        "FACILITY_NAMESPACE": body["metadata"]["namespace"],
        "FACILITY_BACKEND": spec["backend"],
        "FACILITY_CONTACT_ADDRESS": scheduler_address(settings, body),
        "FACILITY_TLS_DIR": TLS_DIR,
        "FACILITY_IDLE_TIMEOUT": str(spec["idleTimeout"]),
        "FACILITY_WORKER_CORES": str(worker["cores"]),
        "FACILITY_WORKER_MEMORY": worker["memory"],
        "FACILITY_WORKER_DISK": worker["disk"],
        "FACILITY_WORKER_IMAGE": image,
        "FACILITY_BACKEND_CONFIG": json.dumps(settings.backend_config(spec["backend"])),
        "BEARER_TOKEN_FILE": f"{USER_TOKEN_DIR}/{USER_TOKEN_KEY}",
    }
    if settings.xcache:
        env["FACILITY_XCACHE"] = settings.xcache
    if _condor_token_secret(settings, body):
        # HTCondor reads its configuration from _CONDOR_* variables too.
        env["_CONDOR_SEC_TOKEN_DIRECTORY"] = CONDOR_TOKENS_DIR
    return [{"name": name, "value": value} for name, value in env.items()]


def _condor_token_secret(settings: Settings, body: Body) -> str:
    if body["spec"]["backend"] != "htcondor":
        return ""
    return str(settings.backends.get("htcondor", {}).get("tokenSecret") or "")


def _volumes(settings: Settings, body: Body) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the TLS Secret, the pod's own annotations, a writable /tmp."""
    # 0440 with fsGroup 1000: readable by the scheduler's user, which does not own the files.
    secret_mode = 0o440
    annotations = {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    volumes: list[dict[str, Any]] = [
        {"name": "tls", "secret": {"secretName": secret_name(body), "defaultMode": secret_mode}},
        {
            "name": "podinfo",
            "downwardAPI": {"items": [annotations]},
        },
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
        {"name": "podinfo", "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "user-token", "mountPath": USER_TOKEN_DIR, "readOnly": True},
    ]
    token_secret = _condor_token_secret(settings, body)
    if token_secret:
        volumes.append(
            {"name": "condor-tokens", "secret": {"secretName": token_secret, "defaultMode": 0o440}}
        )
        mounts.append({"name": "condor-tokens", "mountPath": CONDOR_TOKENS_DIR, "readOnly": True})
    return volumes, mounts


def scheduler_pod(settings: Settings, body: Body) -> dict[str, Any]:
    """The scheduler: Pod Security "restricted"; a Kubernetes token only for the pod backend."""
    spec = body["spec"]
    image = spec["worker"].get("image") or settings.worker_image
    pod_backend = spec["backend"] == "kubernetes"
    volumes, mounts = _volumes(settings, body)
    metadata = _metadata(settings, body, scheduler_name(body), SCHEDULER)
    metadata["annotations"] = scale_annotations(spec)
    pod_spec: dict[str, Any] = {
        # Never: when Dask's idle timeout closes the scheduler the pod succeeds, and the
        # operator then deletes the cluster.
        "restartPolicy": "Never",
        "automountServiceAccountToken": pod_backend,
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
                "command": ["python", "-m", "facility_client.scheduler"],
                "env": _environment(settings, body, image),
                "ports": [
                    {"name": "tls", "containerPort": SCHEDULER_PORT},
                    {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                ],
                "readinessProbe": {"tcpSocket": {"port": "tls"}, "periodSeconds": 5},
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
    if pod_backend:
        pod_spec["serviceAccountName"] = settings.scheduler_service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
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


def ingress_route(settings: Settings, body: Body) -> dict[str, Any]:
    """The edge's SNI route: TLS passes through untouched, the scheduler terminates it."""
    metadata = _metadata(settings, body, cluster_id(body))
    metadata["labels"][LABEL_EDGE] = settings.fullname
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRouteTCP",
        "metadata": metadata,
        "spec": {
            "entryPoints": [EDGE_ENTRYPOINT],
            "routes": [
                {
                    "match": f"HostSNI(`{sni_host(settings, cluster_id(body))}`)",
                    "services": [{"name": scheduler_name(body), "port": SCHEDULER_PORT}],
                }
            ],
            "tls": {"passthrough": True},
        },
    }
