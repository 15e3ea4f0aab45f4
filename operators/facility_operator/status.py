"""A cluster's phase from its scheduler pod."""

from __future__ import annotations

from typing import Any

from kubernetes import client


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


def scheduler_status(pod: client.V1Pod | None) -> dict[str, Any]:
    """Phase and message of a cluster whose scheduler is `pod` (the worker controller adds the
    workers while it runs)."""
    if pod is None:
        return {"phase": "Pending", "message": "the scheduler pod is being created"}
    phase = pod.status.phase
    if phase == "Running":
        return {"phase": "Running", "message": "the scheduler runs"}
    if phase == "Succeeded":
        return {"phase": "Ending", "message": "the scheduler ended (idle timeout)", "workers": 0}
    if phase == "Failed":
        return {"phase": "Failed", "message": f"the scheduler failed: {_why_not_running(pod)}"}
    return {"phase": "Pending", "message": _why_not_running(pod) or "the scheduler is starting"}
