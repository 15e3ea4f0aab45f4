"""A one-machine SLURM (munged, slurmctld, slurmd from Debian) for tests and benchmarks.

Everything lives in a directory of the caller's: the munge key and socket, slurm.conf, state,
spool and logs; the daemons listen on loopback ports of the caller's choice. Nothing global
changes: the SLURM tools find this cluster through SLURM_CONF (see `SlurmCluster.env`), and
the slurm.conf names the munge socket. Needs root (slurmd starts jobs as their user).

    with slurm_cluster(tmp_path, ctld_port=22100, node_port=22101) as slurm:
        subprocess.run(["sbatch", "--wrap", "true"], env=slurm.env)
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STARTUP_SECONDS = 60


@dataclass(frozen=True)
class SlurmCluster:
    directory: Path
    conf: Path
    node: str

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
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text()[-4000:])
        return "\n".join(parts)


def write_config(directory: Path, ctld_port: int, node_port: int) -> SlurmCluster:
    # slurmctld runs only on the host that SlurmctldHost names, and slurmd finds its NodeName
    # by the host name: both are this machine's short name, reached at 127.0.0.1.
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "tmp"):
        (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=facilitytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={directory / "munge.socket"}
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
    # An empty SPANK configuration: the host's /etc/slurm/plugstack.conf stays out of it.
    (directory / "plugstack.conf").write_text("")
    return SlurmCluster(directory=directory, conf=conf, node=host)


@contextmanager
def slurm_cluster(directory: Path, ctld_port: int, node_port: int) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd running until the block ends; the node idle on entry."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = directory / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o600)
    slurm = write_config(directory, ctld_port, node_port)
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
        _wait(lambda: (directory / "munge.socket").exists(), "munged's socket", slurm)
        for command in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            daemons.append(
                subprocess.Popen(
                    [*command, "-f", str(slurm.conf)],
                    env=slurm.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait(lambda: slurm.node_state() == "idle", "the SLURM node to be idle", slurm)
        yield slurm
    finally:
        if len(daemons) == 3:
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
    _wait(lambda: not slurm.squeue(), "the jobs to end", slurm)
    marker = f"SLURM_CONF={slurm.conf}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            if pid not in daemons | {os.getpid()} and marker in environ.read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue  # gone meanwhile


def _wait(condition: object, what: str, slurm: SlurmCluster) -> None:
    """Poll until condition() holds, or fail with the daemons' logs (usable without pytest)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{slurm.logs()}")
        time.sleep(0.5)
