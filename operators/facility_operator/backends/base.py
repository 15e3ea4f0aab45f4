"""What every worker backend provides (operators/README.md, "Backends").

The operator, never the scheduler, makes a cluster's workers: a backend starts named workers
of one worker group (`start`), tells what each of them is doing (`jobs`), removes some or all of
them (`remove`, `remove_all`), lists every worker of the facility for the sweep (`list_all`) and
gives the last lines of a worker's log where the batch system keeps one (`log_tail`). Every job
or pod carries the cluster key `<namespace>/<cluster-id>` and its worker's name, which is also
its Dask worker name, so the scheduler's view and the batch system's can be matched.

Workers always dial the cluster's public address `tls://<cluster-id>.<dask-domain>:<port>`
through the edge, which routes by TLS SNI. A site without wildcard DNS sets the backend config
key `edge_host`: workers then dial `tls://<edge_host>:<port>` and send the cluster's name as
SNI (`dask worker --scheduler-sni`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from dask.utils import parse_bytes
from facility_client import contract

# Workers wait this long for their scheduler before they exit: a job whose scheduler is gone
# must not hold a batch slot.
DEFAULT_DEATH_TIMEOUT = 120
# The interpreter of the worker image (images/worker), where the worker program runs.
WORKER_PYTHON = "/opt/venv/bin/python"

# A worker's state, as the operator reports it (GET /clusters/{id}/workers).
PENDING = "pending"  # queued, or a pod not yet scheduled or started
RUNNING = "running"  # the job or pod runs; `connected` says whether the scheduler knows it
SUCCEEDED = "succeeded"  # ended with exit code 0 (retired, or closed by client.restart())
FAILED = "failed"  # ended otherwise
HELD = "held"  # HTCondor holds it
EVICTED = "evicted"  # preempted or evicted by the batch system or the kubelet
ACTIVE = (PENDING, RUNNING)
ENDED = (SUCCEEDED, FAILED, HELD, EVICTED)


@dataclass(frozen=True)
class WorkerGroup:
    """A named set of alike workers of one cluster, with its own size range."""

    name: str
    cores: int
    memory: str  # a Kubernetes quantity, e.g. 2Gi
    disk: str
    gpus: int
    image: str
    minimum: int
    maximum: int

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_bytes(self.disk)

    @property
    def adaptive(self) -> bool:
        return self.minimum < self.maximum

    def resources(self) -> dict[str, int]:
        """The worker's Dask resources: its GPUs, so that tasks asking for one land there."""
        return {contract.GPU_RESOURCE: self.gpus} if self.gpus else {}


@dataclass(frozen=True)
class PodParts:
    """Volumes, mounts and environment that a cluster's pods add for one purpose."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def xcache_ca(secret: str) -> PodParts:
    """XCache's CA for the XRootD client of a scheduler or worker pod: only ca.crt of the
    cache's TLS Secret (never its key); nothing when XCache has no TLS."""
    if not secret:
        return PodParts()
    items = [{"key": "ca.crt", "path": "ca.crt"}]
    return PodParts(
        volumes=[{"name": "xcache-ca", "secret": {"secretName": secret, "items": items}}],
        mounts=[{"name": "xcache-ca", "mountPath": contract.XCACHE_CA_DIR, "readOnly": True}],
        env={"X509_CERT_FILE": contract.XCACHE_CA_FILE},
    )


@dataclass(frozen=True)
class ClusterWorkers:
    """What a backend needs to start the workers of one cluster."""

    cluster_id: str
    namespace: str
    owner: str  # the exact JupyterHub name
    owner_slug: str  # the owner label
    uid: str  # the DaskCluster's uid (owner of the Kubernetes backend's pods)
    instance: str  # the release's app.kubernetes.io/instance label
    contact_address: str  # tls://<cluster-id>.<dask-domain>:<public port>
    tls: Mapping[str, str] = field(repr=False)  # PEM texts by file name (WORKER_TLS_FILES)
    xcache: str = ""  # root://host:port, or empty
    xcache_tls_secret: str = ""  # XCache's TLS Secret, whose CA the pods of a cluster trust
    token: str = field(default="", repr=False)  # the user's bearer token, when shared
    # The owner's batch-system credential from the site's Secret for them, for backends that
    # name one (Backend.credential_secret); empty otherwise.
    submit_token: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        """What every job of this cluster carries."""
        return f"{self.namespace}/{self.cluster_id}"

    def environment(self) -> dict[str, str]:
        """Environment every worker gets: where the facility's XCache is."""
        return {contract.ENV_XCACHE: self.xcache} if self.xcache else {}


@dataclass(frozen=True)
class Job:
    """One worker as its backend sees it."""

    name: str  # the worker's name (contract.worker_name)
    id: str  # pod name, SLURM job id or HTCondor ClusterId.ProcId
    group: str
    state: str  # one of ACTIVE or ENDED
    since: str = ""  # RFC 3339, when it entered this state, where the backend says
    reason: str = ""  # why it waits or ended, in the batch system's words
    account: str = ""  # the batch user it runs as, where the backend says (SLURM)

    @property
    def number(self) -> int:
        """The worker's number within its cluster (the last part of its name)."""
        tail = self.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1


@dataclass(frozen=True)
class Connection:
    """How a worker reaches its scheduler: the address it dials and the SNI it sends."""

    address: str
    sni: str | None

    @classmethod
    def for_cluster(cls, cluster: ClusterWorkers, config: Mapping[str, Any]) -> Connection:
        edge_host = config.get("edge_host")
        if not edge_host:
            return cls(cluster.contact_address, None)
        public = urlsplit(cluster.contact_address)
        return cls(f"tls://{edge_host}:{public.port}", public.hostname)


class Backend(ABC):
    """One batch system (or Kubernetes): the operator's hands for a cluster's workers."""

    name: ClassVar[str]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @property
    def python(self) -> str:
        return str(self.config.get("python") or WORKER_PYTHON)

    def credential_secret(self, owner: str) -> str | None:
        """The Secret (of the operator's namespace) whose key `token` the owner's jobs are
        submitted with; None when this backend takes no such Secret."""
        return None

    @property
    def death_timeout(self) -> int:
        return int(self.config.get("death_timeout", DEFAULT_DEATH_TIMEOUT))

    def worker_command(
        self, cluster: ClusterWorkers, group: WorkerGroup, name: str, tls_dir: str
    ) -> list[str]:
        """argv of one worker: `dask worker` trusting its cluster's CA alone (WORKER_MODULE).

        tls_dir: where the job finds the WORKER_TLS_FILES (a shell word where the backend runs
        the command through a shell).
        """
        connection = Connection.for_cluster(cluster, self.config)
        ca, cert, key = (f"{tls_dir}/{file}" for file in contract.WORKER_TLS_FILES)
        argv = [
            self.python, "-m", contract.WORKER_MODULE, connection.address,
            "--name", name,
            "--nthreads", str(group.cores),
            "--memory-limit", str(group.memory_bytes),
            "--death-timeout", str(self.death_timeout),
            "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key,
        ]  # fmt: skip
        if self.config.get("interface"):
            argv += ["--interface", str(self.config["interface"])]
        for resource, amount in group.resources().items():
            argv += ["--resources", f"{resource}={amount}"]
        if connection.sni:
            # The Nanny registers with the scheduler through connection arguments of its own,
            # without --scheduler-sni, so the edge could not route it: without wildcard DNS the
            # worker runs alone (the batch system limits its memory, the operator replaces it).
            argv += ["--scheduler-sni", connection.sni, "--no-nanny"]
        else:
            # The operator replaces a worker that ends; a Nanny restarting it would hide that.
            argv += ["--no-nanny"]
        # No dashboard: a plain-HTTP port on every worker that other users' pods could read.
        return [*argv, "--no-dashboard"]

    @abstractmethod
    def start(self, cluster: ClusterWorkers, group: WorkerGroup, names: list[str]) -> None:
        """Start one worker of `group` per name (a name already started is not started twice
        where the backend can tell)."""

    @abstractmethod
    def jobs(self, cluster_key: str, owner: str = "") -> list[Job]:
        """Every worker of one cluster that the backend still holds, ended ones included.
        owner: the cluster's JupyterHub user, where the backend can tell whose a job is (a job
        that another batch user submitted under the cluster's key is not its worker)."""

    @abstractmethod
    def remove(self, cluster_key: str, jobs: list[Job]) -> None:
        """Remove these workers of one cluster (a gone one is no error)."""

    def remove_all(self, cluster_key: str) -> int:
        """Remove every worker of one cluster; return how many were asked to go."""
        found = self.jobs(cluster_key)
        if found:
            self.remove(cluster_key, found)
        return len(found)

    @abstractmethod
    def list_all(self, namespace: str) -> dict[str, list[str]]:
        """Job ids by cluster key, for every worker of the facility in `namespace` (the
        operator's sweep: another facility sharing the batch system keeps its jobs)."""

    def log_tail(self, cluster_key: str, job: Job, lines: int = 20) -> str:
        """The last lines of a worker's output, where the backend keeps them; else ""."""
        return ""


def group_of(name: str, cluster_id: str) -> str:
    """The worker group in a worker's name `<cluster-id>-<group>-<n>`."""
    return name.removeprefix(f"{cluster_id}-").rsplit("-", 1)[0]


WORKER_NAME = re.compile(
    r"^(?P<cluster>[a-z0-9-]+)-(?P<group>[a-z][a-z0-9]{0,14})-(?P<number>[0-9]+)$"
)


def is_worker_of(name: str, cluster_id: str) -> bool:
    """Whether a job's name is one the operator gives a worker of this cluster. A batch job's
    attributes can be set by any user of the batch system: a job that merely claims to be a
    cluster's is not one of its workers (nor a path to read a log from)."""
    found = WORKER_NAME.match(name)
    return found is not None and found["cluster"] == cluster_id
