"""The controller's own certificate authority and server certificate (made on first start,
kept 0600 in the data directory) unless a certificate and key are given. The same CA signs
agent certificates (agents issue)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, hex: what agents and the CLI pin."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_pem)

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def ensure_pki(data_dir: str, hosts: list[str], cert: str = "", key: str = "") -> Pki:
    """Load or create the CA and a server certificate valid for ``hosts``. A given
    ``cert``/``key`` pair replaces the generated server certificate (the CA is still made:
    it signs agents)."""
    d = Path(data_dir) / "pki"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = d / "ca.crt", d / "ca.key"
    now = dt.datetime.now(dt.UTC)
    if not ca_cert.exists() or not ca_key.exists():
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Overcast"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Overcast CA {socket.gethostname()}"),
        ])
        c = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), False)
            .sign(k, hashes.SHA256())
        )
        _write_private(ca_key, _key_pem(k))
        _write_private(ca_cert, c.public_bytes(serialization.Encoding.PEM))
    if cert and key:
        return Pki(ca_cert, ca_key, Path(cert), Path(key))
    srv_cert, srv_key = d / "server.crt", d / "server.key"
    if not _server_cert_fits(srv_cert, hosts):
        _issue_server_cert(ca_cert, ca_key, hosts, srv_cert, srv_key)
    return Pki(ca_cert, ca_key, srv_cert, srv_key)


def ensure_hub_cert(pki: Pki, hosts: list[str]) -> Pki:
    """The certificate of the listeners on the tunnel hub's address (HTTPS and agents),
    issued by the controller's own CA for ``hosts`` (the hub address) and kept beside the CA
    (``hub.crt``/``hub.key``, reused while it fits). Always the own CA's, even with a
    ``tls_cert``: agents behind a tunnel pin that CA. Returns a Pki whose server certificate
    is this one. Blocks (file I/O, a signature)."""
    d = pki.ca_cert.parent
    cert, key = d / "hub.crt", d / "hub.key"
    if not _server_cert_fits(cert, hosts):
        _issue_server_cert(pki.ca_cert, pki.ca_key, hosts, cert, key)
    return Pki(pki.ca_cert, pki.ca_key, cert, key)


def own_server_pki(pki: Pki, hosts: list[str]) -> Pki:
    """``pki`` when its server certificate is the controller's own; else (a ``tls_cert`` of
    the operator's) a certificate from the own CA for ``hosts``, kept beside it
    (``agents.crt``/``agents.key``, reused while it fits), for the agents' listener: agents
    pin the own CA, not whoever issued the operator's certificate. Blocks (file I/O, a
    signature)."""
    d = pki.ca_cert.parent
    if pki.server_cert.parent == d:
        return pki
    cert, key = d / "agents.crt", d / "agents.key"
    if not _server_cert_fits(cert, hosts):
        _issue_server_cert(pki.ca_cert, pki.ca_key, hosts, cert, key)
    return Pki(pki.ca_cert, pki.ca_key, cert, key)


def _issue_server_cert(ca_cert: Path, ca_key: Path, hosts: list[str], srv_cert: Path,
                       srv_key: Path) -> None:
    """A server certificate for ``hosts`` (and loopback) signed by the CA, with the CA
    appended; written 0600."""
    now = dt.datetime.now(dt.UTC)
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_k = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    assert isinstance(ca_k, ec.EllipticCurvePrivateKey)
    k = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in sorted(set(hosts) | {"localhost", "127.0.0.1", "::1"}):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    c = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca.subject).public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_k, hashes.SHA256())
    )
    _write_private(srv_key, _key_pem(k))
    _write_private(srv_cert, c.public_bytes(serialization.Encoding.PEM) + ca_cert.read_bytes())


def _server_cert_fits(path: Path, hosts: list[str]) -> bool:
    """Reuse the server certificate while it names every host and has 30 days left."""
    if not path.exists():
        return False
    c = x509.load_pem_x509_certificate(path.read_bytes())
    if c.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=30):
        return False
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return all(h in names or str(h) in names for h in hosts)


class CsrError(ValueError):
    """The certificate signing request is unusable (says why)."""


def sign_agent_csr(pki: Pki, csr_pem: bytes, agent_id: str, ttl_seconds: int,
                   expect_cn: str | None = None) -> tuple[bytes, dt.datetime, int]:
    """Sign an agent's CSR: the certificate's subject is ``agent_id`` whatever the CSR asked,
    client-auth only. With ``expect_cn`` (renewals), a CSR naming anything else is refused.
    Returns (certificate PEM, not_after, serial)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrError("the CSR is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise CsrError("EC keys must be at least 256 bits")
    else:
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise CsrError("RSA keys must be at least 2048 bits")
        elif not isinstance(key, ed25519.Ed25519PublicKey):
            raise CsrError("unsupported key type: use EC P-256, Ed25519 or RSA ≥ 2048")
    if expect_cn is not None:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        asked = str(cns[0].value) if cns else ""
        if asked != expect_cn:
            raise CsrError(f"the CSR is for {asked!r}, not for this agent")
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(seconds=ttl_seconds)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "agent")]))
        .issuer_name(ca.subject).public_key(key)
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), not_after, serial


def cert_serial(cert_pem: bytes) -> int:
    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)
