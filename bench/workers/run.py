#!/usr/bin/env python3
"""From `FacilityCluster.scale(n)` to the operator's workers, timed from the notebook's side
(a report, not a test).

The whole path of tests/integration/test_facility_cluster.py: a real JupyterHub (alice's token),
the operator's real user API and worker controller against the local cluster's API server (kwok
nodes: `ci/cluster up` first), each scheduler's program on loopback, the real Traefik, and for
the SLURM part a one-machine SLURM (root). The client is `FacilityCluster` with alice's hub
token, as in a notebook.

Each repeat, from a cluster at 0 workers:

- kubernetes: `scale(2)` -> the second worker pod exists in the API server (the operator made
  it: this is the goal's figure, under 5 s; kwok runs no container, so no worker connects);
- slurm: `scale(2)` -> the second SLURM job is queued, and -> two workers connected, as the
  client's `scheduler_info()` counts them;

then `scale(0)` and a wait until nothing is left. Writes report.json and report.png here.

usage: python bench/workers/run.py [--repeats 5] [--no-slurm]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import distributed
import matplotlib.pyplot as plt
from facility_client.cluster import FacilityCluster

from harness.commands import kubectl
from harness.net import free_port
from harness.operator_stack import Facility, running_facility
from harness.slurm import SlurmCluster, batch_system
from harness.wait import wait_for

HERE = Path(__file__).resolve().parent

GOAL_SECONDS = 5.0  # scale(2) -> the operator's second worker
NAMESPACE = "bench-workers"
WORKERS = 2


def say(message: str) -> None:
    print(f"[bench workers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def until(condition: Callable[[], object], what: str, timeout: float = 180) -> float:
    """Seconds until condition() holds, polled every 20 ms."""
    start = time.monotonic()
    wait_for(condition, what, timeout, interval=0.02)
    return time.monotonic() - start


def worker_pods(cluster_id: str) -> int:
    selector = f"facility.hep.io/cluster={cluster_id},app.kubernetes.io/component=dask-worker"
    done = kubectl("get", "pods", "-n", NAMESPACE, "-o", "name", "-l", selector)
    return len(done.stdout.split())


def slurm_jobs(slurm: SlurmCluster, cluster_id: str) -> int:
    key = f"facility:{NAMESPACE}/{cluster_id}"
    return sum(1 for _, _, comment in slurm.squeue() if comment == key)


@contextlib.contextmanager
def fresh_namespace() -> Iterator[str]:
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    try:
        yield NAMESPACE
    finally:
        kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def client_options(facility: Facility) -> dict[str, Any]:
    return {"edge_host": "127.0.0.1", "api_url": facility.api_url,
            "api_token": facility.tokens["alice"], "timeout": 120}  # fmt: skip


def measure_kubernetes(workdir: Path, repeats: int) -> list[dict[str, float]]:
    values = {"operator": {"backend": "kubernetes", "statusInterval": 1}}
    runs = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(fresh_namespace())
        facility = stack.enter_context(running_facility(workdir, NAMESPACE, values))
        cluster = stack.enter_context(FacilityCluster(**client_options(facility)))
        for repeat in range(repeats):
            start = time.monotonic()
            cluster.scale(WORKERS)
            asked = time.monotonic() - start
            made = asked + until(lambda: worker_pods(cluster.name) >= WORKERS, "the pods")
            runs.append({"scale_call_s": asked, "second_worker_made_s": made})
            say(f"kubernetes {repeat + 1}/{repeats}: second pod after {made:.2f} s")
            cluster.scale(0)
            until(lambda: worker_pods(cluster.name) == 0, "no worker pod")
    return runs


def measure_slurm(workdir: Path, repeats: int) -> list[dict[str, float]]:
    runs = []
    users = {"alice": "facility-test-alice"}  # the notebook's user, as a local batch user
    with batch_system(users.values(), (free_port(), free_port(), free_port())) as slurm:
        operator = slurm.operator_values(slurm.job_folder("jobs"), users)
        values = {"operator": operator | {"statusInterval": 1}}
        with contextlib.ExitStack() as stack:
            stack.enter_context(fresh_namespace())
            fac = stack.enter_context(
                running_facility(workdir, NAMESPACE, values, env=slurm.operator_env)
            )
            cluster = stack.enter_context(
                FacilityCluster(memory="256Mi", disk="100Mi", **client_options(fac))
            )
            for repeat in range(repeats):
                start = time.monotonic()
                cluster.scale(WORKERS)
                until(lambda: slurm_jobs(slurm, cluster.name) >= WORKERS, "jobs")
                queued = time.monotonic() - start
                until(lambda: len(cluster.scheduler_info["workers"]) >= WORKERS, "workers")
                total = time.monotonic() - start
                runs.append({"second_job_queued_s": queued, "workers_connected_s": total})
                say(f"slurm {repeat + 1}/{repeats}: 2 jobs {queued:.2f} s, "
                    f"2 connected {total:.2f} s")  # fmt: skip
                cluster.scale(0)
                until(lambda: slurm_jobs(slurm, cluster.name) == 0, "no job")
                until(lambda: not cluster.scheduler_info["workers"], "no worker")
    return runs


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    series = {"kubernetes: 2nd pod made": [r["second_worker_made_s"] for r in report["kubernetes"]]}
    if report.get("slurm"):
        series["slurm: 2nd job queued"] = [r["second_job_queued_s"] for r in report["slurm"]]
        series["slurm: 2 workers connected"] = [r["workers_connected_s"] for r in report["slurm"]]
    figure, ax = plt.subplots(figsize=(8, 4))
    for x, values in enumerate(series.values()):
        ax.bar(x, statistics.median(values), color="#3070b0")
        ax.plot([x] * len(values), values, "k.")
    ax.axhline(GOAL_SECONDS, color="#b03030", linestyle="--", label=f"goal {GOAL_SECONDS:.0f} s")
    ax.set_xticks(range(len(series)), list(series), fontsize=8)
    ax.set_ylabel("seconds after FacilityCluster.scale(2)")
    ax.legend()
    machine = report["machine"]
    ax.set_title(f"scale(2) to the operator's workers ({machine['cores']} cores; bars: medians of "
                 f"{report['config']['repeats']}, dots: runs)", fontsize=9)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-slurm", action="store_true", help="skip the SLURM part (root)")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "FacilityCluster.scale(n) to the operator's workers, from the notebook's side",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "distributed": distributed.__version__,
            "load_average_1_5_15_at_start": list(os.getloadavg()),
        },
        "config": vars(args) | {"workers": WORKERS, "worker_interval_s": 2},
        "goal": f"scale({WORKERS}) -> the operator's second worker within {GOAL_SECONDS} s",
    }
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        report["kubernetes"] = measure_kubernetes(Path(tmp) / "k8s", args.repeats)
        if not args.no_slurm:
            report["slurm"] = measure_slurm(Path(tmp) / "slurm", args.repeats)
    result = {"kubernetes_second_worker_made_s": stats(
        [r["second_worker_made_s"] for r in report["kubernetes"]])}  # fmt: skip
    if report.get("slurm"):
        result["slurm_second_job_queued_s"] = stats(
            [r["second_job_queued_s"] for r in report["slurm"]]
        )
        result["slurm_workers_connected_s"] = stats(
            [r["workers_connected_s"] for r in report["slurm"]]
        )
    result["goal_met"] = result["kubernetes_second_worker_made_s"]["max"] < GOAL_SECONDS
    report["result"] = result
    report["machine"]["load_average_1_5_15_at_end"] = list(os.getloadavg())
    (HERE / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, HERE / "report.png")
    say(f"{json.dumps(result)}; wrote {HERE / 'report.json'} and report.png")


if __name__ == "__main__":
    main()
