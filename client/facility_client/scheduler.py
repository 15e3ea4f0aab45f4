"""The scheduler pod's program: `python -m facility_client.scheduler`.

It runs one Dask cluster's scheduler and its batch backend, configured only by the environment
of operators/README.md ("Scheduler pod"): FACILITY_CLUSTER_ID, FACILITY_NAMESPACE,
FACILITY_BACKEND, FACILITY_CONTACT_ADDRESS, FACILITY_TLS_DIR, FACILITY_IDLE_TIMEOUT,
FACILITY_WORKER_CORES, FACILITY_WORKER_MEMORY, FACILITY_WORKER_DISK, FACILITY_WORKER_IMAGE,
FACILITY_BACKEND_CONFIG (JSON) and FACILITY_XCACHE.

The scheduler listens with TLS on 0.0.0.0:8786 and hands out the public contact address; the
dashboard (with Prometheus `/metrics`) is on 8787. The desired scale comes from the pod's
annotations `facility.hep.io/min-workers` and `facility.hep.io/max-workers`, which the kubelet
writes to a downward-API file: equal values mean `scale(n)`, a range means `adapt`. On SIGTERM,
or when Dask's idle timeout closes the scheduler, the backend cluster closes (its jobs are
removed) and the program exits 0.

Tests override where it listens and which annotations file it reads: FACILITY_SCHEDULER_HOST,
FACILITY_SCHEDULER_PORT, FACILITY_DASHBOARD_PORT, FACILITY_PODINFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from distributed.deploy import SpecCluster

from facility_client.backends import backend_for
from facility_client.backends.base import ClusterSpec
from facility_client.security import scheduler_security

log = logging.getLogger("facility_client.scheduler")

ANNOTATIONS = "/etc/facility/podinfo/annotations"
MIN_WORKERS = "facility.hep.io/min-workers"
MAX_WORKERS = "facility.hep.io/max-workers"
# The kubelet refreshes the annotations file about once a minute; reading it every second
# costs nothing and adds no delay of our own.
POLL_SECONDS = 1.0


def spec_from_env(env: Mapping[str, str]) -> ClusterSpec:
    return ClusterSpec(
        cluster_id=env["FACILITY_CLUSTER_ID"],
        namespace=env["FACILITY_NAMESPACE"],
        contact_address=env["FACILITY_CONTACT_ADDRESS"],
        tls_dir=Path(env["FACILITY_TLS_DIR"]),
        cores=int(env["FACILITY_WORKER_CORES"]),
        memory=env["FACILITY_WORKER_MEMORY"],
        disk=env["FACILITY_WORKER_DISK"],
        image=env["FACILITY_WORKER_IMAGE"],
        xcache=env.get("FACILITY_XCACHE") or None,
    )


def read_scale(path: Path) -> tuple[int, int] | None:
    """(min, max) workers from a downward-API annotations file; None while either is missing.

    Each line is `key="value"`, the value quoted as a Go string (JSON-compatible for numbers).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    annotations = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        with contextlib.suppress(ValueError):
            annotations[key] = json.loads(value)
    try:
        return int(annotations[MIN_WORKERS]), int(annotations[MAX_WORKERS])
    except (KeyError, ValueError):
        return None


def apply_scale(cluster: SpecCluster, minimum: int, maximum: int) -> None:
    if minimum == maximum:
        log.info("scale to %d workers", minimum)
        # scale() alone would be undone by a running adaptive loop at its next tick.
        if cluster._adaptive is not None:
            cluster._adaptive.stop()
            cluster._adaptive = None
        cluster.scale(minimum)
    else:
        log.info("adapt between %d and %d workers", minimum, maximum)
        cluster.adapt(minimum=minimum, maximum=maximum)


async def follow_annotations(cluster: SpecCluster, path: Path) -> None:
    """Apply the desired scale whenever the annotations change, and keep a fixed scale: a job
    that ended under it (killed, preempted, past its walltime) is replaced."""
    applied = None
    while True:
        wanted = read_scale(path)
        if wanted is not None and wanted != applied:
            apply_scale(cluster, *wanted)
            applied = wanted
        elif applied is not None and applied[0] == applied[1] and len(cluster.workers) < applied[0]:
            # SpecCluster forgets a lost worker (after distributed.deploy.lost-worker-timeout)
            # but starts no other until asked; adapt() needs no help (Adaptive asks).
            log.info(
                "%d of %d workers left: starting replacements", len(cluster.workers), applied[0]
            )
            cluster.scale(applied[0])
        await asyncio.sleep(POLL_SECONDS)


async def run(env: Mapping[str, str]) -> None:
    spec = spec_from_env(env)
    backend = backend_for(
        env["FACILITY_BACKEND"], json.loads(env.get("FACILITY_BACKEND_CONFIG") or "{}")
    )
    host = env.get("FACILITY_SCHEDULER_HOST", "0.0.0.0")
    idle = int(env.get("FACILITY_IDLE_TIMEOUT") or 0)
    options = {
        "host": host,
        "port": int(env.get("FACILITY_SCHEDULER_PORT", 8786)),
        "dashboard_address": f"{host}:{env.get('FACILITY_DASHBOARD_PORT', 8787)}",
        "contact_address": spec.contact_address,
        "idle_timeout": idle or None,  # 0: never
    }
    cluster = backend.make_cluster(spec, scheduler_security(spec.tls_dir), options)
    await cluster
    log.info("cluster %s up: %s backend, contact %s", spec.key, backend.name, spec.contact_address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    follower = asyncio.create_task(
        follow_annotations(cluster, Path(env.get("FACILITY_PODINFO", ANNOTATIONS)))
    )
    stopped = asyncio.create_task(stop.wait())
    idle_closed = asyncio.create_task(cluster.scheduler.finished())
    try:
        await asyncio.wait({follower, stopped, idle_closed}, return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            follower.result()  # it ends only by an error: raise it (the cluster still closes)
    finally:
        for task in (follower, stopped, idle_closed):
            task.cancel()
        log.info("closing cluster %s (%s)", spec.key, "signal" if stop.is_set() else "ended")
        await cluster.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(os.environ))


if __name__ == "__main__":
    main()
