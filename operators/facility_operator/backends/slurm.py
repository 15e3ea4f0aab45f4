"""SLURM: workers are SLURM batch jobs of the cluster's owner, submitted, watched and cancelled by
the operator through `slurmrestd` (SLURM's REST API), authenticated with SLURM's own `auth/jwt`.

The operator holds the cluster's HS256 JWT key (the chart's `jwtKeySecret`, mounted in the
operator alone) and mints, for each call, a short-lived token for the one batch user that call
is about: a worker job is submitted and cancelled as the cluster's owner (their batch user, see
`facility_operator.batch_users`), so SLURM runs it under their uid, accounts it to them, and
shows its script and environment to them alone. Only the facility-wide listing of the sweep and
the per-cluster look at the queue use `inventory_account` (a user that sees every job: the
SlurmUser where the site sets `PrivateData=jobs`).

Config (the chart's `backends.slurm` values): `rest_url` (slurmrestd, e.g.
http://slurmrestd:6820), `jwt_key_file`, `api_version` (the OpenAPI plugin slurmrestd loads,
default v0.0.38: SLURM 22.05), `inventory_account`, `token_lifetime` (seconds), `partition`,
`account` (the account charged), `walltime` (SLURM's form: "08:00:00", "1-00:00:00", minutes),
`edge_host`, `interface`, `death_timeout`, `python`, `log_dir` (where each job writes its output
on the node, `<log_dir>/<worker>-<job id>.out`, and its working directory: writable by every
batch user), `extra_properties` (more fields of the API's job description, e.g. {qos: short}).

Every job carries `comment=facility:<namespace>/<cluster-id>` and is named after its worker.
The TLS files need no shared file system: the job script writes them, readable by the job's
user alone, into a temporary directory of the node that the job removes when it ends.
"""

from __future__ import annotations

import math
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import requests
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
from facility_operator.batch_users import NoBatchUser, batch_user

COMMENT_PREFIX = "facility:"
# Set by the job script; the worker command refers to the TLS files through it.
TLS_VARIABLE = "FACILITY_TLS"
HEREDOC_END = "FACILITY_PEM_END"
DEFAULT_LOG_DIR = "/tmp"
DEFAULT_API_VERSION = "v0.0.38"
DEFAULT_INVENTORY_ACCOUNT = "slurm"
DEFAULT_TOKEN_LIFETIME = 300
TIMEOUT = 60  # seconds for one call to slurmrestd
# The job's environment (the API submits none of the operator's own).
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"

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


class SlurmError(RuntimeError):
    """slurmrestd refused a call; the message is SLURM's own."""


def walltime_minutes(walltime: str) -> int:
    """SLURM's time forms ("MM", "HH:MM:SS", "D-HH[:MM[:SS]]") in whole minutes (rounded up)."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    else:
        hours, minutes, seconds = ([0] * (3 - len(parts)) + parts)[-3:]
    total = (int(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds
    return math.ceil(total / 60)


def _rfc3339(epoch: Any) -> str:
    """An epoch second of the API as RFC 3339, or "" for none (0)."""
    return datetime.fromtimestamp(int(epoch), UTC).isoformat() if epoch else ""


class SLURMBackend(Backend):
    name = "slurm"

    @property
    def log_dir(self) -> str:
        return str(self.config.get("log_dir") or DEFAULT_LOG_DIR)

    # --- talking to slurmrestd

    def _url(self, path: str) -> str:
        if not self.config.get("rest_url"):
            raise SlurmError("backends.slurm.restUrl is not set: name the site's slurmrestd")
        version = self.config.get("api_version", DEFAULT_API_VERSION)
        return f"{str(self.config['rest_url']).rstrip('/')}/slurm/{version}/{path}"

    def token(self, user: str) -> str:
        """A JWT for `user`, signed with the cluster's key, valid for token_lifetime seconds."""
        key_file = self.config.get("jwt_key_file")
        if not key_file:
            raise SlurmError("backends.slurm.jwtKeySecret is not set: the operator mints tokens")
        now = int(time.time())
        lifetime = int(self.config.get("token_lifetime", DEFAULT_TOKEN_LIFETIME))
        claims = {"sun": user, "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, Path(key_file).read_bytes(), algorithm="HS256")

    def call(self, method: str, path: str, user: str, body: Any = None) -> dict[str, Any]:
        """One call to slurmrestd as `user`; SlurmError with SLURM's words when it refuses."""
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.token(user)}
        try:
            answer = requests.request(
                method, self._url(path), headers=headers, json=body, timeout=TIMEOUT
            )
        except requests.RequestException as error:
            raise SlurmError(f"slurmrestd at {self.config['rest_url']}: {error}") from error
        try:
            result = answer.json()
        except ValueError:
            text = answer.text[:200]
            raise SlurmError(f"slurmrestd answered {answer.status_code}: {text}") from None
        errors = [
            ": ".join(dict.fromkeys(str(e[k]) for k in ("description", "error") if e.get(k)))
            for e in result.get("errors") or ()
        ]
        if errors or not answer.ok:
            raise SlurmError(f"as {user}: " + "; ".join(map(str, errors or [answer.reason])))
        return result

    @property
    def inventory_account(self) -> str:
        return str(self.config.get("inventory_account") or DEFAULT_INVENTORY_ACCOUNT)

    # --- the jobs

    def description(self, cluster: ClusterWorkers, group: WorkerGroup, name: str) -> dict:
        """The API's job description of one worker (what sbatch's options would say)."""
        job: dict[str, Any] = {
            "name": name,
            "comment": f"{COMMENT_PREFIX}{cluster.key}",
            "nodes": 1,
            "tasks": 1,
            "cpus_per_task": group.cores,
            "memory_per_node": math.ceil(group.memory_bytes / 2**20),
            "current_working_directory": self.log_dir,
            "standard_output": f"{self.log_dir}/{name}-%j.out",
            "environment": {"PATH": JOB_PATH, **cluster.environment()},
        }
        if group.gpus:
            job["gres"] = f"gpu:{group.gpus}"
        for key in ("partition", "account"):
            if self.config.get(key):
                job[key] = str(self.config[key])
        if self.config.get("walltime"):
            job["time_limit"] = walltime_minutes(str(self.config["walltime"]))
        return job | dict(self.config.get("extra_properties") or {})

    def job_script(self, cluster: ClusterWorkers, group: WorkerGroup, name: str) -> str:
        """The batch script of one worker."""
        lines = [
            "#!/usr/bin/env bash",
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
        command = self.worker_command(cluster, group, name, f"${TLS_VARIABLE}")
        # The TLS folder's variable must expand: every other word is quoted.
        lines.append(
            " ".join(word if TLS_VARIABLE in word else shlex.quote(word) for word in command)
        )
        return "\n".join(lines) + "\n"

    def start(self, cluster: ClusterWorkers, group: WorkerGroup, names: list[str]) -> None:
        user = batch_user(cluster.owner, self.config)
        for name in names:
            body = {
                "job": self.description(cluster, group, name),
                "script": self.job_script(cluster, group, name),
            }
            self.call("POST", "job/submit", user, body)

    def _records(self) -> list[dict[str, Any]]:
        """Every job slurmctld still knows (ended ones for MinJobAge)."""
        return list(self.call("GET", "jobs", self.inventory_account).get("jobs") or ())

    @staticmethod
    def _job(record: dict[str, Any], cluster_id: str) -> Job | None:
        state = STATES.get(str(record.get("job_state", "")))
        if state is None:
            return None
        name = str(record.get("name", ""))
        reason = str(record.get("state_reason") or "None")
        since = _rfc3339(record.get("start_time")) if state == RUNNING else ""
        if state in (SUCCEEDED, FAILED, EVICTED):
            # The API gives the wait status: exit code in the high byte, signal in the low.
            status = int(record.get("exit_code") or 0)
            why = f" ({reason})" if reason not in ("None", "") else ""
            reason = f"{record['job_state']}{why}, exit code {status >> 8}"
            if status & 0x7F:
                reason += f", signal {status & 0x7F}"
            since = _rfc3339(record.get("end_time"))
        elif state == PENDING:
            since = _rfc3339(record.get("submit_time"))
        return Job(
            name=name,
            id=str(record["job_id"]),
            group=group_of(name, cluster_id),
            state=state,
            since=since,
            reason="" if reason == "None" else reason,
            account=str(record.get("user_name", "")),
        )

    def jobs(self, cluster_key: str, owner: str = "") -> list[Job]:
        comment = COMMENT_PREFIX + cluster_key
        cluster_id = cluster_key.split("/", 1)[1]
        # SLURM says whose a job is; any batch user may write a cluster's comment and names.
        try:
            user = batch_user(owner, self.config) if owner else None
        except NoBatchUser:
            return []  # nobody's jobs are theirs; starting one says why
        found = (
            self._job(r, cluster_id)
            for r in self._records()
            if r.get("comment") == comment and user in (None, r.get("user_name"))
        )
        return [job for job in found if job is not None and is_worker_of(job.name, cluster_id)]

    def remove(self, cluster_key: str, jobs: list[Job]) -> None:
        for job in jobs:
            # Cancelled as the job's own user; an ended job need not be: no error then.
            try:
                self.call("DELETE", f"job/{job.id}", job.account or self.inventory_account)
            except SlurmError:
                if job.state in (PENDING, RUNNING):
                    raise

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        jobs: dict[str, list[str]] = {}
        for record in self._records():
            comment = str(record.get("comment", ""))
            ours = comment.startswith(f"{COMMENT_PREFIX}{namespace}/")
            if ours and STATES.get(str(record.get("job_state", ""))) in (PENDING, RUNNING):
                key = comment.removeprefix(COMMENT_PREFIX)
                jobs.setdefault(key, []).append(str(record["job_id"]))
        return jobs

    def log_tail(self, cluster_key: str, job: Job, lines: int = 20) -> str:
        path = Path(f"{self.log_dir}/{job.name}-{job.id}.out")
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""  # on a node's own disk, which the operator does not see
        return "\n".join(text.splitlines()[-lines:])
