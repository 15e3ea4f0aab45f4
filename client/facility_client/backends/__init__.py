"""Batch backends of a Dask cluster, one class each: see operators/README.md, "Backends"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from facility_client.backends.base import Backend

BACKENDS = ("htcondor", "slurm", "kubernetes")


def backend_for(name: str, config: Mapping[str, Any]) -> Backend:
    """The backend called `name` (a DaskCluster's spec.backend), with the chart's config for it.

    Each backend's module is imported only when asked for, so the operator does not need the
    dask-jobqueue stack to sweep Kubernetes pods, nor the scheduler pod the HTCondor bindings.
    """
    if name == "htcondor":
        from facility_client.backends.htcondor import HTCondorBackend

        return HTCondorBackend(config)
    if name == "slurm":
        from facility_client.backends.slurm import SLURMBackend

        return SLURMBackend(config)
    if name == "kubernetes":
        from facility_client.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(config)
    raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
