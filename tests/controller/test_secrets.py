"""Secrets at rest: AES-GCM with a key outside the store."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from controller.errors import Invalid, OvercastError
from controller.secrets import SecretBox, load_key


def test_seal_and_open_round_trip_and_bind_to_place(tmp_path: Path) -> None:
    box = SecretBox(load_key(str(tmp_path)))
    sealed = box.seal("AKIA-secret", aad="cloud/1")
    assert "AKIA" not in sealed
    assert box.open(sealed, aad="cloud/1") == b"AKIA-secret"
    with pytest.raises(OvercastError, match="cannot be decrypted"):
        box.open(sealed, aad="cloud/2")  # moved to another document: refused
    assert box.seal("x") != box.seal("x")  # fresh nonce each time


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    k1 = load_key(str(tmp_path))
    mode = stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode)
    assert mode == 0o600
    assert load_key(str(tmp_path)) == k1


def test_wrong_key_cannot_open(tmp_path: Path) -> None:
    sealed = SecretBox(os.urandom(32)).seal("x")
    with pytest.raises(OvercastError):
        SecretBox(os.urandom(32)).open(sealed)


def test_configured_key_wins_and_is_checked(tmp_path: Path) -> None:
    key = os.urandom(32)
    assert load_key(str(tmp_path), base64.b64encode(key).decode()) == key
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(Invalid):
        SecretBox(load_key(str(tmp_path), base64.b64encode(b"short").decode()))
