#!/usr/bin/env python3
"""Dask through the edge vs. straight to the scheduler: small-task rate and result throughput
(a report, not a test).

One cluster identity (facility_operator.certs), one real Traefik with the chart's entrypoint and
the operator's route shape (harness/dask_edge.py), and, for each run, a fresh scheduler
(`scheduler_security`), `--workers` `dask worker` processes and a client, all with mutual TLS.
In a "direct" run the client and the workers dial the scheduler's own port; in an "edge" run
they dial Traefik's port with the cluster's SNI, and Traefik passes the TLS stream through.
The scheduler reaches the workers directly in both, as in production (FIELD-NOTES.md), so the
edge carries client<->scheduler and worker<->scheduler control traffic, and the gathered results
on their way from the scheduler to the client.

Each run times `--tasks` tiny tasks (submitted with one `map`, results gathered) and `--results`
tasks returning `--result-mib` MiB of random bytes each, gathered by the client through the
scheduler in batches. Runs alternate direct/edge, in reversed order every other repeat, so that
drift in the machine's load hits both alike. Writes report.json and report.png beside this file.

usage: python bench/dask_edge/run.py [--tasks 10000] [--results 256] [--result-mib 4]
                                     [--batch 16] [--workers 2] [--repeats 5]

How long a worker takes to start is bench/workers (the operator makes the workers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import operator
import os
import platform
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import dask
import distributed
import matplotlib.pyplot as plt
from distributed import Client
from facility_operator.certs import new_facility_ca

from harness.commands import tool
from harness.dask_edge import (
    LOOPBACK,
    Cluster,
    Edge,
    new_cluster,
    running_edge,
    running_scheduler,
    running_worker,
)
from harness.net import free_port

HERE = Path(__file__).resolve().parent

GOAL = 0.9  # edge / direct, for both figures
MODES = ("direct", "edge")


def say(message: str) -> None:
    print(f"[bench dask_edge {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stamped(i: int, blob: bytes) -> bytes:
    """A task: a distinct result of the blob's size (a copy, so that no two results share
    memory or a serialization), without the cost of making random bytes in every task."""
    return i.to_bytes(8, "little") + blob[8:]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def workload(
    client: Client, args: argparse.Namespace, edge_cpu: Callable[[], float]
) -> dict[str, float]:
    """The two measurements of one run, on a client whose workers are all up, each with the CPU
    time that Traefik spent meanwhile (the edge's cost, whether or not the run goes through it).
    """
    # Warm-up, not timed: connections, the functions' pickles, the workers' first tasks.
    client.gather(client.map(operator.neg, range(100), key="warm-up"))

    def small() -> None:
        results = client.gather(client.map(operator.neg, range(args.tasks), key="neg"))
        assert len(results) == args.tasks

    cpu = edge_cpu()
    small_s = timed(small)
    small_cpu = edge_cpu() - cpu

    size = args.result_mib << 20
    blob = client.submit(os.urandom, size, key="blob")
    distributed.wait(blob)
    received = 0

    def large() -> None:
        nonlocal received
        futures = client.map(stamped, range(args.results), blob=blob, key="stamped")
        while futures:
            # Dropping a batch's futures releases its results on the workers once gathered.
            batch, futures = futures[: args.batch], futures[args.batch :]
            received += sum(len(result) for result in client.gather(batch))
        assert received == args.results * size

    cpu = edge_cpu()
    large_s = timed(large)
    large_cpu = edge_cpu() - cpu
    return {
        "tasks": args.tasks,
        "tasks_seconds": small_s,
        "tasks_per_s": args.tasks / small_s,
        "tasks_traefik_cpu_seconds": small_cpu,
        "result_bytes": received,
        "results_seconds": large_s,
        "MBps": received / large_s / 1e6,
        "results_traefik_cpu_seconds": large_cpu,
    }


def one_run(
    mode: str, cluster: Cluster, edge: Edge, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    through_edge = mode == "edge"
    via = edge if through_edge else None
    rundir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir))
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_scheduler(cluster, rundir / "scheduler.log"))
        for i in range(args.workers):
            name = f"{cluster.id}-w{i}"
            stack.enter_context(running_worker(cluster, name, rundir / f"{name}.log", via))
        address = edge.address if through_edge else cluster.direct_address
        # Results come to the client through the scheduler (never straight from the workers,
        # which a client outside the batch network could not reach).
        client = stack.enter_context(
            Client(
                address,
                security=cluster.security(through_edge),
                direct_to_workers=False,
                timeout=30,
            )
        )
        client.wait_for_workers(args.workers, timeout=60)
        figures = workload(client, args, lambda: cpu_seconds(edge.process.pid))
    return {
        "mode": mode,
        **figures,
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
    }


def machine() -> dict[str, Any]:
    meminfo = dict(
        line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
    )
    traefik = subprocess.run([tool("traefik"), "version"], capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "memory_GiB": round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "traefik": traefik.stdout.split()[1],
        "load_average_1_5_15_at_start": list(os.getloadavg()),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    medians = {
        mode: {
            figure: statistics.median(r[figure] for r in runs if r["mode"] == mode)
            for figure in (
                "tasks_per_s",
                "MBps",
                "tasks_traefik_cpu_seconds",
                "results_traefik_cpu_seconds",
            )
        }
        for mode in MODES
    }
    ratios = {
        figure: medians["edge"][figure] / medians["direct"][figure]
        for figure in ("tasks_per_s", "MBps")
    }
    return {
        "median": medians,
        "ratio_edge_over_direct": ratios,
        "goal": GOAL,
        "goal_met": all(ratio >= GOAL for ratio in ratios.values()),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    runs, median = report["runs"], report["result"]["median"]
    ratios = report["result"]["ratio_edge_over_direct"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title in (
        (axes[0], "tasks_per_s", f"{report['config']['tasks']:,} small tasks"),
        (axes[1], "MBps", f"{report['config']['results']} x {report['config']['result_mib']} MiB"
                          " results gathered"),
    ):  # fmt: skip
        ax.bar(MODES, [median[mode][key] for mode in MODES], color=["#888888", "#3070b0"])
        for x, mode in enumerate(MODES):
            values = [r[key] for r in runs if r["mode"] == mode]
            ax.plot([x] * len(values), values, "k.")
        ax.set_title(f"{title}\nedge / direct = {ratios[key]:.2f}")
        ax.set_ylabel("tasks/s" if key == "tasks_per_s" else "MB/s")
    machine = report["machine"]
    figure.suptitle(
        f"Dask with TLS: direct vs. through Traefik {machine['traefik']} by SNI "
        f"({machine['cores']} cores, medians of {report['config']['repeats']}; dots: runs)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--results", type=int, default=256)
    parser.add_argument("--result-mib", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="results per gather")
    parser.add_argument("--workers", type=int, default=2, help="each with one thread")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    report: dict[str, Any] = {
        "benchmark": "Dask with TLS: straight to the scheduler vs. through Traefik by SNI",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "config": vars(args),
        "paths": {
            "direct": "client and workers -> scheduler's port (TLS)",
            "edge": "client and workers -> Traefik (TLS passthrough by SNI) -> scheduler; "
            "scheduler -> workers direct; results: workers -> scheduler -> Traefik -> client",
        },
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-dask-edge-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        cluster = new_cluster(new_facility_ca("bench"), "bench", workdir, port)
        schedulers = {cluster.sni: f"{LOOPBACK}:{cluster.scheduler_port}"}
        # The hub's route is part of the chart's entrypoint; nothing is served behind it here.
        with running_edge(workdir, port, schedulers, f"http://{LOOPBACK}:{free_port()}") as edge:
            for repeat in range(args.repeats):
                for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                    say(f"repeat {repeat + 1}/{args.repeats}: {mode}")
                    run = one_run(mode, cluster, edge, workdir, args)
                    say(
                        f"  {run['tasks_per_s']:.0f} tasks/s, {run['MBps']:.0f} MB/s; Traefik CPU "
                        f"{run['tasks_traefik_cpu_seconds']:.1f} s + "
                        f"{run['results_traefik_cpu_seconds']:.1f} s"
                    )
                    runs.append({"repeat": repeat, **run})
    report["machine"]["load_average_1_5_15_at_end"] = list(os.getloadavg())
    report["runs"] = runs
    report["result"] = summary(runs)
    (HERE / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, HERE / "report.png")
    ratios = report["result"]["ratio_edge_over_direct"]
    say(
        f"edge/direct: tasks/s {ratios['tasks_per_s']:.2f}, MB/s {ratios['MBps']:.2f} "
        f"(goal >= {GOAL}); wrote {HERE / 'report.json'} and report.png"
    )


if __name__ == "__main__":
    main()
