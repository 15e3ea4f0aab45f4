"""Shared helpers: where the project's tools and local cluster are, and how to call them."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "facility"
TOOLS = ROOT / ".tools" / "bin"
CLUSTER_DIR = Path(os.environ.get("FACILITY_CLUSTER_DIR", ROOT / ".cluster"))
KUBECONFIG = CLUSTER_DIR / "kubeconfig"


def tool(name: str) -> str:
    """The path of a tool built by ci/tools; fails the test with the fix if it is missing."""
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (ci/tools) first")
    return str(path)


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command against the local cluster; on an unexpected failure, show its output."""
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    done = subprocess.run(
        list(args), capture_output=True, text=True, input=input, env=env, timeout=timeout
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over others: maps merge, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> object:
    """Poll until condition() is truthy and return its value; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, str] | None:
    """(status, body) of a GET, or None while nothing answers (for wait_for)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return None


def helm(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), *args], **kwargs)  # type: ignore[arg-type]


def kubectl(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run([tool("kubectl"), *args], **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def cluster() -> Path:
    """The local cluster from ci/cluster; `make test` starts it. Fails (not skips) if it is down."""
    done = subprocess.run(
        [str(ROOT / "ci" / "cluster"), "status"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.fail(
            f"the local cluster is not running (ci/cluster up):\n{done.stdout}{done.stderr}"
        )
    return KUBECONFIG


@pytest.fixture
def namespace(cluster: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted", deleted after the test."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").rstrip("]")[:50]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """An aiohttp application on a loopback port, in a thread with its own event loop (as the
    operator runs its API beside kopf); yields its base URL."""
    import asyncio
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def pytest_report_header() -> str:
    """Which nodes the shared local cluster has: the `cluster` tests ran in that mode (tests/e2e
    and the realnode tests start real-node clusters of their own and say so)."""
    env = CLUSTER_DIR / "cluster.env"
    if not env.is_file():
        return "local cluster: not running"
    lines = env.read_text().splitlines()
    mode = next((line.removeprefix("mode=") for line in lines if line.startswith("mode=")), "?")
    return f"local cluster: {CLUSTER_DIR} with {mode} nodes (the `cluster` tests run there)"
