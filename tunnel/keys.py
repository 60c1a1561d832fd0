"""WireGuard keys: X25519 key pairs in base64 (as ``wg`` shows them) and hex (as the UAPI wants).

Keys are made with ``cryptography``'s X25519, a dependency of every install (the agent's too),
imported only when a key is made. Where it is missing, ``wg genkey``/``wg pubkey``
(wireguard-tools) make them instead. Nothing here logs a key, and no error message quotes
one: a private key stays on the host that made it.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import subprocess

KEY_BYTES = 32


def is_key(text: str) -> bool:
    """True when ``text`` is 32 bytes in standard base64, as ``wg`` writes keys."""
    if not isinstance(text, str) or len(text) != 44 or not text.endswith("="):
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def _raw(key: str, what: str) -> bytes:
    # the message never quotes the text: it may be a private key
    if not is_key(key):
        raise ValueError(f"not a WireGuard {what} (expected 32 bytes in base64, 44 characters)")
    return base64.b64decode(key)


def _clamp(raw: bytes) -> bytes:
    # What `wg genkey` does (RFC 7748 clamping): X25519 clamps at use anyway, so the public
    # key is the same either way; clamped keys just look like wg's.
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private() -> str:
    """A new private key in base64. Blocks only when it falls back to running ``wg genkey``.

    Raises RuntimeError when neither ``cryptography`` nor ``wg`` is available."""
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    except ImportError:
        return _wg("genkey")
    raw = X25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(_clamp(raw)).decode()


def public_of(private: str) -> str:
    """The public key (base64) of a private key (base64). Raises ValueError when ``private`` is
    not a key, RuntimeError when neither ``cryptography`` nor ``wg`` is available."""
    raw = _raw(private, "private key")
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    except ImportError:
        return _wg("pubkey", stdin=private)
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return base64.b64encode(public).decode()


def to_hex(key: str) -> str:
    """A base64 key in the UAPI's form (64 hex digits). Raises ValueError when not a key."""
    return _raw(key, "key").hex()


def from_hex(text: str) -> str:
    """A UAPI key (64 hex digits) in base64. Raises ValueError when not a key."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError("not a WireGuard key in hex (expected 64 hex digits)")
    return base64.b64encode(raw).decode()


def _wg(command: str, stdin: str | None = None) -> str:
    wg = shutil.which("wg")
    if wg is None:
        raise RuntimeError("making WireGuard keys needs the cryptography package or wg (wireguard-tools)")
    r = subprocess.run([wg, command], input=stdin, capture_output=True, text=True, timeout=10)
    out = r.stdout.strip()
    if r.returncode != 0 or not is_key(out):
        # wg's stderr never contains the key it was given
        raise RuntimeError(f"wg {command} failed: {r.stderr.strip() or 'no output'}")
    return out
