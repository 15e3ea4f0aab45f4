"""Credentials for the Kubernetes API, the same way everywhere the facility's Python talks to it."""

from __future__ import annotations

import os


def load() -> None:
    """In a pod: its ServiceAccount. Elsewhere: the kubeconfig that $KUBECONFIG names now (the
    kubernetes package reads $KUBECONFIG once, when it is imported, and would miss a later one)."""
    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
