"""Encryption of secrets at rest (cloud credentials, private keys): AES-256-GCM with a key kept
outside the store — ``<data_dir>/secret.key`` (0600) or the ``secret_key`` setting."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.errors import Invalid, OvercastError

_PREFIX = "enc1:"


class SecretBox:
    """Seal and open small secrets. ``aad`` binds a ciphertext to where it is stored (say the
    document id) so it cannot be moved to another document and still open."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise Invalid("the secret key must be 32 bytes (base64 encoded)", field="secret_key")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def seal(self, plaintext: str | bytes, aad: str = "") -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, data, aad.encode())
        return _PREFIX + base64.b64encode(nonce + ct).decode()

    def open(self, token: str, aad: str = "") -> bytes:
        if not token.startswith(_PREFIX):
            raise OvercastError("stored secret is not in a known format")
        try:
            raw = base64.b64decode(token[len(_PREFIX):], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], aad.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise OvercastError(
                "a stored secret cannot be decrypted: wrong secret key or damaged data"
            ) from None


def load_key(data_dir: str, configured: str = "") -> bytes:
    """The key from the setting when given, else from ``secret.key`` (created on first use)."""
    if configured:
        try:
            return base64.b64decode(configured, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("secret_key must be base64", field="secret_key") from None
    path = Path(data_dir) / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(32)) + b"\n")
    return base64.b64decode(path.read_bytes().strip())
