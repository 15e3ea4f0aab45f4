"""A one-machine SLURM (munged, slurmctld, slurmd and slurmrestd from Debian) for tests and
benchmarks, with SLURM's `auth/jwt` on, as the operator's SLURM backend needs it.

Everything lives in a directory of the caller's: the munge and JWT keys, the munge socket,
slurm.conf, state, spool and logs; the daemons listen on loopback ports of the caller's
choice. The SLURM tools find this cluster through SLURM_CONF (see `SlurmCluster.env`), and the
slurm.conf names the munge socket. Needs root (slurmd starts jobs as their user).

Two things are machine-wide, as on a batch node: the batch users' local accounts
(`ensure_accounts`), and a Python for their jobs that every account may run (`node_python`:
the project's own interpreter lives under root's home, which they cannot enter).

    with slurm_cluster(tmp_path, ctld_port=22100, node_port=22101, rest_port=22102) as slurm:
        subprocess.run(["sbatch", "--wrap", "true"], env=slurm.env)
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.net import listening
from harness.paths import ROOT
from harness.wait import wait_for

STARTUP_SECONDS = 60
# slurmrestd needs no privilege of its own: every request acts as the user its token names.
REST_USER = "nobody"

# The worker's packages in the batch users' Python, pinned as in the images.
NODE_PACKAGES = ("dask", "distributed", "aiohttp")
NODE_PYTHON_ROOT = Path("/var/tmp/facility-node-python")


@dataclass(frozen=True)
class SlurmCluster:
    directory: Path
    conf: Path
    node: str
    rest_port: int = 0

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def jwt_key(self) -> Path:
        """The HS256 key of auth/jwt (AuthAltParameters): whoever holds it is every user."""
        return self.directory / "jwt.key"

    @property
    def operator_env(self) -> dict[str, str]:
        """The operator's environment: it reaches SLURM through slurmrestd alone, holding the
        JWT key as the chart mounts it (no SLURM_CONF, no munge socket)."""
        return {"FACILITY_SLURM_JWT_KEY_FILE": str(self.jwt_key)}

    def job_folder(self, name: str) -> Path:
        """A folder every batch user may write their job's output in (like a node's /tmp)."""
        folder = self.directory / name
        folder.mkdir()
        folder.chmod(0o1777)
        return folder

    def operator_values(self, log_dir: Path, users: dict[str, str], **backend: Any) -> dict:
        """The chart's `operator` values for this SLURM: workers on loopback through the edge
        (edgeHost 127.0.0.1), the batch users' Python, `users` as the batch-user table."""
        slurm = {
            "restUrl": self.rest_url, "edgeHost": "127.0.0.1", "interface": "lo",
            "partition": "debug", "deathTimeout": 60, "python": node_python(),
            "logDir": str(log_dir),
        }  # fmt: skip
        return {
            "backend": "slurm",
            "batchUsers": {"rule": "table", "table": users},
            "backends": {"slurm": slurm | backend},
        }

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster, for the tools and the daemons."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def squeue(self) -> list[tuple[str, str, str]]:
        """(job id, state, comment) of the jobs that have not ended."""
        out = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%T|%k"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        rows = [line.split("|", 2) for line in out.splitlines()]
        return [(job, state, comment) for job, state, comment in rows]

    def node_state(self) -> str:
        done = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T", "--nodes", self.node],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmrestd.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text()[-4000:])
        return "\n".join(parts)


def write_config(directory: Path, ctld_port: int, node_port: int, rest_port: int) -> SlurmCluster:
    # slurmctld runs only on the host that SlurmctldHost names, and slurmd finds its NodeName
    # by the host name: both are this machine's short name, reached at 127.0.0.1.
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "tmp"):
        (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    jwt_key = directory / "jwt.key"
    jwt_key.write_bytes(secrets.token_bytes(32))
    os.chmod(jwt_key, 0o600)
    conf = directory / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=facilitytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={directory / "munge.socket"}
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={jwt_key}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={directory / "spool"}
TmpFS={directory / "tmp"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld.log"}
SlurmdLogFile={directory / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MailProg=/bin/true
PlugStackConfig={directory / "plugstack.conf"}
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2048 TmpDisk=1024 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    # Every SLURM client reads slurm.conf: slurmrestd (as REST_USER), and the batch users' own
    # scontrol and squeue. The keys, state and spool stay root's.
    os.chmod(conf, 0o644)
    # An empty SPANK configuration: the host's /etc/slurm/plugstack.conf stays out of it.
    (directory / "plugstack.conf").write_text("")
    os.chmod(directory / "plugstack.conf", 0o644)
    return SlurmCluster(directory=directory, conf=conf, node=host, rest_port=rest_port)


@contextmanager
def batch_system(users: Iterable[str], ports: Iterable[int]) -> Iterator[SlurmCluster]:
    """slurm_cluster in a folder of its own under /tmp (the batch users enter it, unlike
    pytest's), whose jobs may run as the local accounts `users` (made where missing)."""
    directory = Path(tempfile.mkdtemp(prefix="facility-slurm-"))
    ensure_accounts(*users)
    try:
        with slurm_cluster(directory, *ports) as cluster:
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def slurm_cluster(
    directory: Path, ctld_port: int, node_port: int, rest_port: int
) -> Iterator[SlurmCluster]:
    """munged, slurmctld, slurmd and slurmrestd running until the block ends; the node idle on
    entry. The directory may be entered by every user (to read slurm.conf), not listed."""
    directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(directory, 0o711)
    for parent in directory.parents:
        if parent.stat().st_mode & 0o001 == 0:
            raise RuntimeError(f"{parent} must be enterable by every user (chmod o+x)")
    key = directory / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o600)
    slurm = write_config(directory, ctld_port, node_port, rest_port)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        daemons.append(
            subprocess.Popen(
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--socket={directory / 'munge.socket'}",
                    f"--key-file={key}",
                    f"--pid-file={directory / 'munged.pid'}",
                    f"--seed-file={directory / 'munged.seed'}",
                ],
                # In the foreground munged logs to stderr.
                stderr=(directory / "munged.log").open("ab"),
            )
        )
        wait_for(
            lambda: (directory / "munge.socket").exists(),
            "munged's socket",
            STARTUP_SECONDS,
            details=slurm.logs,
        )
        for command in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            daemons.append(
                subprocess.Popen(
                    [*command, "-f", str(slurm.conf)],
                    env=slurm.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for(
            lambda: slurm.node_state() == "idle",
            "the SLURM node to be idle",
            STARTUP_SECONDS,
            details=slurm.logs,
        )
        daemons.append(
            subprocess.Popen(
                # rest_auth/jwt: every request names its user and carries a token for them;
                # SLURM_JWT=daemon makes slurmrestd pass that token on to slurmctld.
                ["slurmrestd", "-a", "rest_auth/jwt", "-s", "openapi/v0.0.38", "-u", REST_USER,
                 "-f", str(slurm.conf), f"127.0.0.1:{rest_port}"],
                env={**slurm.env, "SLURM_JWT": "daemon"},
                stdout=subprocess.DEVNULL,
                stderr=(directory / "slurmrestd.log").open("ab"),
            )
        )  # fmt: skip
        wait_for(
            lambda: listening(rest_port),
            "slurmrestd to listen",
            STARTUP_SECONDS,
            details=slurm.logs,
        )
        yield slurm
    finally:
        if len(daemons) == 4:
            _cancel_all(slurm, {daemon.pid for daemon in daemons})
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _cancel_all(slurm: SlurmCluster, daemons: set[int]) -> None:
    """Cancel every job and wait for them to end (slurmstepd outlives slurmd); then kill any
    process of a job that escaped SLURM's tracking (found by the SLURM_CONF it inherited)."""
    jobs = [job for job, _, _ in slurm.squeue()]
    if jobs:
        subprocess.run(["scancel", *jobs], env=slurm.env, check=False, timeout=30)
    wait_for(
        lambda: not slurm.squeue(),
        "the jobs to end",
        STARTUP_SECONDS,
        details=slurm.logs,
    )
    marker = f"SLURM_CONF={slurm.conf}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            if pid not in daemons | {os.getpid()} and marker in environ.read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue  # gone meanwhile


def ensure_accounts(*names: str) -> None:
    """Local system accounts of these names (no home, no login shell), made where missing."""
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip


def node_python() -> str:
    """A Python with the worker's packages (the images' pins) and facility_client, that every
    account may run: Debian's interpreter in a virtual environment under /var/tmp, made once
    per pin set and client version."""
    pins = (ROOT / "images/requirements/science.txt").read_text()
    client = sorted((ROOT / "client").rglob("*.py"))
    digest = hashlib.sha256(pins.encode())
    for path in client:
        digest.update(path.read_bytes())
    root = NODE_PYTHON_ROOT / digest.hexdigest()[:16]
    python = root / "bin/python"
    if python.exists():
        return str(python)
    NODE_PYTHON_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    building = root.with_name(root.name + f".{os.getpid()}")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(building)], check=True, timeout=300)
    pip = [str(building / "bin/python"), "-m", "pip", "install", "--quiet"]
    constraints = ROOT / "images/requirements/science.txt"
    subprocess.run([*pip, "-c", str(constraints), *NODE_PACKAGES], check=True, timeout=900)
    # Built from a copy: pip's in-tree build would leave client/build/ in the repository.
    with tempfile.TemporaryDirectory() as copy:
        source = shutil.copytree(ROOT / "client", Path(copy) / "client",
                                 ignore=shutil.ignore_patterns("build", "*.egg-info"))  # fmt: skip
        subprocess.run([*pip, "--no-deps", str(source)], check=True, timeout=300)
    building.rename(root)
    return str(python)
