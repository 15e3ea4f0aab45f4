"""The facility CA and the per-cluster TLS identities it signs (PEM in, PEM out).

Each Dask cluster gets its own CA (an intermediate of the facility CA, pathlen 0) and one leaf
that its scheduler, workers and client share. The scheduler trusts only its cluster's CA
(facility_client.security), so a leaf of another cluster fails the handshake even though the
same facility CA signed both.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CLUSTER_DAYS = 365


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM text."""

    cert: str
    key: str


@dataclass(frozen=True)
class ClusterIdentity:
    """What the cluster's Secret holds (see operators/README.md)."""

    facility_ca: str
    cluster_ca: str
    tls_cert: str  # leaf followed by the cluster CA, so peers can build the chain
    tls_key: str

    def secret_data(self) -> dict[str, str]:
        """The Secret's stringData."""
        return {
            "ca.crt": self.facility_ca,
            "cluster-ca.crt": self.cluster_ca,
            "tls.crt": self.tls_cert,
            "tls.key": self.tls_key,
        }


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "analysis facility"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def new_facility_ca(name: str) -> KeyPair:
    """A self-signed CA for the facility's Dask clusters (name: e.g. the release's fullname)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"{name} dask CA", _name(f"{name} dask CA"), key, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_pem_cert(cert), _pem_key(key))


def new_cluster_identity(facility_ca: KeyPair, cluster_id: str, sni_name: str) -> ClusterIdentity:
    """A cluster CA signed by the facility CA, and the cluster's leaf signed by it."""
    ca_cert = x509.load_pem_x509_certificate(facility_ca.cert.encode())
    ca_key = serialization.load_pem_private_key(facility_ca.key.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the facility CA key must be an EC key")

    cluster_key = ec.generate_private_key(ec.SECP256R1())
    cluster_ca = (
        _builder(f"dask cluster {cluster_id} CA", ca_cert.subject, cluster_key, CLUSTER_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        _builder(f"dask cluster {cluster_id}", cluster_ca.subject, leaf_key, CLUSTER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(sni_name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(cluster_key.public_key()),
            critical=False,
        )
        .sign(cluster_key, hashes.SHA256())
    )
    return ClusterIdentity(
        facility_ca=facility_ca.cert,
        cluster_ca=_pem_cert(cluster_ca),
        tls_cert=_pem_cert(leaf) + _pem_cert(cluster_ca),
        tls_key=_pem_key(leaf_key),
    )
