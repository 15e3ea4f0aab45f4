#!/usr/bin/env python3
"""XCache over a simulated WAN: cold vs. warm reads, and reads of the same files from local disk
(the benchmark of issue 6: a report, not a test).

Two network namespaces joined by a veth pair: the origin (xrootd, serving NanoAOD-like files the
benchmark writes with uproot) behind a link with a bandwidth cap (tc tbf, or netem's rate) and
added latency (tc netem where the kernel has it; else bench/xcache/wan_delay.py, a delay line in
the origin's namespace), and the cache, run from the chart's rendering with the chart's default
tuning (as tests/integration/test_xcache.py runs it). Each repeat empties the cache, reads every
file through it (cold), reads them again (warm), and reads them from local disk; uproot reads
every branch, in a fresh process per pass.

Writes report.json and report.png beside this file. Needs root (namespaces, tc); takes a
couple of minutes. The namespaces go away with their processes, at the end or on an interrupt.

usage: python bench/xcache/run.py [--rtt-ms 40] [--rate-mbit 100] [--files 4] [--events 200000]
                                  [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.xcache_data import write_nanoaod
from harness.xcache_sandbox import (
    ORIGIN_PORT,
    SERVICE,
    CachePod,
    Origin,
    Sandbox,
    client_env,
    own,
    render,
    server_env,
    workdir,
)

HERE = Path(__file__).resolve().parent

# Addresses of the link between the two namespaces: RFC 2544's benchmarking range, which exists
# only inside them.
CACHE_IP, ORIGIN_IP = "198.18.0.1", "198.18.0.2"
CACHE_LINK, ORIGIN_LINK = "xcb-cache", "xcb-origin"
WAN_PORT = 1094  # where the cache reaches the origin across the link


def say(message: str) -> None:
    print(f"[bench xcache {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def inside(sandbox: Sandbox, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = sandbox.run(argv, server_env())
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (in a namespace): {done.stderr.strip()}")
    return done


def link(cache: Sandbox, origin: Sandbox, rtt_ms: float, rate_mbit: float) -> dict[str, Any]:
    """The WAN: a veth pair between the namespaces, shaped. Returns how it was shaped."""
    sh("ip", "link", "del", CACHE_LINK, check=False)  # left by a run killed half-way
    sh(*f"ip link add {CACHE_LINK} type veth peer name {ORIGIN_LINK}".split())
    sh(*f"ip link set {CACHE_LINK} netns {cache.holder.pid}".split())
    sh(*f"ip link set {ORIGIN_LINK} netns {origin.holder.pid}".split())
    for box, name, address in ((cache, CACHE_LINK, CACHE_IP), (origin, ORIGIN_LINK, ORIGIN_IP)):
        inside(box, *f"ip addr add {address}/30 dev {name}".split())
        inside(box, *f"ip link set {name} up".split())
    half, rate = f"{rtt_ms / 2:g}ms", f"{rate_mbit:g}mbit"
    netem = f"tc qdisc add dev {ORIGIN_LINK} root netem delay {half} rate {rate} limit 100000"
    tried = inside(origin, *netem.split(), check=False)
    if tried.returncode == 0:
        inside(cache, *f"tc qdisc add dev {CACHE_LINK} root netem delay {half}".split())
        return {"method": "tc netem (delay and rate)", "delay_line": False}
    # No netem in this kernel: the cap stays in the kernel (tbf), the latency comes from a
    # delay line in the origin's namespace.
    burst = max(64, int(rate_mbit * 1000 / 8 / 100))  # kB: at least 10 ms of traffic
    tbf = f"tc qdisc add dev {ORIGIN_LINK} root tbf rate {rate} burst {burst}kb latency 400ms"
    inside(origin, *tbf.split())
    return {
        "method": "tc tbf (rate) + bench/xcache/wan_delay.py (latency, both directions)",
        "delay_line": True,
        "netem_error": f"{netem}: {tried.stderr.strip()}",
    }


def timed_read(
    sandbox: Sandbox, sources: list[str], home: Path, options: list[str]
) -> dict[str, float]:
    argv = [sys.executable, str(HERE / "reader.py"), *options, *sources]
    done = sandbox.run(argv, client_env(home), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the reader failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def round_trip(cache: Sandbox) -> float:
    """The quickest of three `xrdfs query` to the origin across the link: a few round trips."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        inside(cache, "xrdfs", f"root://{ORIGIN_IP}:{WAN_PORT}", "query", "config", "version")
        times.append(time.perf_counter() - start)
    return min(times)


def origin_bytes(origin: Origin) -> int:
    return sum(t["bytes"] for t in origin.transfers().values())


def empty(cache: CachePod) -> None:
    """A cold cache: stopped, its volume emptied, started again."""
    cache.stop()
    volume = cache.volume("cache")
    for entry in volume.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    cache.start()


def summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians; the ratios are medians of each repeat's own ratio (passes of one repeat run
    back to back, so they share the machine's load of the moment)."""
    medians = {
        kind: {
            metric: statistics.median(r[metric] for r in results)
            for metric in ("MBps", "events_per_s")
        }
        for kind, results in runs.items()
    }

    def ratio(kind: str, over: str, metric: str) -> float:
        pairs = zip(runs[kind], runs[over], strict=True)
        return round(statistics.median(a[metric] / b[metric] for a, b in pairs), 3)

    warm_cold = ratio("warm", "cold", "MBps")
    warm_local = ratio("warm", "local", "events_per_s")
    bindings_local = ratio("warm-xrootd", "local", "events_per_s")
    return {
        "median": medians,
        "warm_over_cold": warm_cold,
        "warm_over_local": warm_local,
        "warm_xrootd_over_local": bindings_local,
        "goal": {
            "warm_at_least_5x_cold": warm_cold >= 5,
            "warm_within_80pct_of_local": warm_local >= 0.8,
            "warm_xrootd_within_80pct_of_local": bindings_local >= 0.8,
        },
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["cold", "warm", "warm-xrootd", "local"]
    labels = ["XCache cold", "XCache warm", "XCache warm\n(XRootD\nbindings)", "local disk"]
    colours = ["#c0504d", "#4f81bd", "#8064a2", "#9bbb59"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, metric, unit, scale in (
        (axes[0], "MBps", "MB/s", 1),
        (axes[1], "events_per_s", "thousand events/s", 1e-3),
    ):
        values = [[r[metric] * scale for r in report["runs"][k]] for k in kinds]
        medians = [statistics.median(v) for v in values]
        errors = [
            [m - min(v) for m, v in zip(medians, values, strict=True)],
            [max(v) - m for m, v in zip(medians, values, strict=True)],
        ]
        bars = ax.bar(labels, medians, yerr=errors, capsize=4, color=colours)
        top = max(medians)
        for bar, value in zip(bars, medians, strict=True):
            x = bar.get_x() + bar.get_width() / 2
            if value > 0.2 * top:  # inside the bar, clear of the error bar
                ax.text(
                    x,
                    value / 2,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    color="white",
                    fontweight="bold",
                )
            else:
                ax.text(x, value + 0.03 * top, f"{value:.0f}", ha="center", va="bottom")
        ax.set_ylabel(unit)
        ax.set_title(f"uproot reads, {unit}")
        ax.grid(axis="y", alpha=0.3)
    wan, s, files = report["wan"], report["summary"], report["files"]
    fig.suptitle(
        f"XCache over a simulated WAN ({wan['rtt_ms']:g} ms RTT, {wan['rate_mbit']:g} Mbit/s): "
        f"warm = {s['warm_over_cold']:.1f}x cold, {s['warm_over_local']:.1%} of local disk "
        f"({s['warm_xrootd_over_local']:.1%} on the XRootD bindings)\n"
        f"{files['count']} NanoAOD-like files, {files['MB']:.0f} MB, "
        f"{files['events']:,} events; median of {report['repeats']} (bars: min-max)",
        fontsize=10,
    )
    fig.text(
        0.01,
        0.01,
        f"link: {wan['method']}; cache: the chart's defaults "
        f"({', '.join(report['cache']['configuration'][:3])})",
        fontsize=7,
        color="#555",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Bench:
    """The two namespaces, the link between them, the origin with its files, and the cache."""

    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args, self.base = args, base
        self.boxes: list[Sandbox] = []

    def start(self) -> None:
        args, base = self.args, self.base
        self.load = os.getloadavg()[0]  # other work on the machine skews the timings
        values = {
            "xcache": {
                "enabled": True,
                "origin": {"host": ORIGIN_IP, "port": WAN_PORT},
                "paths": {name: str(base / name) for name in ("config", "data", "run", "tls")},
            }
        }
        self.rendered = render(values, base)
        hosts = CachePod.hosts_file(self.rendered, base)
        self.boxes.append(origin_box := Sandbox(writable=[base]))
        self.boxes.append(cache_box := Sandbox(binds={"/etc/hosts": hosts}, writable=[base]))
        self.cache_box = cache_box
        self.wan = link(cache_box, origin_box, args.rtt_ms, args.rate_mbit)
        self.wan.update(rtt_ms=args.rtt_ms, rate_mbit=args.rate_mbit)
        say(f"link: {args.rtt_ms:g} ms RTT, {args.rate_mbit:g} Mbit/s, {self.wan['method']}")
        # With the delay line, the origin listens behind it; with netem, on the link itself.
        port = ORIGIN_PORT if self.wan["delay_line"] else WAN_PORT
        self.origin = Origin(origin_box, base / "origin", port=port)
        if self.wan["delay_line"]:
            say(f"  ({self.wan['netem_error']})")
            delay_line = [
                sys.executable,
                str(HERE / "wan_delay.py"),
                f"{ORIGIN_IP}:{WAN_PORT}",
                f"127.0.0.1:{ORIGIN_PORT}",
                f"{args.rtt_ms / 2:g}",
            ]
            with (base / "wan_delay.log").open("w") as log:
                origin_box.spawn(delay_line, server_env(), log, as_server=False)

        say(f"writing {args.files} files of {args.events:,} events")
        self.paths = [f"/store/bench/nano_{i}.root" for i in range(args.files)]
        self.local = [
            write_nanoaod(self.origin.data / path.lstrip("/"), args.events, 100 + i)
            for i, path in enumerate(self.paths)
        ]
        self.size = sum(path.stat().st_size for path in self.local)
        self.origin.start()
        own(Path(values["xcache"]["paths"]["data"]))
        self.cache = CachePod(cache_box, self.rendered, base / "xcache.log")
        self.cache.start()
        self.wan["xrdfs_query_seconds"] = round(round_trip(cache_box), 3)
        say(
            f"xrdfs query across the link (connect, login, query): "
            f"{self.wan['xrdfs_query_seconds']:.3f} s"
        )

    def measure(self) -> dict[str, list[dict[str, float]]]:
        """Each repeat: the cache emptied, then every pass, each a fresh reader process."""
        urls = [f"root://{SERVICE}:{self.cache.port}/{path}" for path in self.paths]
        # uproot's default handler reads root:// through fsspec-xrootd; "warm-xrootd" is the
        # same warm read on the XRootD bindings.
        passes = [
            ("cold", urls, []),
            ("warm", urls, []),
            ("warm-xrootd", urls, ["--xrootd"]),
            ("local", [str(path) for path in self.local], []),
        ]
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind, _, _ in passes}
        for repeat in range(1, self.args.repeats + 1):
            empty(self.cache)
            for kind, sources, options in passes:
                sent = origin_bytes(self.origin)
                result = timed_read(self.cache_box, sources, self.base / "home", options)
                result.update(
                    MBps=self.size / result["seconds"] / 1e6,
                    events_per_s=result["events"] / result["seconds"],
                    origin_MB=(origin_bytes(self.origin) - sent) / 1e6,
                )
                runs[kind].append(result)
                say(
                    f"repeat {repeat}/{self.args.repeats} {kind:>11}: {result['seconds']:6.2f} s,"
                    f" {result['MBps']:6.1f} MB/s, {result['events_per_s']:9,.0f} events/s,"
                    f" {result['origin_MB']:6.1f} MB from the origin"
                )
        return runs

    def report(self, runs: dict[str, list[dict[str, float]]], seconds: float) -> dict[str, Any]:
        config = self.rendered["ConfigMap"]["data"]["xcache.cfg"].splitlines()
        return {
            "benchmark": "XCache cold vs. warm reads over a simulated WAN (issue 6)",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {
                "cores": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "load_average_before_after": [self.load, os.getloadavg()[0]],
            },
            "wan": self.wan,
            "cache": {
                "configuration": [line for line in config if line.startswith("pfc.")],
                "volume": "a folder on this machine's disk",
            },
            "files": {
                "count": len(self.local),
                "MB": self.size / 1e6,
                "events": self.args.events * len(self.local),
                "shape": "NanoAOD-like Events tree, 28 branches "
                "(harness/xcache_data.py), written with uproot",
            },
            "reader": "uproot 5, every branch of Events (bench/xcache/reader.py), a fresh "
            "process per pass; local disk and the cache's volume are both in the page cache",
            "repeats": self.args.repeats,
            "runs": runs,
            "summary": summary(runs),
            "seconds": round(seconds),
        }

    def close(self) -> None:
        for box in reversed(self.boxes):
            box.close()  # its processes, then the namespace and its end of the link


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=40)
    parser.add_argument("--rate-mbit", type=float, default=100)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/xcache needs root: network namespaces and tc")
    # A kill (like an interrupt) ends the run through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    started = time.monotonic()
    base = workdir("xcache-bench-")
    bench = Bench(args, base)
    try:
        bench.start()
        report = bench.report(bench.measure(), time.monotonic() - started)
    finally:
        bench.close()
        shutil.rmtree(base, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "report.png")
    s = report["summary"]
    say(
        f"warm = {s['warm_over_cold']}x cold, {s['warm_over_local']:.1%} of local disk, "
        f"{s['warm_xrootd_over_local']:.1%} on the XRootD bindings (goal: 5x, 80%): "
        f"{args.out / 'report.json'}, report.png ({report['seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
