"""What the handlers do, as blocking steps (the handlers run them in threads).

Every step finds objects by their deterministic names and creates only what is missing, so an
operator killed between two steps and restarted repeats nothing that was done and duplicates
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from facility_operator import resources as res
from facility_operator.backends import backend_for
from facility_operator.certs import KeyPair, new_cluster_identity, new_facility_ca
from facility_operator.kube import Kube
from facility_operator.settings import Settings
from facility_operator.status import scheduler_status

log = logging.getLogger(__name__)


def ensure_ca(kube: Kube, settings: Settings) -> KeyPair:
    """The facility CA, made when its Secret is missing and never replaced."""
    data = kube.secret_data(settings.namespace, settings.ca_secret)
    if data is None:
        kube.create(res.ca_secret(settings, new_facility_ca(settings.fullname)))
        # Read back: if another process made it first, its CA is the one that counts.
        data = kube.secret_data(settings.namespace, settings.ca_secret)
        if data is None:
            raise RuntimeError(f"the Secret {settings.ca_secret} vanished right after creation")
    return KeyPair(cert=data["tls.crt"], key=data["tls.key"])


def ensure_objects(kube: Kube, settings: Settings, body: Mapping[str, Any]) -> None:
    """Create what the cluster lacks (the workers are the worker controller's)."""
    namespace = body["metadata"]["namespace"]
    if kube.secret_data(namespace, res.secret_name(body)) is None:
        ca = ensure_ca(kube, settings)
        sni = res.sni_host(settings, res.cluster_id(body))
        identity = new_cluster_identity(ca, res.cluster_id(body), sni)
        kube.create(res.tls_secret(settings, body, identity))
    kube.create(res.scheduler_service(settings, body))
    kube.create(res.workers_policy(settings, body))
    kube.create(res.workers_egress_policy(settings, body))
    server = res.owner_server(body)
    owner_pod = kube.pod(namespace, server) if server else None
    policy = (
        res.dashboard_policy(settings, body, owner_pod.metadata.labels or {}) if owner_pod else None
    )
    if policy is not None:
        kube.create(policy)
    # The pod last: it mounts the Secret.
    kube.create(res.scheduler_pod(settings, body))


def scheduler_state(kube: Kube, body: Mapping[str, Any]) -> dict[str, Any]:
    """Phase and message from the scheduler pod; a scheduler that ended (idle) ends its
    cluster (the daemon logs the change of phase once)."""
    namespace, name = body["metadata"]["namespace"], res.cluster_id(body)
    status = scheduler_status(kube.pod(namespace, res.scheduler_name(body)))
    if status["phase"] == "Ending":
        kube.delete_cluster(namespace, name)
    return status


def patch_status(kube: Kube, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Write the fields of status that differ from the cluster's."""
    current = body.get("status") or {}
    changed = {key: value for key, value in status.items() if current.get(key) != value}
    if changed:
        kube.patch_status(body["metadata"]["namespace"], res.cluster_id(body), changed)


def stop_scheduler(kube: Kube, body: Mapping[str, Any]) -> None:
    """Ask the scheduler pod to go (Dask closes the scheduler on SIGTERM)."""
    kube.delete_pod(body["metadata"]["namespace"], res.scheduler_name(body))


def scheduler_gone(kube: Kube, body: Mapping[str, Any]) -> bool:
    """True once the scheduler pod no longer exists: it can submit no job after that."""
    return kube.pod(body["metadata"]["namespace"], res.scheduler_name(body)) is None


def remove_jobs(kube: Kube, settings: Settings, body: Mapping[str, Any]) -> int:
    backend_name = body["spec"]["backend"]
    backend = backend_for(backend_name, settings.backend_config(backend_name), kube.api)
    return backend.remove_all(res.cluster_key(body))


def sweep(kube: Kube, settings: Settings, backends: Iterable[str]) -> dict[str, int]:
    """Remove the jobs of this namespace's clusters that no longer exist: how many, by backend."""
    removed: dict[str, int] = {}
    prefix = f"{settings.namespace}/"
    for name in sorted(set(backends)):
        try:
            backend = backend_for(name, settings.backend_config(name), kube.api)
            jobs = backend.list_all(settings.namespace)
        except Exception:
            # One unreachable batch system must not stop the sweep of the others.
            log.warning("sweep: cannot list the jobs of the %s backend", name, exc_info=True)
            continue
        # Listed after the jobs: a cluster made in between is live, not orphaned.
        live = {res.cluster_key(cluster) for cluster in kube.clusters(settings.namespace)}
        for key in jobs:
            if key.startswith(prefix) and key not in live:
                count = backend.remove_all(key)
                removed[name] = removed.get(name, 0) + count
                log.info("sweep: removed %d %s jobs of gone %s", count, name, key)
    return removed
