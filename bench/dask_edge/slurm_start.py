"""Time from `scale(1)` to the first worker connected, with the SLURM backend (root only).

The same parts as tests/integration/test_backend_slurm.py: a one-machine SLURM, the scheduler
pod's program (`python -m facility_client.scheduler`, backend slurm) and the real Traefik with the
operator's route shape. Each repeat asks for one worker through the annotations file, as the
operator does, and waits until the scheduler's own Prometheus metrics count it (the worker dialled
the edge by SNI, and its TLS handshake with the scheduler completed); then scales back to zero and
waits for the job to be gone.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.integration.dask_edge import LOOPBACK, running_edge
from tests.integration.slurm import scheduler_program, slurm_cluster, write_identity

CLUSTER_ID = "bench-s1urm"
SNI = f"{CLUSTER_ID}.dask.test"


def connected_workers(dashboard_port: int) -> float:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{dashboard_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dask_scheduler_workers{")
    )


def wait(condition: Any, what: str, timeout: float) -> float:
    """Seconds until condition() holds, polled every 50 ms; fails after timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def measure(workdir: Path, repeats: int) -> dict[str, Any]:
    edge_port, scheduler_port, dashboard_port = free_port(), free_port(), free_port()
    write_identity(workdir / "scheduler" / "tls", CLUSTER_ID, SNI)
    schedulers = {SNI: f"{LOOPBACK}:{scheduler_port}"}
    seconds = []
    with (
        slurm_cluster(workdir / "slurm", free_port(), free_port()) as slurm,
        running_edge(workdir, edge_port, schedulers, f"http://{LOOPBACK}:{free_port()}"),
        scheduler_program(
            slurm,
            workdir / "scheduler",
            cluster_id=CLUSTER_ID,
            namespace="bench",
            contact_address=f"tls://{SNI}:{edge_port}",
            edge_host=LOOPBACK,
            port=scheduler_port,
            dashboard_port=dashboard_port,
        ) as program,
    ):
        for _ in range(repeats):
            program.scale(1)
            seconds.append(
                wait(lambda: connected_workers(dashboard_port) >= 1, "the first worker", 120)
            )
            program.scale(0)
            wait(lambda: not slurm.squeue(), "the job to end", 120)
            wait(lambda: connected_workers(dashboard_port) == 0, "the worker to leave", 60)
    return {
        "slurm_first_worker_seconds": statistics.median(seconds),
        "slurm_first_worker_runs": [round(s, 2) for s in seconds],
        "slurm_first_worker_note": (
            "median over the runs: from scale(1) (the scheduler's annotations file written, as "
            "the operator patches the pod) to the worker counted by the scheduler's /metrics; "
            "the job runs on a one-machine SLURM (sbatch -> slurmd -> dask worker through the "
            "edge by SNI)"
        ),
    }
