"""The users' servers: `singleuser` values -> KubeSpawner traits.

Each user gets a persistent home volume (kept when the server stops, and when the user is
deleted), no Kubernetes service-account token, and a pod that meets Pod Security "restricted".
The pod's environment tells the client library where the facility's services are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from hub_config.facility import ConfigError, Facility
from hub_config.services import SERVER_TOKEN_SCOPES, operator_url

HOME = "/home/jovyan"
# The CA of XCache's TLS certificate (ca.crt of xcache.tls.secretName), for the XRootD client:
# a plain PEM file works as X509_CERT_FILE, where X509_CERT_DIR would need a hashed folder.
# facility_client.contract.XCACHE_CA_DIR (the hub image has no client library; a unit test
# holds the two equal).
XCACHE_CA_DIR = "/etc/facility/xcache-ca"
UID = 1000
GID = 100  # the "users" group of Jupyter images, which also owns the home volume

# Labels the chart's NetworkPolicies select user servers by.
COMPONENT = "singleuser-server"


def image_ref(facility: Facility, image: dict[str, Any]) -> str:
    registry = facility.values["imageRegistry"].rstrip("/")
    repository = f"{registry}/{image['repository']}" if registry else image["repository"]
    return f"{repository}:{image.get('tag') or facility.release['appVersion']}"


def resources(where: str, spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """KubeSpawner's guarantee and limit of "cpu" or "memory", refusing a guarantee above its
    limit (no pod could ever be given that)."""
    guarantee, limit = spec.get("guarantee"), spec.get("limit")
    both = guarantee is not None and limit is not None
    if both and parse_quantity(guarantee) > parse_quantity(limit):
        raise ConfigError(
            f"{where}.{kind}: the guarantee {guarantee} exceeds the limit {limit}; lower the "
            "guarantee or raise the limit"
        )
    prefix = "cpu" if kind == "cpu" else "mem"

    def value(quantity: Any) -> float | int:
        # Kubernetes' meaning of the suffixes (G = 10^9, Gi = 2^30), as in the rest of the
        # values; JupyterHub alone would read "4G" as 4 GiB.
        number = parse_quantity(quantity)
        return float(number) if kind == "cpu" else int(number)

    bounds = {"guarantee": guarantee, "limit": limit}
    return {f"{prefix}_{name}": value(q) for name, q in bounds.items() if q is not None}


def profile(facility: Facility, index: int, entry: dict[str, Any]) -> dict[str, Any]:
    """One of singleuser.profiles as a KubeSpawner profile_list entry."""
    where = f"singleuser.profiles[{index}] ({entry['name']})"
    override: dict[str, Any] = {}
    if "image" in entry:
        override["image"] = image_ref(facility, entry["image"])
    override.update(resources(where, entry.get("cpu", {}), "cpu"))
    override.update(resources(where, entry.get("memory", {}), "memory"))
    if entry.get("gpus"):
        override["extra_resource_limits"] = {"nvidia.com/gpu": str(entry["gpus"])}
    if entry.get("nodeSelector"):
        override["node_selector"] = entry["nodeSelector"]
    if entry.get("tolerations"):
        override["tolerations"] = entry["tolerations"]
    return {
        "display_name": entry["name"],
        "description": entry.get("description", ""),
        "default": entry.get("default", False),
        "kubespawner_override": override,
    }


def profiles_for_groups(
    profiles: list[dict[str, Any]], groups: list[set[str]]
) -> Callable[[Any], list[dict[str, Any]]]:
    """A profile_list callable: a profile with groups is offered only to their members."""

    def visible(spawner: Any) -> list[dict[str, Any]]:
        mine = {group.name for group in spawner.user.groups}
        pairs = zip(profiles, groups, strict=True)
        return [entry for entry, needed in pairs if not needed or mine & needed]

    return visible


def environment(facility: Facility) -> dict[str, str]:
    """Where the facility's services are, for the client library (and the user)."""
    edge = facility.values["edge"]
    names = facility.release["names"]
    xcache = facility.values["xcache"]
    proxy = f"{names['proxyHttp']}.{facility.namespace}:{facility.values['proxy']['port']}"
    cache = {}
    if xcache["enabled"]:
        cache["FACILITY_XCACHE"] = f"root://{names['xcache']}.{facility.namespace}:{xcache['port']}"
        if xcache["tls"]["secretName"]:
            cache["X509_CERT_FILE"] = f"{XCACHE_CA_DIR}/ca.crt"
    return {
        "FACILITY_OPERATOR_URL": operator_url(facility),
        "FACILITY_DASK_DOMAIN": edge["dask"]["domain"],
        "FACILITY_DASK_PORT": str(edge["service"]["port"]),
        # Inside the cluster every client reaches the edge by its Service and sends the
        # cluster's name as SNI: no wildcard DNS for the Dask domain is needed there.
        "FACILITY_EDGE_HOST": f"{names['edge']}.{facility.namespace}.svc",
        "FACILITY_NAMESPACE": facility.namespace,
        **cache,
        # The hub's token service, through the proxy (see hub_config.token_service).
        "FACILITY_TOKENS_URL": f"http://{proxy}/services/tokens/",
        **facility.values["singleuser"]["extraEnv"],
    }


def xcache_ca(facility: Facility) -> dict[str, Any]:
    """The XCache CA as a volume and mount of the user's server (only ca.crt of the TLS Secret:
    the key stays out), where X509_CERT_FILE points; nothing when XCache has no TLS."""
    xcache = facility.values["xcache"]
    if not (xcache["enabled"] and xcache["tls"]["secretName"]):
        return {}
    secret = {
        "secretName": xcache["tls"]["secretName"],
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    mount = {"name": "xcache-ca", "mountPath": XCACHE_CA_DIR, "readOnly": True}
    return {"volumes": {"xcache-ca": {"name": "xcache-ca", "secret": secret}},
            "volume_mounts": {"xcache-ca": mount}}  # fmt: skip


def spawner(facility: Facility) -> dict[str, Any]:
    single = facility.values["singleuser"]
    traits: dict[str, Any] = {
        "namespace": facility.namespace,
        "image": image_ref(facility, single["image"]),
        "image_pull_policy": single["image"]["pullPolicy"],
        # The server as JupyterHub's single-user server (its base URL, the hub's login, the
        # default URL); KubeSpawner's default, the image's CMD, would run a plain JupyterLab
        # that knows nothing of the hub (404 at /user/<name>/).
        "cmd": ["jupyterhub-singleuser"],
        "image_pull_secrets": facility.values["imagePullSecrets"],
        "port": single["port"],
        "default_url": single["defaultUrl"],
        "start_timeout": single["startTimeout"],
        "node_selector": single["nodeSelector"],
        "tolerations": single["tolerations"],
        "environment": environment(facility),
        # Pod Security "restricted"; and no API credentials inside a user's pod.
        "uid": UID,
        "gid": GID,
        "fs_gid": GID,
        "allow_privilege_escalation": False,
        "pod_security_context": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "container_security_context": {"capabilities": {"drop": ["ALL"]}},
        "automount_service_account_token": False,
        # The server's own token reaches the facility's services; one it gets for a visitor
        # does not (hub_config.services).
        "server_token_scopes": SERVER_TOKEN_SCOPES,
        # The home volume: one per user, made at first spawn, kept for good.
        "storage_pvc_ensure": True,
        "pvc_name_template": "home-{username}",
        "storage_capacity": single["storage"]["capacity"],
        "storage_class": single["storage"]["storageClassName"] or None,
        "delete_pvc": False,
        "volumes": {"home": {"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}},
        "volume_mounts": {"home": {"name": "home", "mountPath": HOME}},
        "working_dir": HOME,
        "common_labels": {
            "app.kubernetes.io/name": "facility",
            "app.kubernetes.io/instance": facility.release["name"],
            "app.kubernetes.io/managed-by": "kubespawner",
        },
        "extra_labels": {"app.kubernetes.io/component": COMPONENT},
    }
    for trait, entries in xcache_ca(facility).items():
        traits[trait].update(entries)
    traits.update(resources("singleuser", single["cpu"], "cpu"))
    traits.update(resources("singleuser", single["memory"], "memory"))
    if single["profiles"]:
        entries = [profile(facility, i, p) for i, p in enumerate(single["profiles"])]
        groups = [set(p.get("groups", [])) for p in single["profiles"]]
        traits["profile_list"] = profiles_for_groups(entries, groups)
    return traits
