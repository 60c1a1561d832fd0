"""What the parts of execution share: what to run (:class:`Payload`), where output goes
(:class:`OutputSink`), how a run ended (:class:`RunResult`), how to reach a host over SSH
(:class:`SshTarget`), and a live interactive shell (:class:`ShellChannel`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_TIMEOUT = 600.0          # seconds a run may take unless the request says otherwise
MAX_TIMEOUT = 86_400.0
DEFAULT_MAX_OUTPUT = 1 << 20     # bytes of output kept per target; the rest is counted only
TRUNCATED_MARKER = b"\n[overcast: output truncated]\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Payload:
    """What to run on a target.

    ``content`` is the script itself (a file with a ``#!`` line, or shell text when
    ``interpreter`` is set), or, when ``entrypoint`` is set, a gzip'd tar archive that is
    unpacked into a private temporary directory where ``entrypoint`` is run. ``ansible``:
    the file (or entrypoint) is an Ansible playbook run against the target. ``sha256`` is the
    hex digest of ``content`` as stored: every runner checks it before running."""

    content: bytes
    sha256: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)  # values may be secrets
    interpreter: str = ""        # e.g. "/bin/sh" for ad-hoc commands; "" = run the file
    entrypoint: str = ""
    ansible: bool = False
    su: bool = False             # run as root (sudo -n when the login user is not root)
    user: str = ""               # agent hosts: run as this user ("" = the agent's own)
    timeout: float = DEFAULT_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT

    def verify(self) -> bool:
        return sha256_hex(self.content) == self.sha256


class OutputSink(Protocol):
    """Receives a run's output as it comes: ``stream`` is "stdout" or "stderr"."""

    def output(self, stream: str, data: bytes) -> None: ...


@dataclass
class RunResult:
    exit_code: int | None = None  # None: no exit code (never started, killed by a signal...)
    error: str = ""               # why it could not run or finish, in words ("" = it ran)
    timed_out: bool = False
    cancelled: bool = False
    truncated: bool = False       # output past Payload.max_output was dropped (counted)
    output_bytes: int = 0         # all output the target produced, kept or not


@dataclass(frozen=True)
class SshTarget:
    """How to reach a host over SSH. ``private_key`` is OpenSSH/PEM text (never logged);
    ``host_key`` a pinned known_hosts line or "SHA256:..." fingerprint ("" = accept the key
    offered: trust on first use is the caller's business)."""

    host: str
    port: int = 22
    user: str = "root"
    private_key: str = field(default="", repr=False)
    host_key: str = ""
    connect_timeout: float = 15.0

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


class ShellChannel(Protocol):
    """One interactive shell on a pseudo-terminal (relayed by an agent or over SSH)."""

    async def read(self) -> bytes | None:
        """The next output bytes; None once the shell has ended (see exit_code, error)."""

    def write(self, data: bytes) -> None:
        """Send keystrokes (never blocks; ordered)."""

    def resize(self, cols: int, rows: int) -> None: ...

    async def close(self) -> None:
        """End the shell (hang up) if it still runs; idempotent."""

    @property
    def exit_code(self) -> int | None: ...

    @property
    def error(self) -> str: ...
