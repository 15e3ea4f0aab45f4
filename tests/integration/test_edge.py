"""The edge as the chart configures it: the real Traefik, run with the chart's own arguments and
files, loads the hub's HTTPS route from its files and the Dask clusters' SNI routes from the
real operator (Traefik's HTTP provider), on the same entrypoint; it holds no Kubernetes
credential, and it keeps serving the routes it has while the operator restarts.

Traefik and the operator run as local processes against the real API server (the local
cluster's nodes are simulated, so their pods cannot run); no request is sent through a route,
since the simulated backends' addresses lead nowhere.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from facility_operator.certs import new_cluster_identity, new_facility_ca

from harness import dask_edge
from harness.chart import DEV_INSTALL
from harness.commands import helm, kubectl, tool
from harness.net import free_port, http_get
from harness.operator_stack import Operator
from harness.paths import CHART
from harness.wait import wait_for

pytestmark = pytest.mark.cluster
RELEASE = "af"
EDGE = f"{RELEASE}-facility-edge"
DOMAIN = "dask.example.org"
CLUSTER = "alice-e1dge"


def get_json(kind: str, name: str, namespace: str) -> Any:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def dask_cluster(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "facility.hep.io/v1alpha1",
        "kind": "DaskCluster",
        "metadata": {
            "name": CLUSTER, "namespace": namespace,
            "labels": {"facility.hep.io/cluster": CLUSTER, "facility.hep.io/owner": "alice"},
        },
        "spec": {"owner": "alice", "backend": "kubernetes", "minWorkers": 0, "maxWorkers": 0},
    }  # fmt: skip


@dataclass
class RunningEdge:
    namespace: str
    api_port: int
    log: Path
    operator: Operator

    def routers(self, kind: str) -> list[dict[str, Any]]:
        return dask_edge.enabled_routers(self.api_port, kind)

    def sni_router(self) -> dict[str, Any] | None:
        return next((r for r in self.routers("tcp") if r["name"] == f"{CLUSTER}@http"), None)


@pytest.fixture
def edge(namespace: str, tmp_path: Path) -> Iterator[RunningEdge]:
    """The chart installed; the operator as a process; Traefik started with the edge
    Deployment's arguments and the edge ConfigMap's files, as the API server holds them."""
    helm("install", RELEASE, str(CHART), "-n", namespace, *DEV_INSTALL,
         "--set", f"edge.dask.domain={DOMAIN}", "--wait", timeout=330)  # fmt: skip
    deployment = get_json("deployment", EDGE, namespace)
    files = get_json("configmap", EDGE, namespace)["data"]
    operator = Operator(
        tmp_path / "operator",
        namespace,
        {"edge": {"dask": {"domain": DOMAIN}}, "operator": {"backend": "kubernetes"}},
        fullname=f"{RELEASE}-facility",
    )
    operator.start()
    folder = tmp_path / "edge"
    dask_edge.write_edge_files(folder, files, "http://127.0.0.1:9")
    port, api_port = free_port(), free_port()
    args = dask_edge.local_edge_args(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"],
        port, api_port, folder, operator.routes_url,
    )  # fmt: skip
    log = tmp_path / "traefik.log"
    with log.open("w") as out:
        traefik = subprocess.Popen([tool("traefik"), *args], stdout=out, stderr=out)
    try:
        ping = f"http://127.0.0.1:{api_port}/ping"
        wait_for(lambda: http_get(ping) == (200, "OK"), "Traefik's /ping", 30)
        yield RunningEdge(namespace, api_port, log, operator)
    finally:
        traefik.terminate()
        traefik.wait(timeout=30)
        kubectl("delete", "daskclusters", "--all", "-n", namespace, "--timeout=60s", check=False)
        operator.stop()
        print(operator.log.read_text()[-4000:])  # pytest shows it when the test fails
        helm("uninstall", RELEASE, "-n", namespace, check=False)


def test_the_edge_holds_no_kubernetes_credential(namespace: str) -> None:
    """The internet-facing process gets no token: none mounted, and its ServiceAccount's own
    default says no too (tests/chart/test_rbac.py: it has no right at all)."""
    helm("install", RELEASE, str(CHART), "-n", namespace, *DEV_INSTALL, timeout=330)
    try:
        pod = get_json("deployment", EDGE, namespace)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert get_json("serviceaccount", EDGE, namespace)["automountServiceAccountToken"] is False
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert not [m for m in mounts if "serviceaccount" in m], mounts
    finally:
        helm("uninstall", RELEASE, "-n", namespace, check=False)


def test_hub_https_and_sni_routes_share_the_entrypoint(edge: RunningEdge) -> None:
    def hub_router() -> list[dict[str, Any]]:
        return [r for r in edge.routers("http") if r.get("provider") == "file"]

    (hub,) = wait_for(hub_router, f"the hub's HTTPS router (Traefik's log: {edge.log})", 30)
    assert hub["entryPoints"] == ["websecure"]
    assert hub["rule"] == "PathPrefix(`/`)"
    assert "tls" in hub

    kubectl("apply", "-f", "-", input=json.dumps(dask_cluster(edge.namespace)))
    tcp = wait_for(edge.sni_router, f"the cluster's SNI router (Traefik's log: {edge.log})", 30)
    assert tcp["rule"] == f"HostSNI(`{CLUSTER}.{DOMAIN}`)"
    assert tcp["entryPoints"] == ["websecure"]
    assert tcp["tls"]["passthrough"] is True
    (service,) = [
        s for s in dask_edge.traefik_api(edge.api_port, "tcp/services")
        if s["name"] == f"{CLUSTER}-scheduler@http"
    ]  # fmt: skip
    assert service["loadBalancer"]["servers"] == [
        {"address": f"{CLUSTER}-scheduler.{edge.namespace}.svc:8786"}
    ]

    # The operator restarts (an upgrade): the edge keeps the routes it has while the operator
    # does not answer, and the restarted one serves them again from its first answer.
    edge.operator.stop()
    wait_for(lambda: "cannot fetch configuration data" in edge.log.read_text(),
             "Traefik's failed poll", 30)  # fmt: skip
    assert edge.sni_router() is not None
    edge.operator.start()
    routes = requests.get(edge.operator.routes_url, timeout=10).json()
    assert list(routes["tcp"]["routers"]) == [CLUSTER]  # listed before it was first served
    assert edge.sni_router() is not None

    kubectl("delete", "daskcluster", CLUSTER, "-n", edge.namespace, "--wait=false")
    wait_for(lambda: edge.sni_router() is None, "the deleted cluster's router to go", 60)


def kubelet_write(folder: Path, files: dict[str, str], generation: int) -> None:
    """`files` into `folder` as the kubelet writes a ConfigMap or Secret volume: a new
    timestamped folder, the `..data` link swapped to it in one rename, a link per file into
    `..data`; the previous folder goes."""
    folder.mkdir(parents=True, exist_ok=True)
    fresh = folder / f"..generation-{generation}"
    fresh.mkdir()
    for name, text in files.items():
        (fresh / name).write_text(text)
    data = folder / "..data"
    previous = data.resolve() if data.exists() else None
    (folder / "..data_tmp").symlink_to(fresh.name)
    (folder / "..data_tmp").rename(data)
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(previous)


def served_certificate(port: int, sni: str) -> x509.Certificate | None:
    """The certificate the edge presents for `sni`; None while it does not answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def test_the_sites_certificate_is_served_and_its_renewal_read_again(tmp_path: Path) -> None:
    """edge.tls.secretName: the edge serves the site's certificate for edge.host from its
    files, and a renewed one as soon as the kubelet swaps the volume's files (no restart)."""
    host = "af.example.org"
    args, files = dask_edge.chart_edge(f"edge.host={host}", "edge.tls.secretName=edge-tls")
    folder = tmp_path / "edge"
    config = dask_edge.edge_files(files, folder, "http://127.0.0.1:9")
    ca = new_facility_ca("site")
    first, renewed = (new_cluster_identity(ca, name, host) for name in ("first", "renewed"))
    kubelet_write(folder, {**config, "tls.crt": first.tls_cert, "tls.key": first.tls_key}, 1)
    port, api_port = free_port(), free_port()
    log = tmp_path / "traefik.log"
    with log.open("w") as out:
        traefik = subprocess.Popen(
            # The chart's one file, as the edge reads it from the kubelet's folder.
            [tool("traefik"), *dask_edge.local_edge_args(args, port, api_port, folder,
                                                         route_files=False)],
            stdout=out, stderr=out,
        )  # fmt: skip
    try:
        leaf = x509.load_pem_x509_certificates(first.tls_cert.encode())[0]
        wait_for(lambda: served_certificate(port, host) == leaf, f"the site's certificate ({log})")
        kubelet_write(folder, {**config, "tls.crt": renewed.tls_cert,
                               "tls.key": renewed.tls_key}, 2)  # fmt: skip
        leaf = x509.load_pem_x509_certificates(renewed.tls_cert.encode())[0]
        wait_for(lambda: served_certificate(port, host) == leaf, f"the renewed one ({log})", 30)
        text = log.read_text()
        assert "ERR" not in text, text[-3000:]  # Traefik's error level
        # Not the kubelet's timestamped copy of the files read as a second set of them.
        assert "already configured" not in text, text[-3000:]
    finally:
        traefik.terminate()
        traefik.wait(timeout=30)
