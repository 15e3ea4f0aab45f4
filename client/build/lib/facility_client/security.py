"""Dask TLS settings for one facility cluster (see operators/README.md, "TLS").

Every cluster has its own CA, signed by the facility CA. `ClusterSecurity` makes the cluster CA
a trust anchor on its own (OpenSSL's partial-chain flag), so a scheduler or worker built with it
refuses a certificate of any other cluster, although the same facility CA signed both (workers
listen too: facility_client.worker). The user's client trusts its cluster's CA alone too.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from distributed.security import Security


class ClusterSecurity(Security):
    """`distributed.Security` whose contexts accept the cluster CA as a trust anchor.

    `sni`, when given, is sent as the TLS server name instead of the address's host: a client
    can then connect to the edge's plain address (no wildcard DNS) and still reach its cluster.
    """

    def __init__(self, *, sni: str | None = None, **kwargs: Any) -> None:
        super().__init__(require_encryption=True, **kwargs)
        self.sni = sni

    def _get_tls_context(self, tls: dict[str, Any], purpose: ssl.Purpose) -> ssl.SSLContext:
        context = super()._get_tls_context(tls, purpose)
        if context is not None:
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    def get_connection_args(self, role: str) -> dict[str, Any]:
        args = super().get_connection_args(role)
        if self.sni:
            args["server_hostname"] = self.sni
        return args


def scheduler_security(tls_dir: Path) -> ClusterSecurity:
    """The scheduler's settings: it trusts its cluster's CA, and nothing above it."""
    ca = str(tls_dir / "cluster-ca.crt")
    cert, key = str(tls_dir / "tls.crt"), str(tls_dir / "tls.key")
    return ClusterSecurity(
        tls_ca_file=ca,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )


def client_security(
    cluster_ca: str, tls_cert: str, tls_key: str, sni: str | None = None
) -> ClusterSecurity:
    """A client's settings from PEM text (the user API's credentials). It trusts its cluster's
    CA alone (partial chain), so another cluster's scheduler, whose leaf the same facility CA
    signed, fails the handshake: Dask checks no host name, and a client unpickles what its
    scheduler sends."""
    return ClusterSecurity(
        tls_ca_file=cluster_ca,
        tls_client_cert=tls_cert,
        tls_client_key=tls_key,
        sni=sni,
    )
