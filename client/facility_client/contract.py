"""The names the operator and the programs of a cluster's pods share (operators/README.md,
"The contract"): defined here once, imported by both sides.

The operator (facility_operator) makes the objects and the workers; the scheduler program
(facility_client.scheduler), the worker program (facility_client.worker) and the user's client
(facility_client.cluster) find what they need by these names.
"""

from __future__ import annotations

# The DaskCluster resource.
GROUP = "facility.hep.io"
VERSION = "v1alpha1"
PLURAL = "daskclusters"
KIND = "DaskCluster"

# Labels on every object of a cluster.
LABEL_CLUSTER = f"{GROUP}/cluster"
LABEL_OWNER = f"{GROUP}/owner"
LABEL_WORKER_GROUP = f"{GROUP}/worker-group"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "facility-operator"
SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"

# The scheduler's ports: Dask (mutual TLS) and its HTTP dashboard, which also serves Dask's
# Prometheus metrics and its HTTP API (the operator asks it for the adaptive target and to
# retire workers).
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
# Dask's HTTP API on the dashboard port, enabled by the scheduler program.
SCHEDULER_API_ROUTES = "distributed.http.scheduler.api"

# The cluster's TLS Secret `<id>-tls`, mounted at TLS_DIR in the scheduler and Kubernetes
# worker pods.
TLS_DIR = "/etc/facility/tls"
CLUSTER_CA_FILE = "cluster-ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# What a worker needs: the cluster CA (its only trust anchor), the leaf and its key.
WORKER_TLS_FILES = (CLUSTER_CA_FILE, CERT_FILE, KEY_FILE)

# The user's bearer token (WLCG/SciTokens, e.g. for XCache) in the Secret `<id>-token`, where
# the WLCG bearer-token discovery looks ($BEARER_TOKEN_FILE).
USER_TOKEN_DIR = "/etc/facility/token"
USER_TOKEN_KEY = "token"
# XCache's CA (ca.crt of xcache.tls.secretName, without the key), in notebooks and in a
# cluster's pods, where $X509_CERT_FILE points the XRootD client.
XCACHE_CA_DIR = "/etc/facility/xcache-ca"
XCACHE_CA_FILE = f"{XCACHE_CA_DIR}/ca.crt"

# The programs the operator starts in a cluster's pods and jobs.
SCHEDULER_MODULE = "facility_client.scheduler"
WORKER_MODULE = "facility_client.worker"

# The scheduler program's environment.
ENV_CLUSTER_ID = "FACILITY_CLUSTER_ID"
ENV_CONTACT_ADDRESS = "FACILITY_CONTACT_ADDRESS"
ENV_TLS_DIR = "FACILITY_TLS_DIR"
ENV_IDLE_TIMEOUT = "FACILITY_IDLE_TIMEOUT"
ENV_XCACHE = "FACILITY_XCACHE"
# In notebooks: the facility's namespace, where the schedulers' Services are.
ENV_NAMESPACE = "FACILITY_NAMESPACE"
# A cluster's scheduler Service: <cluster-id><SCHEDULER_SERVICE_SUFFIX>.
SCHEDULER_SERVICE_SUFFIX = "-scheduler"
BEARER_TOKEN_FILE = "BEARER_TOKEN_FILE"

# The default worker group: the DaskCluster's spec.worker with spec.minWorkers/maxWorkers.
DEFAULT_GROUP = "default"
# A worker's Dask resource for its GPUs: client.submit(f, resources={GPU_RESOURCE: 1}).
GPU_RESOURCE = "GPU"


def worker_name(cluster_id: str, group: str, number: int) -> str:
    """A worker's name: its pod or job name and its Dask worker name alike."""
    return f"{cluster_id}-{group}-{number}"
