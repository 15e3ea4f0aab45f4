"""HTCondor: workers are HTCondor jobs, submitted, queried and removed by the operator through
HTCondor's Python bindings (`htcondor2`; no `condor_submit` in any image).

Config (the chart's `backends.htcondor` values):

- `universe`: `docker` (the worker image as `docker_image`) or `vanilla` (the image run by
  apptainer through `+SingularityImage`; `apptainer_image` overrides the image reference,
  e.g. an unpacked image on CVMFS). Default `docker`.
- `schedd`, `collector`: where to submit and query; the local configuration's defaults when
  absent. A named schedd is remote: the job's input files are spooled to it.
- `work_dir`: the operator's folder for each cluster's job files (the TLS files and the user's
  token that travel with each job, and the jobs' output and error). Default
  /tmp/facility-htcondor.
- `edge_host`; `interface`; `death_timeout`; `python`; `walltime` (seconds, as `+MaxRuntime`);
  `extra_directives` (more submit commands); `credential`, `accounting_group` (below).

`credential` says who the schedd sees. `user` (the default): the owner's own bearer token
(their WLCG/SciToken access token, which FacilityCluster shares) authenticates the submit
(HTCondor's SCITOKENS method), so the job's Owner is the user; with no token shared, no job is
submitted and the start failure says why. `secret`: the site gives each user an HTCondor token
(an IDTOKEN for that user's identity) in a Secret of the operator's namespace, named by
`user_token_secret` with `{user}` for the owner's batch user (default `htcondor-token-{user}`,
key `token`); the operator presents it alone (a token folder of the submit's own), so the
job's Owner is the user; a missing Secret means no job, and the reason names it. `site`: the
operator's own HTCondor credential (the chart's `tokenSecret`, mounted in the operator alone)
submits every user's jobs, which then share one Owner. Whichever credential submits, the user's
bearer token travels with the job as `BEARER_TOKEN_FILE` (e.g. to read through XCache).
`accounting_group`, when set, charges the job to `<accounting_group>.<batch user>`
(`facility_operator.batch_users`).

Every job carries `+FacilityCluster = "<namespace>/<cluster-id>"` and
`+FacilityWorker = "<worker name>"`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from facility_client import contract

from facility_operator.backends.base import (
    EVICTED,
    FAILED,
    HELD,
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
from facility_operator.batch_users import batch_user

CLUSTER_ATTRIBUTE = "FacilityCluster"
WORKER_ATTRIBUTE = "FacilityWorker"
# The name of the user's token in the job's sandbox.
JOB_TOKEN = "bearer_token"
DEFAULT_WORK_DIR = "/tmp/facility-htcondor"
DEFAULT_USER_TOKEN_SECRET = "htcondor-token-{user}"
CREDENTIALS = ("user", "secret", "site")
CLIENT_METHODS = "SEC_CLIENT_AUTHENTICATION_METHODS"
# A finished job stays in the queue this long, so that the operator sees how it ended.
KEEP_FINISHED = 600
PROJECTION = [
    "ClusterId", "ProcId", "JobStatus", "EnteredCurrentStatus", "ExitCode", "ExitBySignal",
    "ExitSignal", "HoldReason", "LastHoldReason", "NumJobStarts", CLUSTER_ATTRIBUTE,
    WORKER_ATTRIBUTE, "Out",
]  # fmt: skip
# HTCondor's JobStatus codes.
IDLE, RUNNING_CODE, REMOVED, COMPLETED, HELD_CODE, TRANSFERRING = 1, 2, 3, 4, 5, 6
# The bindings read their configuration (the token of a submit) from process-wide parameters:
# one call to the schedd at a time, so that none authenticates with another's token.
SCHEDD_LOCK = threading.Lock()


class NoUserToken(RuntimeError):
    """The submit must carry the owner's own credential, and there is none (credential: user,
    or secret)."""


def new_syntax_arguments(argv: list[str]) -> str:
    """HTCondor's `arguments` in its new syntax: every argument single-quoted."""
    return (
        '"' + " ".join("'" + arg.replace("'", "''").replace('"', '""') + "'" for arg in argv) + '"'
    )


def quote_environment(environment: dict[str, str]) -> str:
    """HTCondor's `environment` in its new syntax."""
    return '"' + " ".join(f"{k}='{v}'" for k, v in environment.items()) + '"'


def _since(ad: Any) -> str:
    from datetime import UTC, datetime

    entered = ad.get("EnteredCurrentStatus")
    return datetime.fromtimestamp(int(entered), UTC).isoformat() if entered else ""


class HTCondorBackend(Backend):
    name = "htcondor"

    @property
    def universe(self) -> str:
        universe = str(self.config.get("universe", "docker"))
        if universe not in ("docker", "vanilla"):
            raise ValueError(f"htcondor universe must be docker or vanilla, not {universe!r}")
        return universe

    @property
    def credential(self) -> str:
        credential = str(self.config.get("credential", "user"))
        if credential not in CREDENTIALS:
            raise ValueError(f"htcondor credential is one of {CREDENTIALS}, not {credential!r}")
        return credential

    def credential_secret(self, owner: str) -> str | None:
        if self.credential != "secret":
            return None
        pattern = str(self.config.get("user_token_secret") or DEFAULT_USER_TOKEN_SECRET)
        return pattern.replace("{user}", batch_user(owner, self.config))

    def cluster_dir(self, cluster_id: str) -> Path:
        return Path(str(self.config.get("work_dir") or DEFAULT_WORK_DIR)) / cluster_id

    def write_job_files(self, cluster: ClusterWorkers) -> list[str]:
        """The files each job takes along, written for the operator's user alone; their paths."""
        directory = self.cluster_dir(cluster.cluster_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {name: cluster.tls[name] for name in contract.WORKER_TLS_FILES}
        if cluster.token:
            files[JOB_TOKEN] = cluster.token
        paths = []
        for name, text in files.items():
            path = directory / name
            path.touch(mode=0o600)
            path.write_text(text)
            paths.append(str(path))
        return paths

    def write_submit_token(self, cluster: ClusterWorkers) -> str:
        """A token folder holding the owner's HTCondor token alone (for the operator's user
        alone); its path."""
        directory = self.cluster_dir(cluster.cluster_id) / "submit-token"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / "token"
        path.touch(mode=0o600)
        path.write_text(cluster.submit_token)
        return str(directory)

    def submit_description(
        self, cluster: ClusterWorkers, group: WorkerGroup, name: str, inputs: list[str]
    ) -> dict[str, str]:
        """One worker's submit description (the bindings' Submit parses it)."""
        import classad2

        directory = self.cluster_dir(cluster.cluster_id)
        argv = self.worker_command(cluster, group, name, ".")
        description: dict[str, str] = {"universe": self.universe}
        if self.universe == "docker":
            description["docker_image"] = group.image
        else:
            image = self.config.get("apptainer_image") or f"docker://{group.image}"
            description["+SingularityImage"] = classad2.quote(str(image))
        environment = cluster.environment()
        if cluster.token:
            # File transfer keeps the base name; the worker's working directory is its sandbox.
            environment[contract.BEARER_TOKEN_FILE] = JOB_TOKEN
        description |= {
            "executable": argv[0],
            # The interpreter is the image's, not a file to send along.
            "transfer_executable": "false",
            "arguments": new_syntax_arguments(argv[1:]),
            "request_cpus": str(group.cores),
            "request_memory": f"{-(-group.memory_bytes // 2**20)}",  # MiB
            "request_disk": f"{-(-group.disk_bytes // 2**10)}",  # KiB
            f"+{CLUSTER_ATTRIBUTE}": f'"{cluster.key}"',
            f"+{WORKER_ATTRIBUTE}": f'"{name}"',
            "batch_name": f"dask-{cluster.cluster_id}",
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT_OR_EVICT",
            "transfer_input_files": ", ".join(inputs),
            "output": str(directory / f"{name}.out"),
            "error": str(directory / f"{name}.err"),
            "leave_in_queue": (
                f"JobStatus == {COMPLETED} && (time() - EnteredCurrentStatus) < {KEEP_FINISHED}"
            ),
        }
        if group.gpus:
            description["request_gpus"] = str(group.gpus)
        if environment:
            description["environment"] = quote_environment(environment)
        if self.config.get("walltime"):
            description["+MaxRuntime"] = str(int(self.config["walltime"]))
        if self.config.get("accounting_group"):
            description["accounting_group"] = str(self.config["accounting_group"])
            description["accounting_group_user"] = batch_user(cluster.owner, self.config)
        extra = self.config.get("extra_directives", {})
        description.update({str(key): str(value) for key, value in extra.items()})
        return description

    # --- the schedd, through the bindings

    def _schedd(self) -> Any:
        import htcondor2

        if not self.config.get("schedd"):
            return htcondor2.Schedd()
        collector = htcondor2.Collector(self.config.get("collector"))
        ad = collector.locate(htcondor2.DaemonType.Schedd, str(self.config["schedd"]))
        return htcondor2.Schedd(ad)

    def start(self, cluster: ClusterWorkers, group: WorkerGroup, names: list[str]) -> None:
        import htcondor2

        credential = self.credential
        if credential == "user" and not cluster.token:
            raise NoUserToken(
                f"{cluster.owner} has shared no token: HTCondor jobs are submitted with the "
                "owner's own token (FacilityCluster shares $BEARER_TOKEN_FILE; log in again "
                "through the hub), or the site sets operator.backends.htcondor.credential: site"
            )
        if credential == "secret" and not cluster.submit_token:
            raise NoUserToken(
                f"no HTCondor token for {cluster.owner}: the site's Secret "
                f"{self.credential_secret(cluster.owner)} (key token) is missing or empty "
                "(operator.backends.htcondor.userTokenSecret)"
            )
        inputs = self.write_job_files(cluster)
        # The user's credential, by its one method: a site credential that the operator may
        # also hold is never tried in its place.
        params: dict[str, str] = {}
        if credential == "user":
            params = {"SCITOKENS_FILE": inputs[-1], CLIENT_METHODS: "SCITOKENS"}
        elif credential == "secret":
            token_dir = self.write_submit_token(cluster)
            params = {"SEC_TOKEN_DIRECTORY": token_dir, CLIENT_METHODS: "IDTOKENS"}
        spool = bool(self.config.get("schedd"))
        with SCHEDD_LOCK:
            saved = {key: htcondor2.param.get(key) for key in params}
            htcondor2.param.update(params)
            try:
                schedd = self._schedd()
                for name in names:
                    description = self.submit_description(cluster, group, name, inputs)
                    result = schedd.submit(htcondor2.Submit(description), count=1, spool=spool)
                    if spool:
                        schedd.spool(result)
            finally:
                for key, value in saved.items():
                    if value is None:
                        htcondor2.param.pop(key, None)
                    else:
                        htcondor2.param[key] = value

    @staticmethod
    def _constraint(cluster_key: str) -> str:
        import classad2

        return f"{CLUSTER_ATTRIBUTE} == {classad2.quote(cluster_key)}"

    @staticmethod
    def _job(ad: Any) -> Job | None:
        status = int(ad.get("JobStatus", 0))
        name = str(ad.get(WORKER_ATTRIBUTE, ""))
        cluster_id = str(ad.get(CLUSTER_ATTRIBUTE, "")).partition("/")[2]
        job = {
            "name": name,
            "id": f"{ad['ClusterId']}.{ad['ProcId']}",
            "group": group_of(name, cluster_id),
            "since": _since(ad),
        }
        if status == REMOVED:
            return None
        if status == HELD_CODE:
            return Job(**job, state=HELD, reason=str(ad.get("HoldReason", "")))
        if status == COMPLETED:
            code = int(ad.get("ExitCode", 1) or 0)
            if ad.get("ExitBySignal"):
                return Job(**job, state=FAILED, reason=f"killed by signal {ad.get('ExitSignal')}")
            return Job(**job, state=SUCCEEDED if code == 0 else FAILED, reason=f"exit code {code}")
        if status in (RUNNING_CODE, TRANSFERRING):
            return Job(**job, state=RUNNING)
        if status == IDLE and int(ad.get("NumJobStarts", 0) or 0) > 0:
            # Ran and went back to the queue: evicted (preempted, its slot lost).
            last = str(ad.get("LastHoldReason", "") or "evicted from its slot and queued again")
            return Job(**job, state=EVICTED, reason=last)
        return Job(**job, state=PENDING)

    def jobs(self, cluster_key: str, owner: str = "") -> list[Job]:
        with SCHEDD_LOCK:
            ads = self._schedd().query(
                constraint=self._constraint(cluster_key), projection=PROJECTION
            )
        cluster_id = cluster_key.split("/", 1)[1]
        found = (self._job(ad) for ad in ads)
        return [job for job in found if job is not None and is_worker_of(job.name, cluster_id)]

    def remove(self, cluster_key: str, jobs: list[Job]) -> None:
        import htcondor2

        if jobs:
            with SCHEDD_LOCK:
                self._schedd().act(htcondor2.JobAction.Remove, [job.id for job in jobs])

    def remove_all(self, cluster_key: str) -> int:
        import htcondor2

        found = self.jobs(cluster_key)
        if found:
            with SCHEDD_LOCK:
                self._schedd().act(htcondor2.JobAction.Remove, self._constraint(cluster_key))
        return len(found)

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        constraint = f'regexp("^{namespace}/", {CLUSTER_ATTRIBUTE}) && JobStatus != {REMOVED}'
        with SCHEDD_LOCK:
            ads = self._schedd().query(
                constraint=constraint, projection=["ClusterId", "ProcId", CLUSTER_ATTRIBUTE]
            )
        jobs: dict[str, list[str]] = {}
        for ad in ads:
            jobs.setdefault(str(ad[CLUSTER_ATTRIBUTE]), []).append(
                f"{ad['ClusterId']}.{ad['ProcId']}"
            )
        return jobs

    def log_tail(self, cluster_key: str, job: Job, lines: int = 20) -> str:
        """The job's error and output files, where the operator's schedd wrote them back."""
        directory = self.cluster_dir(cluster_key.split("/", 1)[1])
        parts = []
        for suffix in ("err", "out"):
            path = directory / f"{job.name}.{suffix}"
            if path.exists():
                parts += path.read_text(errors="replace").splitlines()
        return "\n".join(parts[-lines:])
