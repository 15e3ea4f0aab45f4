"""Certificates for the servers that the tests and `make up` run: a CA of their own, and leaf
certificates it signs for the names (DNS or IP) that clients use.

    python -m harness.pki --out DIR --name NAME [--name NAME ...] [--days N]

writes DIR/ca.crt, DIR/ca.key once (kept when they exist) and DIR/<first name>.{crt,key}, a
server certificate for those names, again at each call.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Pki:
    """A certificate authority of its own: for the tests' HTTPS servers (a day), or make up's
    (`days`)."""

    def __init__(self, name: str = "facility test CA", days: int = 1) -> None:
        self.days = days
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: Sequence[str]) -> tuple[bytes, bytes]:
        """(certificate, key) in PEM for a server known by names (DNS names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem(key)

    def tls_secret(self, folder: Path, names: Sequence[str]) -> Path:
        """A kubernetes.io/tls Secret with ca.crt, as its volume shows it: files of mode 0644."""
        cert, key = self.issue(names)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in {"tls.crt": cert, "tls.key": key, "ca.crt": self.pem}.items():
            (folder / name).write_bytes(data)
            (folder / name).chmod(0o644)
        return folder

    def ca_dir(self, folder: Path) -> Path:
        """The CA as an OpenSSL-hashed folder, where XRootD clients look (X509_CERT_DIR)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "facility-test-ca.pem").write_bytes(self.pem)
        subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
        return folder

    def system_bundle_with_ca(self, path: Path) -> Path:
        """The system CA bundle with this CA added: what xcache.auth.caBundle mounts over it."""
        path.write_bytes(SYSTEM_CA_BUNDLE.read_bytes() + b"\n" + self.pem)
        path.chmod(0o644)
        return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="a CA and a server certificate")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", action="append", required=True, help="DNS name or IP")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pki = Pki("facility development CA", days=args.days)
    ca_crt, ca_key = args.out / "ca.crt", args.out / "ca.key"
    if ca_crt.is_file() and ca_key.is_file():
        pki.cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        pki.key = loaded
        pki.pem = ca_crt.read_bytes()
    else:
        ca_key.touch(mode=0o600)
        ca_key.write_bytes(_pem(pki.key))
        ca_crt.write_bytes(pki.pem)
    cert, key = pki.issue(args.name)
    leaf_key, leaf_crt = args.out / f"{args.name[0]}.key", args.out / f"{args.name[0]}.crt"
    leaf_key.touch(mode=0o600)
    leaf_key.write_bytes(key)
    leaf_crt.write_bytes(cert)
    print(leaf_crt)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
