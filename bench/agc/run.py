#!/usr/bin/env python3
"""The example analysis (examples/agc/ttbar.py) on `make up`'s facility, timed as a physicist
waits for it (a report, not a test).

On `make up`'s running facility (its full data set, 1.3 GB), one run:

- login: Chromium logs in as alice through the edge until JupyterLab has loaded, her server to
  start (stopped first on the hub's home page);
- local: the analysis in this process on the data set's files on local disk (no cache, no Dask);
- then, in alice's notebook pod (kubectl exec: her environment, her token), one FacilityCluster:
  `FacilityCluster()` to Running, `scale(n)` to n workers connected, and the analysis twice on
  its workers through XCache: cold (the cache emptied first: every byte from the origin) and
  warm (every byte from the cache). The first histogram is the cold run's.

Events per second per worker core for each, the ratio warm / local (goal: at least 0.8), beside
the published figures: the AGC's 200 Gbps challenge ran its ttbar analysis at 27.5 MHz on about
920 workers, about 30 kHz per worker, on real hardware. Writes report.json and report.png here.

usage: python bench/agc/run.py [--workers 1] (as root, after make up)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from harness.browser_network import browser_network
from harness.examples import agc_analysis
from harness.oidc import browser_login
from harness.paths import CLUSTER_DIR, KUBECONFIG, TOOLS
from harness.wait import wait_for

HERE = Path(__file__).resolve().parent
STATE = CLUSTER_DIR
KUBECTL = [str(TOOLS / "kubectl"), f"--kubeconfig={KUBECONFIG}"]
NAMESPACE, FULLNAME, USER = "facility", "facility", "alice"
DATASETS = "/store/agc/full/datasets.json"
CACHED = "/var/cache/xcache/store/agc/full"  # the data set in XCache's volume (uid 1000)
GOAL_WARM_OVER_LOCAL = 0.8
PUBLISHED_HZ_PER_WORKER = 27.5e6 / 920  # the 200 Gbps challenge, AGC ttbar

# In alice's notebook pod: the notebook's own steps, each timed; prints one JSON line.
IN_THE_NOTEBOOK = """
import json, os, sys, time, types
# The example as a module that no process can import (not in sys.modules): Dask then sends its
# functions by value, as it does for a notebook's own cells.
path = os.path.expanduser("~/examples/agc/ttbar.py")
ttbar = types.ModuleType("ttbar_sent_by_value")
exec(compile(open(path).read(), path, "exec"), ttbar.__dict__)
from facility_client.cluster import FacilityCluster
workers = int(sys.argv[1])
times = {}
began = time.monotonic()
with FacilityCluster(cores=1, memory="2Gi") as cluster, cluster.get_client() as client:
    times["cluster_running_s"] = time.monotonic() - began
    began = time.monotonic()
    cluster.scale(workers)
    client.wait_for_workers(workers, timeout=600)
    times["workers_connected_s"] = time.monotonic() - began
    server, listing = client.submit(ttbar.where_the_data_are, sys.argv[2]).result()
    runs = {}
    for run in ("cold", "warm"):
        if run == "cold":
            print("EMPTY-THE-CACHE", flush=True)
            sys.stdin.readline()
        began = time.monotonic()
        result = ttbar.run(ttbar.fileset(server, listing), client)
        runs[run] = {"seconds": time.monotonic() - began,
                     "events": sum(result["events"].values()),
                     "bytes": result["metrics"].get("bytesread")}
        if run == "cold":
            print("COLD-DONE", flush=True)
            sys.stdin.readline()
    times["first_histogram_s"] = runs["cold"]["seconds"]
print(json.dumps({"times": times, "runs": runs}), flush=True)
"""


def say(message: str) -> None:
    print(f"[bench/agc {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kubectl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KUBECTL, *args], capture_output=True, text=True, check=True, **kwargs)


def node_url() -> str:
    env = dict(line.split("=", 1) for line in (STATE / "cluster.env").read_text().split())
    return f"https://{env['advertise_ip']}:30443"


def browse(next_path: str, steps: list[dict[str, str]] | None = None) -> float:
    """Seconds from a fresh Chromium's first request to `next_path` loaded, after the login at
    the provider (then the steps, untimed). With no `next`, the hub's own way after a login:
    to her server, which it starts when it is not running."""
    with tempfile.TemporaryDirectory() as folder, browser_network() as prefix:
        began = time.monotonic()
        result = browser_login(
            f"{node_url()}/hub/oauth_login" + (f"?next={next_path}" if next_path else ""),
            USER,
            next_path or f"/user/{USER}/lab",
            screenshot=Path(folder) / "page.png",
            timeout=600,
            ignore_https_errors=True,
            # JupyterLab is up when its side bar has the Dask panel's tab.
            wait_for="" if steps else '.jp-SideBar li.lm-TabBar-tab[title="Dask"]',
            steps=steps or (),
            prefix=prefix,
        )
        took = time.monotonic() - began
    if not result["ok"]:
        raise SystemExit(f"the browser's walk to {next_path} failed: {result}")
    return took


def pod_names() -> str:
    return kubectl("get", "pods", "-n", NAMESPACE, "-o", "name").stdout


def login_seconds() -> dict[str, float]:
    """Her login to a loaded JupyterLab, her server to start (stopped first on the hub's home
    page, as she would)."""
    if f"pod/jupyter-{USER}" in pod_names():
        browse("/hub/home", [{"click": "#stop"}, {"wait": "#start"}])
        wait_for(
            lambda: f"pod/jupyter-{USER}" not in pod_names(),
            f"jupyter-{USER} to go after its stop",
            300,
            interval=1,
        )
    return {"with_spawn": browse("")}


def cache_bytes() -> int:
    """What XCache holds of the data set (bytes on its volume)."""
    done = kubectl("exec", "-n", NAMESPACE, f"{FULLNAME}-xcache-0", "--", "du", "-sb", CACHED)
    return int(done.stdout.split()[0])


def local_run() -> dict[str, Any]:
    """On the origin's own files (ci/origin's folder), in this process."""
    ttbar = agc_analysis()
    data = STATE / "origin" / "data"
    listing = ttbar.read_listing(str(data), DATASETS)
    began = time.monotonic()
    result = ttbar.run(ttbar.fileset(str(data), listing))
    return {"seconds": time.monotonic() - began, "events": sum(result["events"].values())}


def facility_runs(workers: int) -> dict[str, Any]:
    process = subprocess.Popen(
        [*KUBECTL, "exec", "-i", "-n", NAMESPACE, f"jupyter-{USER}", "--", "python3", "-c",
         IN_THE_NOTEBOOK, str(workers), DATASETS],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None

    def handshake(expected: str) -> None:
        line = process.stdout.readline() if process.stdout else ""
        if line.strip() != expected:
            raise SystemExit(f"the notebook's side failed before {expected}: {line!r}")

    handshake("EMPTY-THE-CACHE")
    # Cold: nothing of the data set in the cache, so every byte comes from the origin.
    kubectl("exec", "-n", NAMESPACE, f"{FULLNAME}-xcache-0", "--", "rm", "-rf", CACHED)
    kubectl("exec", "-n", NAMESPACE, f"{FULLNAME}-xcache-0", "--", "mkdir", "-p", CACHED)
    emptied = cache_bytes()
    process.stdin.write("\n")
    process.stdin.flush()
    handshake("COLD-DONE")
    after_cold = cache_bytes()
    process.stdin.write("\n")
    process.stdin.flush()
    out = process.stdout.read()
    if process.wait(timeout=3600) != 0:
        raise SystemExit("the notebook's side failed (its errors above)")
    found = json.loads(out.strip().splitlines()[-1])
    after_warm = cache_bytes()
    found["cache_bytes"] = {"emptied": emptied, "after_cold": after_cold, "after_warm": after_warm}
    return found


def per_core(run: dict[str, Any], cores: int) -> float:
    return run["events"] / run["seconds"] / cores


def plot(report: dict[str, Any], path: Path) -> None:
    rates = report["events_per_second_per_core"]
    waits = report["waits_s"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["local disk, 1 process", "XCache cold", "XCache warm"]
    values = [rates["local"], rates["cold"], rates["warm"]]
    left.bar(names, [v / 1e3 for v in values], color=["grey", "tab:blue", "tab:green"])
    left.axhline(PUBLISHED_HZ_PER_WORKER / 1e3, color="red", linestyle="--",
                 label="200 Gbps challenge, per worker")  # fmt: skip
    left.set_ylabel("kHz per worker core")
    left.set_title("AGC ttbar: events per second per core")
    left.legend(fontsize=8)
    right.barh(list(waits), list(waits.values()), color="tab:purple")
    right.set_xlabel("seconds")
    right.set_title("What a physicist waits for")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker pods (1 core each)")
    args = parser.parse_args(argv)
    say("login through the edge in Chromium")
    login = login_seconds()
    say(f"{login}; the analysis here, on local disk")
    local = local_run()
    say(f"{local}; on the facility ({args.workers} worker(s)), cold then warm")
    remote = facility_runs(args.workers)
    rates = {
        "local": per_core(local, 1),
        "cold": per_core(remote["runs"]["cold"], args.workers),
        "warm": per_core(remote["runs"]["warm"], args.workers),
    }
    ratio = rates["warm"] / rates["local"]
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "data_set": DATASETS,
        "workers": args.workers,
        "runs": {"local": local, **remote["runs"]},
        "events_per_second_per_core": rates,
        "warm_over_local": ratio,
        "goal_warm_over_local": GOAL_WARM_OVER_LOCAL,
        "goal_met": ratio >= GOAL_WARM_OVER_LOCAL,
        "published_hz_per_worker": PUBLISHED_HZ_PER_WORKER,
        "waits_s": {
            "login to JupyterLab (her server starts)": login["with_spawn"],
            "FacilityCluster() to Running": remote["times"]["cluster_running_s"],
            f"scale({args.workers}) to connected": remote["times"]["workers_connected_s"],
            "first histogram (cold)": remote["times"]["first_histogram_s"],
        },
        # Cold means cold: the cache held nothing of the data set, then all that was read.
        "xcache_bytes": remote["cache_bytes"],
        "origin": "ci/origin's xrootd on the same machine (no WAN: bench/xcache measures one)",
    }
    (HERE / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, HERE / "report.png")
    say(f"warm/local {ratio:.2f} (goal {GOAL_WARM_OVER_LOCAL}); wrote report.json, report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
