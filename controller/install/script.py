"""The agent's install script (``agent.sh`` beside this module, served at
``/install/agent.sh`` with this controller's URL filled in), the one-line command that
fetches and runs it, and what the script reads back about the package
(``/install/agent.json``). Pure: nothing here blocks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from controller.install.package import REQUIRES_PYTHON, Package

SCRIPT_PATH = Path(__file__).with_name("agent.sh")
PACKAGE_PATH = "/install/packages/"
WHEELS_PATH = "/install/wheels/"
_PLACEHOLDER = b"@OVERCAST_CONTROLLER_URL@"
_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]_-]+")
_SAFE = re.compile(r"[A-Za-z0-9_.:/+=,<>\[\] -]*")


def script(default_url: str) -> bytes:
    """The POSIX sh install script, defaulting to ``default_url`` for --controller."""
    if not _URL.fullmatch(default_url):
        raise ValueError(f"unexpected controller URL {default_url!r}")
    return SCRIPT_PATH.read_bytes().replace(_PLACEHOLDER, default_url.encode())


def command(url: str, token: str, ca_fingerprint: str, own_ca: bool, default_url: str) -> str:
    """The one-line command a user runs on the host (as a user with sudo); options may be
    appended to it (``--user``, ``--name NAME``...). ``--controller`` is named only when the
    host reaches the controller at another URL than the script's default (a tunnel's hub).
    For an https controller whose certificate is from its own CA (``own_ca``), ca.pem is
    fetched without verification and trusted only when its SHA-256 matches the pinned
    fingerprint; the script is then fetched with it and checks the pin again."""
    q = shlex.quote
    args = f"--token {q(token)} --ca-fingerprint sha256:{ca_fingerprint}"
    if url.rstrip("/") != default_url.rstrip("/"):
        args = f"--controller {q(url)} {args}"
    if not (url.startswith("https://") and own_ca):
        return f"curl -fsSL {q(url + '/install/agent.sh')} | sudo sh -s -- {args}"
    inner = (
        "set -e; t=$(mktemp -d); trap \"rm -rf $t\" EXIT; "
        f"curl -fsSLk {url}/ca.pem -o $t/ca.pem; "
        "sed /-----/d $t/ca.pem | tr -d \"\\r\\n\" | base64 -d | sha256sum | "
        f"grep -q ^{ca_fingerprint} || {{ echo the controller CA does not match the fingerprint >&2; exit 4; }}; "
        f"curl -fsSL --cacert $t/ca.pem {url}/install/agent.sh -o $t/agent.sh; "
        f"sudo sh $t/agent.sh {args} \"$@\"")
    return f"sh -c {q(inner)} agent.sh"


def manifest(package: Package, wheels: int) -> dict[str, Any]:
    """What the script and upgrades need to know about the package: paths are relative to
    the controller's URL (the one each host reaches it at)."""
    return {"version": package.version, "package": package.filename,
            "package_url": PACKAGE_PATH + package.filename, "sha256": package.sha256,
            "size": len(package.data), "find_links": WHEELS_PATH, "wheels": wheels,
            "requires_python": REQUIRES_PYTHON}


def shell_answer(values: dict[str, Any]) -> str:
    """``OC_NAME='value'`` lines for the script to source. Raises ValueError when a value has
    a character outside a conservative set (never expected: versions, names, digests)."""
    lines = []
    for k, v in values.items():
        text, name = str(v), f"OC_{k.upper()}"
        if not re.fullmatch(r"OC_[A-Z0-9_]+", name) or not _SAFE.fullmatch(text):
            raise ValueError(f"unsafe value for {name}")
        lines.append(f"{name}='{text}'")
    return "\n".join(lines) + "\n"
