"""XCache with real xrootd processes: an origin serving NanoAOD-like files that the test writes
with uproot, and the cache in front of it, run from the chart's own rendered ConfigMap and
StatefulSet (command, environment, readiness probe) in a sandbox of its own (network and mount
namespaces; the cache volume is a tmpfs, so its fill level is the cache's own).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.wait import wait_for
from harness.xcache_data import local_digests, write_nanoaod
from harness.xcache_sandbox import (
    SERVICE,
    CachePod,
    Origin,
    Sandbox,
    client_env,
    read,
    render,
    workdir,
    xcache_values,
)

HOWS = ["uproot", "uproot-xrootd", "fsspec"]


@dataclass
class Lab:
    """An origin with files, and the cache in front of it, in one sandbox."""

    base: Path
    sandbox: Sandbox
    origin: Origin
    cache: CachePod
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # /store/... -> digests

    @property
    def url(self) -> str:
        """The address notebooks get: root://<fullname>-xcache.<namespace>:<port>."""
        return f"root://{SERVICE}:{self.cache.port}"

    def write(self, path: str, events: int, seed: int) -> str:
        local = self.origin.data / path.lstrip("/")
        write_nanoaod(local, events, seed)
        self.files[path] = {**local_digests(local), "size": local.stat().st_size}
        return path

    def read(self, how: str, *paths: str) -> tuple[list[dict[str, Any]], Any]:
        urls = [f"{self.url}/{path}" for path in paths]
        return read(self.sandbox, how, urls, client_env(self.base / "home"))

    def assert_identical(self, how: str, *paths: str) -> None:
        results, done = self.read(how, *paths)
        assert done.returncode == 0, done.stdout + done.stderr
        for path, result in zip(paths, results, strict=True):
            expected = self.files[path]
            if how == "fsspec":
                assert (result["sha256"], result["size"]) == (expected["bytes"], expected["size"])
            else:
                assert result == {"url": result["url"], **expected["arrays"]}, path


@contextmanager
def lab(volume: str = "64m", **xcache: Any) -> Iterator[Lab]:
    """A running origin and cache; xcache: chart values of the xcache section."""
    base = workdir("xcache-test-")
    try:
        values = xcache_values(base, **xcache)
        rendered = render(values, base)
        hosts = CachePod.hosts_file(rendered, base)
        data = values["xcache"]["paths"]["data"]
        sandbox = Sandbox(tmpfs={data: volume}, binds={"/etc/hosts": hosts}, writable=[base])
        try:
            origin = Origin(sandbox, base / "origin")
            cache = CachePod(sandbox, rendered, base / "xcache.log")
            yield Lab(base, sandbox, origin, cache)
        finally:
            sandbox.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def running() -> Iterator[Lab]:
    with lab() as it:
        for i in range(3):
            it.write(f"/store/mc/ttbar/nano_{i}.root", 20_000, seed=i)
        it.origin.start()
        it.cache.start()
        yield it


@pytest.mark.parametrize("how", HOWS)
def test_reads_through_xcache_are_identical_to_the_origin(running: Lab, how: str) -> None:
    # uproot (its default handler reads root:// through fsspec-xrootd), uproot on the XRootD
    # bindings, and the files' bytes through fsspec-xrootd.
    running.assert_identical(how, *[p for p in running.files if p.startswith("/store/mc/ttbar/")])


def test_the_second_read_is_served_from_the_cache(running: Lab) -> None:
    path = running.write("/store/mc/dy/nano.root", 20_000, seed=10)
    running.assert_identical("fsspec", path)
    first = running.origin.transfers()[path]
    assert first["opens"] == 1
    assert first["bytes"] >= running.files[path]["size"]
    cached = running.cache.cached(path)
    assert cached.stat().st_size == running.files[path]["size"]
    assert cached.with_name(cached.name + ".cinfo").exists()

    running.assert_identical("fsspec", path)
    running.assert_identical("uproot", path)
    assert running.origin.transfers()[path] == first, "the origin sent the file again"


def test_cached_files_read_with_the_origin_stopped(running: Lab) -> None:
    cached = running.write("/store/data/run1/nano.root", 10_000, seed=20)
    uncached = running.write("/store/data/run2/nano.root", 10_000, seed=21)
    running.assert_identical("fsspec", cached)
    running.origin.stop()
    try:
        # The probe asks the cache itself: a cache whose origin is down stays ready.
        assert running.cache.probe().returncode == 0
        running.assert_identical("uproot", cached)
        running.assert_identical("fsspec", cached)

        start = time.monotonic()
        (result,), done = running.read("uproot", uncached)
        took = time.monotonic() - start
        assert done.returncode == 1
        print(f"uncached read with the origin down, after {took:.1f}s: {result['error']}")
        assert f"Unable to open {uncached}" in result["error"]
        assert "connection refused" in result["error"]
        assert took < 30
    finally:
        running.origin.start()
    running.assert_identical("uproot", uncached)


def test_filling_past_the_high_watermark_evicts_to_the_low_one() -> None:
    # A 32 MiB cache volume, purged from 70% down to 40%, and 30 MiB of files. xrootd 5.5 checks
    # the watermarks at start and then every purgeInterval (60 s at least): the test restarts
    # the cache, as a pod restart would, instead of waiting for the next check.
    low, high = 0.4, 0.7
    cache = {"lowWatermark": low, "highWatermark": high, "purgeInterval": 3600}
    with lab(volume="32m", cache=cache) as it:
        paths = [it.write(f"/store/mc/qcd/nano_{i}.root", 36_000, seed=30 + i) for i in range(5)]
        it.origin.start()
        it.cache.start()
        it.assert_identical("fsspec", *paths)
        used, total = it.cache.usage()
        print(f"cache volume after the reads: {used / total:.0%} of {total >> 20} MiB")
        assert used > high * total, "the files did not fill the cache past the high watermark"

        it.cache.stop()
        assert it.cache.probe().returncode != 0, "the probe passed with the cache stopped"
        it.cache.start()
        wait_for(lambda: it.cache.usage()[0] <= low * total, "the purge down to 40%", 30)
        used, _ = it.cache.usage()
        kept = [p for p in paths if it.cache.cached(p).exists()]
        print(f"after the purge: {used / total:.0%}, {len(kept)} of {len(paths)} files kept")
        assert 0 < len(kept) < len(paths)
        assert "Purge()" in it.cache.log()

        # Every file still reads correctly: the kept ones from the cache, the others again
        # from the origin.
        it.assert_identical("uproot", *paths)
        it.assert_identical("fsspec", *paths)
