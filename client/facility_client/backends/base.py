"""What every batch backend provides (operators/README.md, "Backends").

A backend has two sides. The scheduler pod calls `make_cluster`, which returns a
`distributed` SpecCluster (a dask-jobqueue JobQueueCluster for the batch systems) whose
workers run as the backend's jobs. The operator calls `list_jobs`, `remove_jobs` and `list_all`
(its finalizer and its sweep), which find jobs by the cluster key `<namespace>/<cluster-id>`
that every job carries.

Workers always dial the cluster's public address `tls://<cluster-id>.<dask-domain>:<port>`
through the edge, which routes by TLS SNI. A site without wildcard DNS sets the backend config
key `edge_host`: workers then dial `tls://<edge_host>:<port>` and send the cluster's name as
SNI (`dask worker --scheduler-sni`).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from dask.utils import parse_bytes
from distributed import Scheduler
from distributed.deploy import SpecCluster
from distributed.security import Security

from facility_client.security import ClusterSecurity

# Workers wait this long for their scheduler before they exit: a job whose scheduler is gone
# must not hold a batch slot.
DEFAULT_DEATH_TIMEOUT = 120
# The files of the cluster's Secret that a worker needs: the cluster CA (its only trust anchor,
# as for the scheduler), and the cluster's leaf and key.
WORKER_TLS_FILES = ("cluster-ca.crt", "tls.crt", "tls.key")
# `dask worker` with the cluster CA as its trust anchor (facility_client.worker).
WORKER_MODULE = "facility_client.worker"


@dataclass(frozen=True)
class ClusterSpec:
    """One Dask cluster, as the scheduler pod's environment describes it."""

    cluster_id: str
    namespace: str
    contact_address: str  # tls://<cluster-id>.<dask-domain>:<public port>
    tls_dir: Path
    cores: int
    memory: str  # a Kubernetes quantity, e.g. 2Gi
    disk: str
    image: str
    xcache: str | None = None

    @property
    def key(self) -> str:
        """What every batch job of this cluster carries."""
        return f"{self.namespace}/{self.cluster_id}"

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_bytes(self.disk)

    def job_environment(self) -> dict[str, str]:
        """Environment every worker gets: where the facility's XCache is."""
        return {"FACILITY_XCACHE": self.xcache} if self.xcache else {}


@dataclass(frozen=True)
class WorkerConnection:
    """How a worker job reaches its scheduler, and the TLS files as the job sees them."""

    address: str
    sni: str | None
    ca_file: str
    cert_file: str
    key_file: str

    @classmethod
    def for_spec(
        cls, spec: ClusterSpec, config: Mapping[str, Any], tls_dir: str
    ) -> WorkerConnection:
        """The contact address, or the edge host with the cluster's name as SNI.

        `tls_dir`: where the job finds the WORKER_TLS_FILES (a shell word of the job's command).
        """
        ca, cert, key = (f"{tls_dir}/{name}" for name in WORKER_TLS_FILES)
        edge_host = config.get("edge_host")
        if not edge_host:
            return cls(spec.contact_address, None, ca, cert, key)
        public = urlsplit(spec.contact_address)
        return cls(f"tls://{edge_host}:{public.port}", public.hostname, ca, cert, key)

    def security(self) -> Security:
        """The worker's TLS settings; dask-jobqueue turns them into `--tls-*` arguments."""
        return Security(
            require_encryption=True,
            tls_ca_file=self.ca_file,
            tls_worker_cert=self.cert_file,
            tls_worker_key=self.key_file,
        )

    def worker_args(self) -> list[str]:
        """`dask worker` arguments beyond dask-jobqueue's own."""
        if not self.sni:
            return []
        # The Nanny registers with the scheduler through connection arguments of its own,
        # without --scheduler-sni, so the edge could not route it: without wildcard DNS the
        # worker runs alone (the batch system already limits its memory and restarts nothing).
        return ["--scheduler-sni", self.sni, "--no-nanny"]


class FacilityJobMixin:
    """Makes a dask-jobqueue Job run facility_client.worker, dialing the facility's edge with the
    worker's TLS files.

    The cluster hands every job its own scheduler settings (the pod's TLS paths, the contact
    address); the job replaces them with what `connection` says the job should use.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        name: str | None = None,
        *,
        connection: WorkerConnection,
        security: Security | None = None,
        worker_extra_args: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            scheduler=connection.address,
            name=name,
            security=connection.security(),
            worker_command=WORKER_MODULE,
            worker_extra_args=[*(worker_extra_args or []), *connection.worker_args()],
            **kwargs,
        )


class LoopbackScheduler(Scheduler):
    """The scheduler whose own cluster object (in the same pod) reaches it over loopback.

    With `contact_address` set to the public name, `Scheduler.address` is that name, which
    need not resolve inside the pod; `SpecCluster` connects to `external_address` when a
    scheduler has one.
    """

    @property
    def external_address(self) -> str:
        port = self.listeners[0].get_host_port()[1]
        return f"tls://127.0.0.1:{port}"


def scheduler_spec(security: ClusterSecurity, options: Mapping[str, Any]) -> dict[str, Any]:
    """The SpecCluster scheduler entry for the scheduler pod."""
    return {"cls": LoopbackScheduler, "options": {"security": security, **options}}


class Backend(ABC):
    """One batch system: the scheduler side and the operator side."""

    name: ClassVar[str]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @property
    def python(self) -> str:
        """The worker's Python: the scheduler's own, since both run the worker image."""
        return str(self.config.get("python", sys.executable))

    @property
    def death_timeout(self) -> int:
        return int(self.config.get("death_timeout", DEFAULT_DEATH_TIMEOUT))

    def jobqueue_options(
        self,
        spec: ClusterSpec,
        security: ClusterSecurity,
        scheduler_options: Mapping[str, Any],
        connection: WorkerConnection,
    ) -> dict[str, Any]:
        """What every dask-jobqueue cluster of the facility is made with: one worker process per
        job with the cluster's cores and memory, the scheduler on loopback in the pod."""
        return {
            "connection": connection,
            "asynchronous": True,
            # Shared with the user's FacilityCluster through the scheduler's metadata.
            "name": spec.cluster_id,
            "security": security,
            "scheduler_cls": LoopbackScheduler,
            "scheduler_options": dict(scheduler_options),
            "cores": spec.cores,
            "processes": 1,
            "memory": spec.memory_bytes,
            "death_timeout": self.death_timeout,
            "python": self.python,
            "interface": self.config.get("interface"),
            "job_name": f"dask-{spec.cluster_id}",
        }

    @abstractmethod
    def make_cluster(
        self,
        spec: ClusterSpec,
        security: ClusterSecurity,
        scheduler_options: Mapping[str, Any],
    ) -> SpecCluster:
        """The Dask cluster (asynchronous, not started) whose workers are this backend's jobs."""

    @abstractmethod
    def list_jobs(self, cluster_key: str) -> list[str]:
        """Ids of the jobs of one cluster that the batch system still holds."""

    @abstractmethod
    def remove_jobs(self, cluster_key: str) -> int:
        """Remove every job of one cluster; return how many were asked to go."""

    @abstractmethod
    def list_all(self, namespace: str) -> dict[str, list[str]]:
        """Job ids by cluster key, for every job of the facility in `namespace` (the operator's
        sweep: another facility sharing the batch system keeps its jobs)."""
