"""The project's tools (ci/tools) and commands against the local cluster."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

from harness import HarnessError
from harness.paths import KUBECONFIG, TOOLS


def tool(name: str) -> str:
    """The path of a tool built by ci/tools; fails with the fix if it is missing."""
    path = TOOLS / name
    if not path.exists():
        raise HarnessError(f"{path} is missing: run `make tools` (ci/tools) first")
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
        raise HarnessError(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """End a process the harness started: SIGTERM, then SIGKILL after `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def helm(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), *args], **kwargs)  # type: ignore[arg-type]


def kubectl(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run([tool("kubectl"), *args], **kwargs)  # type: ignore[arg-type]
