"""The gateway's install script (``install.sh`` beside this module, served at
``/install/tunnel.sh``), the one-line command that fetches and runs it, and the shell
assignments the script reads back from registration. Pure: nothing here blocks."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

SCRIPT_PATH = Path(__file__).with_name("install.sh")
_SAFE = re.compile(r"[A-Za-z0-9_.:/+=,\[\] -]*")


def script() -> bytes:
    """The POSIX sh install script."""
    return SCRIPT_PATH.read_bytes()


def command(url: str, token: str, ca_fingerprint: str, own_ca: bool, rotate: bool = False) -> str:
    """The one-line command a user runs on the gateway (as a user with sudo). For an https
    controller whose certificate is from its own CA (``own_ca``), ca.pem is fetched without
    verification and trusted only when its SHA-256 matches the pinned fingerprint; the script
    is then fetched with it and checks the pin again."""
    q = shlex.quote
    args = f"--controller {q(url)} --token {q(token)}"
    if url.startswith("https://"):
        args += f" --ca-fingerprint sha256:{ca_fingerprint}"
    if rotate:
        args += " --rotate"
    if not (url.startswith("https://") and own_ca):
        return f"curl -fsSL {q(url + '/install/tunnel.sh')} | sudo sh -s -- {args}"
    inner = (
        "set -e; t=$(mktemp -d); "
        f"curl -fsSLk {url}/ca.pem -o $t/ca.pem; "
        "sed /-----/d $t/ca.pem | tr -d \"\\r\\n\" | base64 -d | sha256sum | "
        f"grep -q ^{ca_fingerprint} || {{ echo the controller CA does not match the fingerprint >&2; exit 4; }}; "
        f"curl -fsSL --cacert $t/ca.pem {url}/install/tunnel.sh -o $t/tunnel.sh; "
        f"sudo sh $t/tunnel.sh {args}")
    return f"sh -c {q(inner)}"


def shell_answer(values: Mapping[str, str]) -> str:
    """``OC_NAME='value'`` lines for the script to source. Raises ValueError when a value has
    a character outside a conservative set (never expected: ids, keys, addresses, CIDRs)."""
    lines = []
    for k, v in values.items():
        if not re.fullmatch(r"OC_[A-Z][A-Z0-9_]*", k) or not _SAFE.fullmatch(v):
            raise ValueError(f"unsafe value for {k}")
        lines.append(f"{k}='{v}'")
    return "\n".join(lines) + "\n"
