"""A cluster's status from its scheduler pod and the scheduler's Prometheus metrics."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from kubernetes import client

WORKERS_METRIC = "dask_scheduler_workers"  # one sample per worker state; their sum is all


def workers_from_metrics(text: str) -> int | None:
    """Workers connected, from the scheduler's /metrics text; None if the metric is absent."""
    samples = [
        float(line.rsplit(maxsplit=1)[1])
        for line in text.splitlines()
        if line.startswith((f"{WORKERS_METRIC}{{", f"{WORKERS_METRIC} "))
    ]
    return round(sum(samples)) if samples else None


def fetch_workers(url: str, timeout: float = 2) -> int | None:
    """Workers per the scheduler's dashboard; None while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return workers_from_metrics(response.read().decode(errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _why_not_running(pod: client.V1Pod) -> str:
    """The first container's waiting or termination reason, for the user."""
    for container in pod.status.container_statuses or []:
        state = container.state
        if state.waiting:
            return f"{state.waiting.reason}: {state.waiting.message or ''}".rstrip(": ")
        if state.terminated:
            reason = state.terminated.reason or f"exit code {state.terminated.exit_code}"
            return f"{reason}: {state.terminated.message or ''}".rstrip(": ")
    return pod.status.message or pod.status.reason or ""


def scheduler_status(pod: client.V1Pod | None, workers: int | None) -> dict[str, Any]:
    """Phase and message (and workers, when known) of a cluster whose scheduler is `pod`."""
    if pod is None:
        return {"phase": "Pending", "message": "the scheduler pod is being created"}
    phase = pod.status.phase
    if phase == "Running":
        status: dict[str, Any] = {"phase": "Running", "message": "the scheduler runs"}
        if workers is not None:
            status["workers"] = workers
        return status
    if phase == "Succeeded":
        return {"phase": "Ending", "message": "the scheduler ended (idle timeout)", "workers": 0}
    if phase == "Failed":
        return {"phase": "Failed", "message": f"the scheduler failed: {_why_not_running(pod)}"}
    return {"phase": "Pending", "message": _why_not_running(pod) or "the scheduler is starting"}
