"""The agent's state directory: key, certificates and enrolment, private and written atomically."""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only when a certificate is read or a key made
    from cryptography.x509 import Certificate

KEY = "key.pem"
CERT = "cert.pem"
CA = "ca.pem"
CONFIG = "agent.json"
# A renewal installs key and certificate as a pair: both are staged under this suffix first
# so that a crash between the two renames is rolled forward on load, never leaving a key that
# does not match the certificate (which would lock the agent out until re-enrolment).
_STAGED = ".new"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace path with data, all or nothing, even across a power cut: write a temporary
    file (created with `mode`, so a key is never readable by others, not even briefly),
    fsync it, rename it over path, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover from a crash; O_EXCL below must create it afresh with `mode`
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never wider than asked anyway
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames and deletions in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(directory: Path) -> Path:
    """Create directory (and parents) if need be, and make it 0700 whatever it was."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory.stat().st_mode & 0o777) != 0o700:
        directory.chmod(0o700)
    return directory


def default_state_dir() -> Path:
    """/var/lib/overcast-agent as root, else $XDG_STATE_HOME/overcast-agent
    (~/.local/state/overcast-agent)."""
    if os.geteuid() == 0:
        return Path("/var/lib/overcast-agent")
    base = os.environ.get("XDG_STATE_HOME") or ""
    # the spec says a relative XDG_STATE_HOME is invalid and must be ignored
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "overcast-agent"


def make_key_and_csr(common_name_hint: str) -> tuple[bytes, bytes]:
    """A new EC P-256 private key (PEM, PKCS#8, unencrypted: it lives 0600 in the state
    directory) and a certificate signing request for it. The controller's CA decides the
    certificate's real common name (the agent id); the hint only helps reading the CSR."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_hint[:64] or "agent")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def pem_validity(pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after), in UTC, of the first certificate in ``pem``, read from its DER
    (RFC 5280: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE { notBefore,
    notAfter }, ... }, ... }; a time is UTCTime YYMMDDHHMMSSZ or GeneralizedTime
    YYYYMMDDHHMMSSZ). Nothing is verified: only the dates are read. ValueError if ``pem``
    holds no certificate of that shape."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start + len(begin))
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate")
    try:
        der = binascii.a2b_base64(pem[start + len(begin):stop])
    except binascii.Error as e:
        raise ValueError(f"bad base64: {e}") from None
    _, body, _ = _der_item(der, 0, 0x30)  # Certificate
    _, i, _ = _der_item(der, body, 0x30)  # tbsCertificate
    if i < len(der) and der[i] == 0xA0:  # [0] version
        i = _der_item(der, i, 0xA0)[2]
    for tag in (0x02, 0x30, 0x30):  # serialNumber, signature, issuer
        i = _der_item(der, i, tag)[2]
    _, i, _ = _der_item(der, i, 0x30)  # validity
    not_before, i = _der_time(der, i)
    not_after, _ = _der_time(der, i)
    return not_before, not_after


def _der_item(der: bytes, i: int, tag: int) -> tuple[int, int, int]:
    """The DER element at ``i``, which must have ``tag``: (its tag, where its contents
    start, where it ends)."""
    if i + 2 > len(der) or der[i] != tag:
        raise ValueError(f"expected DER tag {tag:#x} at {i}")
    n = der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or i + k > len(der):
            raise ValueError("bad DER length")
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    if i + n > len(der):
        raise ValueError("truncated DER")
    return tag, i, i + n


def _der_time(der: bytes, i: int) -> tuple[dt.datetime, int]:
    if i < len(der) and der[i] == 0x17:  # UTCTime: two-digit year, 1950..2049
        _, a, b = _der_item(der, i, 0x17)
        text = der[a:b].decode("ascii")
        year = int(text[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + text[2:]
    else:
        _, a, b = _der_item(der, i, 0x18)  # GeneralizedTime
        text = der[a:b].decode("ascii")
    if len(text) != 15 or not text.endswith("Z") or not text[:14].isdigit():
        raise ValueError(f"unexpected certificate time {text!r}")
    month, day, hour, minute, second = (int(text[k:k + 2]) for k in range(4, 14, 2))
    return dt.datetime(int(text[:4]), month, day, hour, minute, second, tzinfo=dt.UTC), b


def make_key_and_csr_isolated(common_name_hint: str, timeout: float = 120.0) -> tuple[bytes, bytes]:
    """``make_key_and_csr`` in a child Python process: the running agent renews its
    certificate every few days, and cryptography, once imported, would stay in its memory
    (~7 MiB) for good. The key comes back through a pipe, never through a file."""
    import subprocess
    import sys

    code = ("import sys; from agent.state import make_key_and_csr; "
            "k, c = make_key_and_csr(sys.argv[1]); sys.stdout.buffer.write(k + b'\\0' + c)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code, common_name_hint], capture_output=True,
                         env=env, timeout=timeout, check=False)
    key_pem, sep, csr_pem = out.stdout.partition(b"\0")
    if out.returncode != 0 or not sep or b"PRIVATE KEY" not in key_pem:
        raise RuntimeError(f"making a key failed (exit {out.returncode}): "
                           f"{out.stderr.decode(errors='replace')[-500:]}")
    return key_pem, csr_pem


class AgentState:
    """The state directory (0700). agent.json holds the enrolment ({agent_id, org,
    controller_url, grpc_endpoint, ca_fingerprint}); key.pem, cert.pem and ca.pem beside it.
    Every file is 0600 and replaced atomically. Loaded when made; `save()` writes agent.json."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(Path(directory))
        self.agent_id = ""
        self.org = ""
        self.controller_url = ""
        self.grpc_endpoint = ""
        self.ca_fingerprint = ""
        self.load()

    # ---- paths ----------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.directory / KEY

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT

    @property
    def ca_path(self) -> Path:
        return self.directory / CA

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG

    @property
    def spool_dir(self) -> Path:
        return self.directory / "spool"

    # ---- enrolment ------------------------------------------------------------------

    @property
    def enrolled(self) -> bool:
        """An agent id, and the key and certificates to prove it."""
        return bool(self.agent_id) and all(
            p.is_file() for p in (self.key_path, self.cert_path, self.ca_path)
        )

    def load(self) -> AgentState:
        """Re-read agent.json (absent: not enrolled) and finish a key/certificate install a
        crash interrupted. Raises ValueError if agent.json is not what save() writes."""
        self._recover_staged()
        try:
            raw = self.config_path.read_bytes()
        except FileNotFoundError:
            return self
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.config_path}: unreadable agent state: {e}") from e
        for field in ("agent_id", "org", "controller_url", "grpc_endpoint", "ca_fingerprint"):
            value = data.get(field, "")
            setattr(self, field, value if isinstance(value, str) else str(value))
        return self

    def save(self) -> None:
        data = {
            "agent_id": self.agent_id,
            "org": self.org,
            "controller_url": self.controller_url,
            "grpc_endpoint": self.grpc_endpoint,
            "ca_fingerprint": self.ca_fingerprint,
        }
        write_atomic(self.config_path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")

    # ---- key and certificates ---------------------------------------------------------

    def install_credentials(
        self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes | None = None
    ) -> None:
        """Write a key and the certificate issued for it (and the CA, at enrolment) as one
        change: both staged durably, then renamed key first, certificate last; `load()` rolls
        an interrupted install forward."""
        if ca_pem is not None:
            write_atomic(self.ca_path, ca_pem)
        write_atomic(self._staged(self.key_path), key_pem)
        write_atomic(self._staged(self.cert_path), cert_pem)  # from here the pair is committed
        self._recover_staged()

    def install_certificate(self, cert_pem: bytes) -> None:
        """A new certificate for the key already here."""
        write_atomic(self.cert_path, cert_pem)

    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def cert_not_after(self) -> dt.datetime | None:
        """When cert.pem expires (UTC), None without a readable certificate."""
        return self.cert_validity()[1]

    def cert_validity(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(not before, not after) of cert.pem, (None, None) without a readable certificate.
        The running agent checks this every round: it is read from the certificate's DER
        here (``pem_validity``), without OpenSSL (``ssl``) or cryptography, which the running
        agent does not load (~5 and ~7 MiB of memory for its whole life)."""
        try:
            return pem_validity(self.cert_path.read_bytes())
        except OSError:
            return None, None
        except ValueError:
            cert = self._cert()  # not what our CA issues: ask a real X.509 parser
            if cert is None:
                return None, None
            return cert.not_valid_before_utc, cert.not_valid_after_utc

    def cert_common_name(self) -> str | None:
        """cert.pem's subject common name (the agent id), None without one."""
        cert = self._cert()
        if cert is None:
            return None
        from cryptography.x509.oid import NameOID

        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            return None
        value = names[0].value
        return value if isinstance(value, str) else value.decode()

    def _cert(self) -> Certificate | None:
        try:
            pem = self.cert_path.read_bytes()
        except OSError:
            return None
        from cryptography import x509

        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            return None

    @staticmethod
    def _staged(path: Path) -> Path:
        return path.with_name(path.name + _STAGED)

    def _recover_staged(self) -> None:
        key_new, cert_new = self._staged(self.key_path), self._staged(self.cert_path)
        if cert_new.exists():
            # the certificate is staged last: with it there, the pair is complete
            if key_new.exists():
                os.replace(key_new, self.key_path)
            os.replace(cert_new, self.cert_path)
            fsync_dir(self.directory)
        elif key_new.exists():
            key_new.unlink()  # crashed before the certificate was staged: the old pair stands
