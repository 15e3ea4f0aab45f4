"""Where the repository, its chart, its tools and the local cluster's state are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "facility"
TOOLS = ROOT / ".tools" / "bin"
# The Node packages of the OpenID provider, configurable-http-proxy and Playwright (npm ci).
NODE_DIR = ROOT / "harness" / "node"
# ci/cluster's state folder: FACILITY_CLUSTER_DIR as ci/cluster reads it (make test sets it).
CLUSTER_DIR = Path(os.environ.get("FACILITY_CLUSTER_DIR", ROOT / ".cluster"))
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
