"""Worker backends of a Dask cluster, one class each: see operators/README.md, "Backends"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from facility_operator.backends.base import Backend

BACKENDS = ("htcondor", "slurm", "kubernetes")


def backend_for(
    name: str, config: Mapping[str, Any], api: client.ApiClient | None = None
) -> Backend:
    """The backend called `name` (a DaskCluster's spec.backend), with the chart's config for it.

    The HTCondor bindings are imported only when that backend is used. api: the Kubernetes
    client of the Kubernetes backend (default: the process's default client).
    """
    if name == "htcondor":
        from facility_operator.backends.htcondor import HTCondorBackend

        return HTCondorBackend(config)
    if name == "slurm":
        from facility_operator.backends.slurm import SLURMBackend

        return SLURMBackend(config)
    if name == "kubernetes":
        from facility_operator.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(config, api)
    raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
