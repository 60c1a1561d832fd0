"""tunnel.keys: key pairs as wg makes them, their hex form, validation; and the fallback to
wg when cryptography is missing."""

from __future__ import annotations

import base64
import builtins
import shutil
import subprocess
from typing import Any

import pytest

from tunnel import keys

WG = shutil.which("wg")


def test_generate_and_public_round_trip() -> None:
    private = keys.generate_private()
    assert keys.is_key(private)
    raw = base64.b64decode(private)
    assert raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40  # clamped, as wg genkey does
    public = keys.public_of(private)
    assert keys.is_key(public) and public != private
    assert keys.public_of(private) == public
    assert keys.from_hex(keys.to_hex(public)) == public
    assert keys.to_hex(public) == raw_hex(public)
    assert keys.generate_private() != private


def raw_hex(key: str) -> str:
    return base64.b64decode(key).hex()


@pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) is not installed")
def test_public_of_matches_wg_pubkey() -> None:
    assert WG is not None
    for _ in range(3):
        private = keys.generate_private()
        wg = subprocess.run([WG, "pubkey"], input=private, capture_output=True, text=True, check=True)
        assert keys.public_of(private) == wg.stdout.strip()
    # and a key made by wg genkey
    private = subprocess.run([WG, "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    wg = subprocess.run([WG, "pubkey"], input=private, capture_output=True, text=True, check=True)
    assert keys.public_of(private) == wg.stdout.strip()


@pytest.mark.parametrize("text", ["", "abc", "A" * 44, base64.b64encode(b"x" * 31).decode(),
                                  base64.b64encode(b"x" * 33).decode(), "!" * 43 + "=", None, 42])
def test_is_key_refuses(text: Any) -> None:
    assert not keys.is_key(text)


def test_errors_never_quote_the_key() -> None:
    secret = keys.generate_private()[:-2] + "!="
    with pytest.raises(ValueError) as e:
        keys.public_of(secret)
    assert secret not in str(e.value) and "32 bytes" in str(e.value)
    with pytest.raises(ValueError):
        keys.to_hex("nope")
    with pytest.raises(ValueError):
        keys.from_hex("00" * 31)
    with pytest.raises(ValueError):
        keys.from_hex("zz" * 32)


@pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) is not installed")
def test_falls_back_to_wg_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    expected_private = keys.generate_private()
    expected_public = keys.public_of(expected_private)
    real_import = builtins.__import__

    def no_cryptography(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("cryptography"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    calls: list[str] = []
    real_wg = keys._wg

    def counted(command: str, stdin: str | None = None) -> str:
        calls.append(command)
        return real_wg(command, stdin)

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    monkeypatch.setattr(keys, "_wg", counted)
    private = keys.generate_private()
    assert keys.is_key(private)
    assert keys.public_of(expected_private) == expected_public
    assert calls == ["genkey", "pubkey"]
