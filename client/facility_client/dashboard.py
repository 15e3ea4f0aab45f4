"""Which hosts a user's Jupyter server proxies to (jupyter-server-proxy's host allowlist).

A cluster's `dashboardLink` is `/user/<owner>/proxy/<cluster-id>-scheduler.<namespace>:8787/`:
the owner's own server proxies the scheduler's dashboard to the owner's browser, and the hub
lets nobody else into that server. jupyter-server-proxy refuses every host but localhost by
default; the analysis image's Jupyter configuration allows the facility's schedulers too. What
a server actually reaches is the NetworkPolicies' call: each scheduler admits its owner's
notebook alone on that port.
"""

from __future__ import annotations

import os
import re
from typing import Any

from facility_client import contract

LOCAL = {"localhost", "127.0.0.1"}


def allowed_host(handler: Any, host: str) -> bool:
    """jupyter-server-proxy's `host_allowlist` callable: localhost, or a scheduler Service of the
    facility's namespace ($FACILITY_NAMESPACE)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in LOCAL:
        return True
    namespace = os.environ.get(contract.ENV_NAMESPACE, "")
    suffix = re.escape(contract.SCHEDULER_SERVICE_SUFFIX)
    pattern = rf"[a-z][-a-z0-9]*{suffix}\.{re.escape(namespace)}(\.svc(\.cluster\.local)?)?"
    return bool(namespace) and re.fullmatch(pattern, name) is not None
