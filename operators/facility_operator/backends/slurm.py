"""SLURM: workers are SLURM batch jobs, submitted, watched and cancelled by the operator.

Config (the chart's `backends.slurm` values): `partition`, `account`, `walltime` (absent: the
partition's default time limit), `edge_host`, `interface` (the network interface whose address a
worker listens on and advertises), `death_timeout`, `python`, `log_dir` (where each job writes
its output on the node, `<log_dir>/<worker>-<job id>.out`; the operator reads the last lines of a
failed worker's file when it sees that folder too), `extra_directives` (more `#SBATCH`
options). The SLURM tools find the cluster through the usual `SLURM_CONF` and munge socket of
the operator's pod.

Every job carries `--comment=facility:<namespace>/<cluster-id>` and is named after its worker.
The TLS files need no shared file system: the job script itself writes them, readable by the
job's user alone, into a temporary directory of the node that the job removes when it ends.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

from facility_client import contract

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
    group_of,
    is_worker_of,
)

COMMENT_PREFIX = "facility:"
# Set by the job script; the worker command refers to the TLS files through it.
TLS_VARIABLE = "FACILITY_TLS"
HEREDOC_END = "FACILITY_PEM_END"
DEFAULT_LOG_DIR = "/tmp"
TIMEOUT = 60  # seconds for one SLURM command

# SLURM's job states, as the operator reports them. CANCELLED is missing on purpose: a
# cancelled job is gone (the operator's own removals, or somebody's scancel: then replaced).
STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "SUSPENDED": PENDING, "RESV_DEL_HOLD": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "STAGE_OUT": RUNNING,
    "COMPLETED": SUCCEEDED,
    "FAILED": FAILED, "OUT_OF_MEMORY": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED,
    "BOOT_FAIL": FAILED, "DEADLINE": FAILED,
    "PREEMPTED": EVICTED,
}  # fmt: skip
FIELD = re.compile(r"(\w+)=(\S*)")


def _slurm_time(value: str) -> str:
    """SLURM's local time stamp (2026-12-01T20:00:00), or "" for Unknown/None."""
    return value if value and value[0].isdigit() else ""


class SLURMBackend(Backend):
    name = "slurm"

    @property
    def log_dir(self) -> str:
        return str(self.config.get("log_dir") or DEFAULT_LOG_DIR)

    def directives(self, cluster: ClusterWorkers, group: WorkerGroup, name: str) -> list[str]:
        """The job's #SBATCH options."""
        options = [
            f"--job-name={name}",
            f"--comment={COMMENT_PREFIX}{cluster.key}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={group.cores}",
            f"--mem={math.ceil(group.memory_bytes / 2**20)}M",
            f"--tmp={math.ceil(group.disk_bytes / 2**20)}M",
            f"--output={self.log_dir}/{name}-%j.out",
        ]
        if group.gpus:
            options.append(f"--gres=gpu:{group.gpus}")
        for key, option in (
            ("partition", "--partition"),
            ("account", "--account"),
            ("walltime", "--time"),
        ):
            if self.config.get(key):
                options.append(f"{option}={self.config[key]}")
        return [*options, *(str(extra) for extra in self.config.get("extra_directives", []))]

    def job_script(self, cluster: ClusterWorkers, group: WorkerGroup, name: str) -> str:
        """The batch script of one worker."""
        lines = ["#!/usr/bin/env bash"]
        lines += [f"#SBATCH {option}" for option in self.directives(cluster, group, name)]
        lines += [
            "umask 077",
            f'{TLS_VARIABLE}="$(mktemp -d)"',
            f"trap 'rm -rf \"${TLS_VARIABLE}\"' EXIT",
            # A trapped SIGTERM waits for the worker to end: the shell stays its parent, so
            # SLURM's process tracking still finds a worker that hangs on closing, and kills it
            # after KillWait, instead of losing it as an orphan.
            "trap 'true' TERM",
        ]
        for file in contract.WORKER_TLS_FILES:
            lines += [
                f"cat > \"${TLS_VARIABLE}/{file}\" <<'{HEREDOC_END}'",
                cluster.tls[file].strip(),
                HEREDOC_END,
            ]
        lines += [
            f"export {key}={shlex.quote(value)}" for key, value in cluster.environment().items()
        ]
        command = self.worker_command(cluster, group, name, f"${TLS_VARIABLE}")
        # The TLS folder's variable must expand: every other word is quoted.
        lines.append(
            " ".join(word if TLS_VARIABLE in word else shlex.quote(word) for word in command)
        )
        return "\n".join(lines) + "\n"

    def start(self, cluster: ClusterWorkers, group: WorkerGroup, names: list[str]) -> None:
        for name in names:
            subprocess.run(
                ["sbatch", "--parsable"],
                input=self.job_script(cluster, group, name),
                check=True,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )

    # --- what SLURM holds

    @staticmethod
    def _records() -> Iterator[dict[str, str]]:
        """Every job slurmctld still knows (ended ones for MinJobAge), as key=value fields."""
        out = subprocess.run(
            ["scontrol", "--oneliner", "show", "job"],
            check=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout
        for line in out.splitlines():
            if line.startswith("JobId="):
                yield dict(FIELD.findall(line))

    @staticmethod
    def _job(record: dict[str, str], cluster_id: str) -> Job | None:
        state = STATES.get(record.get("JobState", ""))
        if state is None:
            return None
        name = record.get("JobName", "")
        reason = record.get("Reason", "None")
        since = _slurm_time(record.get("StartTime", "")) if state == RUNNING else ""
        if state in (SUCCEEDED, FAILED, EVICTED):
            code, _, signal = record.get("ExitCode", "0:0").partition(":")
            why = f" ({reason})" if reason not in ("None", "") else ""
            reason = f"{record['JobState']}{why}, exit code {code}"
            if signal not in ("", "0"):
                reason += f", signal {signal}"
            since = _slurm_time(record.get("EndTime", ""))
        elif state == PENDING:
            since = _slurm_time(record.get("SubmitTime", ""))
        return Job(
            name=name,
            id=record["JobId"],
            group=group_of(name, cluster_id),
            state=state,
            since=since,
            reason="" if reason == "None" else reason,
        )

    def jobs(self, cluster_key: str) -> list[Job]:
        comment = COMMENT_PREFIX + cluster_key
        cluster_id = cluster_key.split("/", 1)[1]
        found = (self._job(r, cluster_id) for r in self._records() if r.get("Comment") == comment)
        return [job for job in found if job is not None and is_worker_of(job.name, cluster_id)]

    def remove(self, cluster_key: str, jobs: list[Job]) -> None:
        if jobs:
            # An ended job cannot be cancelled, and need not be: scancel's complaint is no error.
            subprocess.run(
                ["scancel", *(job.id for job in jobs)], capture_output=True, timeout=TIMEOUT
            )

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        jobs: dict[str, list[str]] = {}
        for record in self._records():
            comment = record.get("Comment", "")
            ours = comment.startswith(f"{COMMENT_PREFIX}{namespace}/")
            if ours and STATES.get(record.get("JobState", "")) in (PENDING, RUNNING):
                jobs.setdefault(comment.removeprefix(COMMENT_PREFIX), []).append(record["JobId"])
        return jobs

    def log_tail(self, cluster_key: str, job: Job, lines: int = 20) -> str:
        path = Path(f"{self.log_dir}/{job.name}-{job.id}.out")
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""  # on a node's own disk, which the operator does not see
        return "\n".join(text.splitlines()[-lines:])
