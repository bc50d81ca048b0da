"""A development PKI: a CA, a gateway server certificate and client certificates.

``make run`` calls this so that the gateway speaks TLS from the first start; tests
use the same functions to make certificates of every kind (expired, wrong CA...).
Production deployments bring their own certificates.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str, organization: str = "virtmesh") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def issue(subject: x509.Name, key: Key, issuer: x509.Name, issuer_key: Key, *,
          ca: bool = False, usage: x509.ObjectIdentifier | None = None,
          sans: list[x509.GeneralName] | None = None, days: int = 825,
          not_before: datetime.datetime | None = None) -> x509.Certificate:
    """Sign a certificate; every knob a test needs to make a bad one is here."""
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pair(directory: Path, stem: str, cert: x509.Certificate, key: Key | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path = directory / f"{stem}.key"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(path, 0o600)


def load_pair(directory: Path, stem: str) -> tuple[x509.Certificate, Key]:
    cert = x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def server_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


DEV_CA_NAME = _name("virtmesh development CA")


def is_dev_ca(path: Path) -> bool:
    """Whether ``path`` is a CA certificate made by ``ensure_dev_pki``."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).subject == DEV_CA_NAME
    except (OSError, ValueError):
        return False


def ensure_dev_pki(directory: Path, client_names: tuple[str, ...] = ("client",)) -> None:
    """Create what is missing of ca, server and client certificates in ``directory``."""
    if not (directory / "ca.crt").exists():
        ca_key = new_key()
        write_pair(directory, "ca", issue(DEV_CA_NAME, ca_key, DEV_CA_NAME, ca_key, ca=True,
                                          days=3650), ca_key)
    ca_cert, ca_key = load_pair(directory, "ca")
    if not (directory / "server.crt").exists():
        key = new_key()
        hosts = ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
        write_pair(directory, "server", issue(
            _name("virtmesh gateway"), key, ca_cert.subject, ca_key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=server_names(hosts)), key)
    for stem in client_names:
        if not (directory / f"{stem}.crt").exists():
            key = new_key()
            write_pair(directory, stem, issue(
                _name("admin" if stem == "client" else stem), key, ca_cert.subject, ca_key,
                usage=ExtendedKeyUsageOID.CLIENT_AUTH), key)


def main() -> None:
    parser = argparse.ArgumentParser(description="create a development PKI for the gateway")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    ensure_dev_pki(args.directory)
    print(f"PKI ready in {args.directory}")


if __name__ == "__main__":
    main()
