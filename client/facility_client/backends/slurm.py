"""SLURM: workers are SLURM batch jobs (dask-jobqueue's SLURMCluster).

Config (the chart's `backends.slurm` values, as FACILITY_BACKEND_CONFIG): `partition`,
`account`, `walltime` (absent: the partition's default time limit), `edge_host`, `interface`
(the network interface whose address a worker listens on and advertises; the scheduler pod
must be able to reach it), `death_timeout`, `python`, `extra_directives` (more `#SBATCH`
options). The SLURM tools find the cluster through the usual `SLURM_CONF` and munge socket of
the pod or operator.

Every job carries `--comment=facility:<namespace>/<cluster-id>`. The TLS files need no shared
file system: the job script itself writes them, readable by the job's user alone, into a
temporary directory of the node that the job removes when it ends.
"""

from __future__ import annotations

import math
import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob
from distributed.deploy import SpecCluster

from facility_client.backends.base import (
    WORKER_TLS_FILES,
    Backend,
    ClusterSpec,
    FacilityJobMixin,
    WorkerConnection,
)
from facility_client.security import ClusterSecurity

COMMENT_PREFIX = "facility:"
# Set by the job script; the worker command refers to the TLS files through it.
TLS_VARIABLE = "FACILITY_TLS"
HEREDOC_END = "FACILITY_PEM_END"


class FacilitySLURMJob(FacilityJobMixin, SLURMJob):
    """A SLURM job of a facility cluster."""


def tls_prologue(spec: ClusterSpec) -> list[str]:
    """Job script lines that write the cluster's TLS files on the node."""
    lines = [
        "umask 077",
        f'{TLS_VARIABLE}="$(mktemp -d)"',
        f"trap 'rm -rf \"${TLS_VARIABLE}\"' EXIT",
        # A trapped SIGTERM waits for the worker to end: the shell stays its parent, so SLURM's
        # process tracking (a process tree under proctrack/linuxproc) still finds a worker that
        # hangs on closing, and kills it after KillWait, instead of losing it as an orphan.
        "trap 'true' TERM",
    ]
    for name in WORKER_TLS_FILES:
        pem = (spec.tls_dir / name).read_text().strip()
        lines += [f"cat > \"${TLS_VARIABLE}/{name}\" <<'{HEREDOC_END}'", pem, HEREDOC_END]
    return lines


class SLURMBackend(Backend):
    name = "slurm"

    def make_cluster(
        self,
        spec: ClusterSpec,
        security: ClusterSecurity,
        scheduler_options: Mapping[str, Any],
    ) -> SpecCluster:
        connection = WorkerConnection.for_spec(spec, self.config, f"${TLS_VARIABLE}")
        prologue = tls_prologue(spec) + [
            f"export {name}={shlex.quote(value)}" for name, value in spec.job_environment().items()
        ]
        directives = [
            f"--comment={COMMENT_PREFIX}{spec.key}",
            f"--tmp={math.ceil(spec.disk_bytes / 2**20)}M",
            *self.config.get("extra_directives", []),
        ]
        walltime = self.config.get("walltime")
        return SLURMCluster(
            job_cls=FacilitySLURMJob,
            **self.jobqueue_options(spec, security, scheduler_options, connection),
            queue=self.config.get("partition"),
            account=self.config.get("account"),
            walltime=walltime,
            # Without a configured walltime, dask-jobqueue would write its own default of
            # 30 minutes; leaving `-t` out gives the partition's default instead.
            job_directives_skip=[] if walltime else ["-t "],
            job_extra_directives=directives,
            job_script_prologue=prologue,
        )

    # --- the operator side: squeue and scancel

    @staticmethod
    def _queue() -> list[tuple[str, str]]:
        """(job id, comment) of every job SLURM holds that has not ended."""
        out = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%k"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        rows = (line.partition("|") for line in out.splitlines())
        return [(job, comment) for job, _, comment in rows]

    def list_jobs(self, cluster_key: str) -> list[str]:
        comment = COMMENT_PREFIX + cluster_key
        return [job for job, found in self._queue() if found == comment]

    def remove_jobs(self, cluster_key: str) -> int:
        jobs = self.list_jobs(cluster_key)
        if jobs:
            subprocess.run(["scancel", *jobs], check=True, capture_output=True, timeout=60)
        return len(jobs)

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        jobs: dict[str, list[str]] = {}
        for job, comment in self._queue():
            if comment.startswith(f"{COMMENT_PREFIX}{namespace}/"):
                jobs.setdefault(comment.removeprefix(COMMENT_PREFIX), []).append(job)
        return jobs
