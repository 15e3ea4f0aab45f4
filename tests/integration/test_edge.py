"""The edge as the chart configures it: the real Traefik, run with the chart's own arguments and
the edge ServiceAccount's token against the real API server, loads the hub's HTTPS route and
TCP SNI routes on the same entrypoint, and only this release's routes.

Traefik runs as a local process (the local cluster's nodes are simulated, so its pod cannot run);
no request is sent through a route, since the simulated backends' addresses lead nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import DEV_INSTALL
from tests.conftest import CHART, CLUSTER_DIR, free_port, helm, http_get, kubectl, tool, wait_for

pytestmark = pytest.mark.cluster
RELEASE = "af"
EDGE = f"{RELEASE}-facility-edge"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def api_server() -> str:
    config = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
    return config.stdout


def sni_route(name: str, host: str, labels: dict[str, str]) -> dict[str, Any]:
    """An IngressRouteTCP of the shape the Dask operator makes for each cluster."""
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRouteTCP",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "entryPoints": ["websecure"],
            "routes": [
                {"match": f"HostSNI(`{host}`)", "services": [{"name": "scheduler", "port": 8786}]}
            ],
            "tls": {"passthrough": True},
        },
    }


SCHEDULER = [
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "scheduler"},
        "spec": {
            "selector": {"matchLabels": {"app": "scheduler"}},
            "template": {
                "metadata": {"labels": {"app": "scheduler"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "scheduler", "image": "facility/worker",
                        "ports": [{"containerPort": 8786}],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    },
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "scheduler"},
        "spec": {"selector": {"app": "scheduler"}, "ports": [{"port": 8786}]},
    },
]  # fmt: skip


@pytest.fixture
def edge(namespace: str, tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """The chart installed, and Traefik started with its edge Deployment's arguments."""
    helm("install", RELEASE, str(CHART), "-n", namespace, *DEV_INSTALL, "--wait", timeout=330)
    deployment = json.loads(
        kubectl("get", "deployment", EDGE, "-n", namespace, "-o", "json").stdout
    )
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    ports = {name: free_port() for name in ("websecure", "web", "traefik")}
    local = [
        f"--entryPoints.{arg.split('.')[1]}.address=127.0.0.1:{ports[arg.split('.')[1]]}"
        if arg.endswith(".address=:8443") or arg.endswith(".address=:8080")
        or arg.endswith(".address=:9000") else arg
        for arg in args
    ]  # fmt: skip
    token = kubectl("create", "token", EDGE, "-n", namespace).stdout.strip()
    log = tmp_path / "traefik.log"
    outside = [
        # What a pod gets from its ServiceAccount, given by hand to a process outside the cluster.
        f"--providers.kubernetesCRD.endpoint={api_server()}",
        f"--providers.kubernetesCRD.token={token}",
        f"--providers.kubernetesCRD.certAuthFilePath={CLUSTER_DIR / 'pki' / 'ca.crt'}",
        # Traefik's API on the ping port: how the test reads the routers (no dashboard is built).
        "--api.insecure=true",
        "--api.dashboard=false",
    ]
    # Without KUBECONFIG in its environment: Traefik would prefer it to the token.
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with log.open("w") as out:
        traefik = subprocess.Popen(
            [tool("traefik"), *local, *outside], stdout=out, stderr=out, env=env
        )
    try:
        ping = f"http://127.0.0.1:{ports['traefik']}/ping"
        wait_for(lambda: http_get(ping) == (200, "OK"), "Traefik's /ping", 30)
        yield namespace, ports["traefik"], log
    finally:
        traefik.terminate()
        traefik.wait(timeout=30)
        helm("uninstall", RELEASE, "-n", namespace, check=False)


def routers(port: int, kind: str) -> list[dict[str, Any]]:
    return get_json(f"http://127.0.0.1:{port}/api/{kind}/routers")


def test_hub_https_and_sni_routes_share_the_entrypoint(edge: tuple[str, int, Path]) -> None:
    namespace, port, log = edge

    def hub_router() -> list[dict[str, Any]]:
        return [r for r in routers(port, "http") if r.get("provider") == "kubernetescrd"]

    (hub,) = wait_for(hub_router, f"the hub's HTTPS router (Traefik's log: {log})", 30)
    assert hub["entryPoints"] == ["websecure"]
    assert hub["rule"] == "PathPrefix(`/`)"
    assert hub["status"] == "enabled"
    assert "tls" in hub

    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"items": SCHEDULER, "apiVersion": "v1", "kind": "List"}),
    )
    ours = sni_route("dask-c1", "c1.dask.example.org", {"app.kubernetes.io/instance": RELEASE})
    theirs = sni_route("dask-other", "c2.dask.example.org", {"app.kubernetes.io/instance": "other"})
    for route in (ours, theirs):
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(route))

    def sni_routers() -> list[dict[str, Any]]:
        return [r for r in routers(port, "tcp") if r.get("status") == "enabled"]

    (tcp,) = wait_for(sni_routers, "the cluster's SNI router", 30)
    assert tcp["rule"] == "HostSNI(`c1.dask.example.org`)"
    assert tcp["entryPoints"] == ["websecure"]
    assert tcp["tls"]["passthrough"] is True
    # The other release's route is not loaded: several facilities can share a cluster.
    assert all("c2.dask" not in r["rule"] for r in routers(port, "tcp"))
    # The edge Role grants all the provider needs.
    assert "forbidden" not in log.read_text()
