"""The edge with real Dask: two users' clusters behind the one public port of the real Traefik.

Traefik runs with the chart's entrypoint arguments and, through its file provider, exactly the
routes the operator makes (harness/dask_edge.py): per cluster `HostSNI(<id>.<domain>)`
with TLS passthrough to its scheduler, and an HTTPS router for the hub on the same entrypoint.
The hub's place is taken by a small HTTP server that stands for the proxy and hub. Alice's and
Bob's clusters each have their own TLS identity, a real scheduler with `scheduler_security`, and
two `dask worker` processes that reach the scheduler through Traefik by SNI. Without wildcard
DNS here, every client and worker dials the edge's 127.0.0.1 address and sets the cluster's
name as the SNI itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import re
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from distributed import Client
from distributed.comm import connect
from distributed.comm.core import FatalCommClosedError
from facility_client.security import ClusterSecurity, client_security
from facility_operator.certs import new_facility_ca

from harness.dask_edge import (
    DOMAIN,
    LOOPBACK,
    Cluster,
    Edge,
    new_cluster,
    running_edge,
    running_scheduler,
    running_worker,
    worker_name,
)
from harness.net import free_port, http_get
from harness.wait import wait_for

HUB_BODY = "the hub's stand-in"
WORKERS = 2  # per cluster
# What a scheduler logs when it refuses a connection in the TLS handshake, or when its peer
# gives up there. A connection that these tests make and expect to fail would, had it reached a
# scheduler, either leave this line in its log or have succeeded.
REFUSED = "TLS handshake failed"


class Hub(http.server.BaseHTTPRequestHandler):
    """Stands for the proxy and hub behind the edge's HTTPS router."""

    def do_GET(self):
        body = HUB_BODY.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        """Quiet: the test reads responses, not the server's log."""


@dataclass
class Facility:
    edge: Edge
    clusters: dict[str, Cluster]  # by user
    logs: dict[str, Path]  # scheduler logs, by user
    workdir: Path

    def log_offsets(self) -> dict[str, int]:
        return {user: log.stat().st_size for user, log in self.logs.items()}

    def refused(self, user: str, since: dict[str, int]) -> list[str]:
        """The handshakes that `user`'s scheduler refused after `since` (its log's offsets)."""
        with self.logs[user].open() as log:
            log.seek(since[user])
            return [line for line in log if REFUSED in line]


@pytest.fixture(scope="module")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facility]:
    workdir = tmp_path_factory.mktemp("dask-edge")
    facility_ca = new_facility_ca("af")
    port = free_port()
    clusters = {user: new_cluster(facility_ca, user, workdir, port) for user in ("alice", "bob")}
    logs = {user: workdir / f"{c.id}-scheduler.log" for user, c in clusters.items()}
    hub = http.server.ThreadingHTTPServer((LOOPBACK, 0), Hub)
    with contextlib.ExitStack() as stack:
        threading.Thread(target=hub.serve_forever, daemon=True).start()
        stack.callback(hub.server_close)
        stack.callback(hub.shutdown)
        for user, cluster in clusters.items():
            stack.enter_context(running_scheduler(cluster, logs[user]))
        schedulers = {c.sni: f"{LOOPBACK}:{c.scheduler_port}" for c in clusters.values()}
        hub_url = f"http://{LOOPBACK}:{hub.server_address[1]}"
        edge = stack.enter_context(running_edge(workdir, port, schedulers, hub_url))
        for cluster in clusters.values():
            for i in range(WORKERS):
                name = f"{cluster.id}-w{i}"
                stack.enter_context(running_worker(cluster, name, workdir / f"{name}.log", edge))
        yield Facility(edge, clusters, logs, workdir)


def tls_get(port: int, sni: str | None, path: str = "/") -> tuple[str, str]:
    """GET `path` over TLS to the edge, sending `sni` (or none) and verifying nothing; returns
    the common name of the certificate the edge answered with, and the response."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the edge's own default certificate: this check only
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        request = f"GET {path} HTTP/1.1\r\nHost: af.example.org\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        response = b"".join(iter(lambda: tls.recv(65536), b"")).decode()
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    subject = x509.load_der_x509_certificate(der).subject
    return subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, response


def dask_connect_error(address: str, security: ClusterSecurity) -> FatalCommClosedError:
    """The error of a Dask connection that must fail: in the TLS handshake, at once (a fatal
    error is not retried until the connect timeout)."""

    async def attempt() -> None:
        comm = await connect(address, timeout=20, **security.get_connection_args("client"))
        await comm.close()

    with pytest.raises(FatalCommClosedError) as error:
        asyncio.run(attempt())
    return error.value


def test_each_user_computes_on_their_own_workers_through_one_port(facility):
    for cluster in facility.clusters.values():
        with Client(facility.edge.address, security=cluster.security(through_edge=True)) as client:
            client.wait_for_workers(WORKERS, timeout=30)
            info = client.scheduler_info()
            # The edge routed by SNI to this cluster's scheduler (which reports the address it
            # listens on: distributed 2026.8.0 does not report its contact_address)...
            assert info["address"] == cluster.direct_address
            names = {w["name"] for w in info["workers"].values()}
            assert names == {f"{cluster.id}-w{i}" for i in range(WORKERS)}
            # ...and the work ran on this cluster's workers only.
            ran_on = set(client.gather(client.map(worker_name, range(20))))
            assert ran_on <= names
    # Every worker reached its scheduler through the edge's one port, not directly.
    registered = re.compile(rf"Registered to:\s+{re.escape(facility.edge.address)}$", re.M)
    for log in facility.workdir.glob("*-w?.log"):
        assert registered.search(log.read_text()), log


def test_one_users_credentials_fail_the_handshake_with_anothers_scheduler(facility):
    alice, bob = facility.clusters["alice"], facility.clusters["bob"]
    before = facility.log_offsets()
    # Alice's certificate and key, sent through the edge to Bob's cluster (an intruder may trust
    # whatever it likes: Bob's scheduler's own check is what is tested here).
    intruder = client_security(alice.identity.facility_ca, alice.identity.tls_cert,
                               alice.identity.tls_key, sni=bob.sni)  # fmt: skip
    error = dask_connect_error(facility.edge.address, intruder)
    # Bob's scheduler, trusting only Bob's cluster CA, rejects Alice's certificate although the
    # same facility CA signed both; the client hears the TLS alert.
    assert "TLSV1_ALERT_UNKNOWN_CA" in str(error)
    refusals = wait_for(lambda: facility.refused("bob", before), "Bob's scheduler to log it", 10)
    assert ["certificate verify failed" in line for line in refusals] == [True]
    assert facility.refused("alice", before) == []


@pytest.mark.parametrize("sni", [f"nobody.{DOMAIN}", None], ids=["unknown-sni", "no-sni"])
def test_unknown_or_missing_sni_reaches_no_scheduler(facility, sni):
    alice = facility.clusters["alice"]
    before = facility.log_offsets()
    # No TCP router matches, so Traefik falls through to the entrypoint's HTTPS routers: it
    # ends the TLS itself, with its default certificate, and routes by HTTP to the hub.
    common_name, response = tls_get(facility.edge.port, sni)
    assert common_name == "TRAEFIK DEFAULT CERT"
    assert response.startswith("HTTP/1.1 200")
    assert response.endswith(HUB_BODY)
    # A Dask client, verifying against its cluster's CA, refuses that certificate at once.
    security = client_security(alice.identity.cluster_ca, alice.identity.tls_cert,
                               alice.identity.tls_key, sni=sni)  # fmt: skip
    error = dask_connect_error(facility.edge.address, security)
    assert "TLS certificate does not match" in str(error)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert "self-signed certificate" in str(error.__cause__)
    # Traefik decides the route before it dials a backend: no scheduler saw the connection.
    assert facility.refused("alice", before) == facility.refused("bob", before) == []


def test_hub_https_still_answers_on_the_same_port(facility):
    # The facility's own host name, which no TCP router claims: the hub's HTTPS router serves it.
    common_name, response = tls_get(facility.edge.port, "af.example.org")
    assert common_name == "TRAEFIK DEFAULT CERT"  # no certificate configured: the chart's default
    assert response.startswith("HTTP/1.1 200")
    assert response.endswith(HUB_BODY)


def test_the_edge_counts_the_hubs_router_on_its_own_metrics_port(facility):
    """Traefik's Prometheus metrics as the chart configures them: on the metrics entrypoint
    alone, per router (the hub's) besides per entrypoint and service; the public entrypoint
    has no /metrics of its own (the path goes to the hub like any other)."""
    _, response = tls_get(facility.edge.port, "af.example.org")
    assert response.startswith("HTTP/1.1 200")
    answer = http_get(f"http://{LOOPBACK}:{facility.edge.metrics_port}/metrics")
    assert answer is not None
    status, text = answer
    assert status == 200
    routers = [line for line in text.splitlines() if line.startswith("traefik_router_requests")]
    assert any('router="hub@file"' in line and 'code="200"' in line for line in routers), routers
    assert 'traefik_entrypoint_requests_total{code="200",entrypoint="websecure"' in text
    _, public = tls_get(facility.edge.port, "af.example.org", "/metrics")
    assert public.endswith(HUB_BODY)


@contextlib.contextmanager
def posing_scheduler(leaf: str, key: str, anyone_signed_by: str) -> Iterator[int]:
    """A TLS server that presents another cluster's leaf and accepts any client certificate the
    facility CA signed: what a user who controls their own scheduler could run to pose as
    someone else's. Yields its loopback port; it answers the handshake and nothing more."""
    directory = Path(tempfile.mkdtemp())
    (directory / "leaf.pem").write_text(leaf)
    (directory / "key.pem").write_text(key)
    (directory / "ca.pem").write_text(anyone_signed_by)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "leaf.pem", directory / "key.pem")
    context.load_verify_locations(directory / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL
    server = socket.create_server((LOOPBACK, 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()


def test_a_scheduler_with_another_clusters_leaf_fails_the_clients_handshake(facility):
    """Bob holds his own cluster's leaf (signed, like Alice's, by the facility CA) and runs his
    own code in his scheduler: he may present it to Alice's client. Alice's client trusts only
    her cluster's CA (the API's credentials, with partial chain), so the handshake fails
    before anything is sent or unpickled."""
    alice, bob = facility.clusters["alice"], facility.clusters["bob"]
    with posing_scheduler(bob.identity.tls_cert, bob.identity.tls_key,
                          bob.identity.facility_ca) as port:  # fmt: skip
        error = dask_connect_error(f"tls://{LOOPBACK}:{port}", alice.security(through_edge=True))
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(error.__cause__)
    # Her own scheduler she still reaches (the positive case of the same credentials).
    with Client(facility.edge.address, security=alice.security(through_edge=True)) as client:
        assert client.scheduler_info()["address"] == alice.direct_address
