"""Connecting over SSH (asyncssh) with a pinned or first-seen host key, mapping failures to
domain errors, short commands and interactive shells, for machines without an agent.

Nothing here blocks: every call runs on the event loop and opens its own connection, closed
before it returns (a shell's by its ``close()``). ``open_shell`` and ``run_command`` raise
:func:`connect_error`'s errors: Invalid (unreadable key or pin), ProviderAuthError (key
refused), ProviderError (host key mismatch, SSH failure), ProviderUnavailable (refused, timed
out, unknown host). ``connect`` raises Invalid, HostKeyMismatch or asyncssh's/the socket's own
errors, for :func:`connect_error` or :func:`reason` to map. Private keys are never logged nor
put in errors.

Host keys: with ``SshTarget.host_key`` the host must offer that key (or one with that
fingerprint); without it the key offered is accepted (trust on first use is the caller's).
No ~/.ssh file, ssh config or agent of the controller is read, and nothing is forwarded.

The script runner lives in :mod:`controller.exec.sshrun` and the authorized_keys scripts in
:mod:`controller.exec.authkeys`; ``run``, ``authorize_script``, ``revoke_script`` and
``parse_public_key`` stay callable from here (``run`` imported when called: sshrun imports
this module)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import asyncssh

from controller.clouds.providers.errors import clean
from controller.errors import (
    Invalid,
    OvercastError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)
from controller.exec.authkeys import authorize_script as authorize_script
from controller.exec.authkeys import parse_public_key as parse_public_key
from controller.exec.authkeys import revoke_script as revoke_script
from controller.exec.model import OutputSink, Payload, RunResult, SshTarget

log = logging.getLogger(__name__)

KEEPALIVE = 30.0      # seconds between keepalives; three unanswered = the connection is lost


# ---- connecting ---------------------------------------------------------------------------
class HostKeyMismatch(Exception):
    """The host offered a key other than the pinned one (``fingerprint`` is what it offered)."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"host key mismatch (it offered {fingerprint})")
        self.fingerprint = fingerprint


@dataclass
class Pin:
    """A pinned host key: a public key, or only its fingerprint."""

    key: asyncssh.SSHKey | None = None
    fingerprint: str = ""

    def matches(self, offered: asyncssh.SSHKey) -> bool:
        if self.key is not None:
            return bool(offered.public_data == self.key.public_data)
        algo, _, want = self.fingerprint.partition(":")
        if algo.upper() == "MD5":  # "MD5:aa:bb:..", hex in either case
            return offered.get_fingerprint("md5").partition(":")[2].lower() == want.lower()
        seen = offered.get_fingerprint("sha256").partition(":")[2]
        return seen.rstrip("=") == want.rstrip("=")  # base64: case matters, padding may not


class PinningClient(asyncssh.SSHClient):
    """Checks the host key against the pin (any key without one) and keeps the key seen."""

    def __init__(self, pin: Pin | None) -> None:
        self.pin = pin
        self.seen: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.seen = key
        return self.pin is None or self.pin.matches(key)


def parse_pin(host_key: str) -> Pin | None:
    """``host_key`` as a pin: a known_hosts line, "type base64", or "SHA256:"/"MD5:" text."""
    text = host_key.strip()
    if not text:
        return None
    if text.upper().startswith(("SHA256:", "MD5:")):
        return Pin(fingerprint=text)
    words = text.split()  # "[host]:port type base64 comment", "type base64", ...
    for i in range(len(words) - 1):
        try:
            return Pin(key=asyncssh.import_public_key(f"{words[i]} {words[i + 1]}"))
        except (asyncssh.KeyImportError, ValueError):
            continue
    raise Invalid("host_key is neither a known_hosts line nor an SHA256:/MD5: fingerprint",
                  field="host_key")


def client_key(private_key: str) -> asyncssh.SSHKey:
    """The private key; :class:`Invalid` (never quoting it) when it cannot be read."""
    if not private_key.strip():
        raise Invalid("no private key to log in with", field="key")
    try:
        return asyncssh.import_private_key(private_key)
    except asyncssh.KeyEncryptionError:
        why = "cannot be decrypted"
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        why = ("is encrypted with a passphrase, which is not supported"
               if "passphrase" in str(exc).lower() else "is not a valid private key")
    raise Invalid(f"the key {why} (expected an unencrypted OpenSSH or PEM private key)",
                  field="key")


async def connect(target: SshTarget,
                  keepalive: bool = False) -> asyncssh.SSHClientConnection:
    """An authenticated connection, bounded by ``target.connect_timeout``; the caller closes
    it. Raises Invalid, HostKeyMismatch, or asyncssh's/the socket's own errors: map those
    with :func:`connect_error` (or :func:`reason` for words)."""
    key, client = client_key(target.private_key), PinningClient(parse_pin(target.host_key))

    def factory() -> asyncssh.SSHClient:
        return client

    try:
        async with asyncio.timeout(target.connect_timeout):
            conn: asyncssh.SSHClientConnection = await asyncssh.connect(
                target.host, target.port, username=target.user, client_factory=factory,
                client_keys=[key], known_hosts=([], [], []),  # empty: every key goes to PinningClient
                config=None, agent_path=None, agent_forwarding=False, password=None,
                preferred_auth="publickey", gss_host=None, x11_forwarding=False,
                connect_timeout=target.connect_timeout, login_timeout=target.connect_timeout,
                keepalive_interval=KEEPALIVE if keepalive else 0, keepalive_count_max=3)
            return conn
    except asyncssh.HostKeyNotVerifiable:
        seen = client.seen
        raise HostKeyMismatch(seen.get_fingerprint("sha256") if seen else "no key") from None


async def close(conn: asyncssh.SSHClientConnection, wait: float = 5.0) -> None:
    """Close ``conn`` and wait (bounded) until it is."""
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), wait)
    except (TimeoutError, OSError, asyncssh.Error):
        pass


def reason(exc: BaseException,
           target: SshTarget | None = None) -> tuple[str, type[OvercastError]]:
    """Why a connection (or a session on it) failed, in words, and the error it stands for."""
    user = f" (user {target.user})" if target is not None else ""
    if isinstance(exc, Invalid):
        return exc.message, Invalid
    if isinstance(exc, HostKeyMismatch):
        return str(exc), ProviderError
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host key mismatch", ProviderError
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"key refused{user}", ProviderAuthError
    if isinstance(exc, TimeoutError):
        return "timed out", ProviderUnavailable
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", ProviderUnavailable
    if isinstance(exc, (asyncssh.ConnectionLost, ConnectionResetError, BrokenPipeError)):
        return "connection lost", ProviderUnavailable
    if isinstance(exc, socket.gaierror):
        return "unknown host name", ProviderUnavailable
    if isinstance(exc, OSError):
        return clean(exc.strerror or exc).lower(), ProviderUnavailable
    if isinstance(exc, asyncssh.ChannelOpenError):
        return f"the host refused a session: {clean(exc.reason)}", ProviderError
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh failed: {clean(exc.reason)}", ProviderError
    return f"failed: {clean(type(exc).__name__)}", ProviderError


def connect_error(exc: BaseException, target: SshTarget | None = None) -> OvercastError:
    """The domain error for a failure to connect (or to open a session), naming the target."""
    if isinstance(exc, OvercastError):
        return exc
    words, kind = reason(exc, target)
    if target is None:
        return kind(words)
    return kind(f"{target.label}: {words}", {"host": target.label})


# ---- a shell, a command --------------------------------------------------------------------
class SshShell:
    """A shell on a pseudo-terminal over SSH (implements controller.exec.model.ShellChannel).
    Output is read from the channel only when ``read`` is awaited: SSH's window holds the
    host back meanwhile, so nothing is buffered without bound. ``close`` closes the
    connection too."""

    def __init__(self, conn: asyncssh.SSHClientConnection,
                 proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self._conn, self._proc = conn, proc
        self._ended = self._closed = False
        self._error = ""

    async def read(self) -> bytes | None:
        if self._ended or self._closed:
            return None
        try:
            data = await self._proc.stdout.read(65536)
        except Exception as exc:  # the connection broke: the shell has ended
            self._error = reason(exc)[0]
            data = b""
        if data:
            return data
        self._ended = True
        try:  # the exit status may follow the end of output
            await asyncio.wait_for(self._proc.wait_closed(), 5)
        except (TimeoutError, OSError, asyncssh.Error):
            pass
        await close(self._conn)  # the session is over; close() stays harmless
        return None

    def write(self, data: bytes) -> None:
        if not (self._closed or self._ended):
            try:
                self._proc.stdin.write(data)
            except (OSError, asyncssh.Error) as exc:
                self._error = self._error or reason(exc)[0]

    def resize(self, cols: int, rows: int) -> None:
        if not (self._closed or self._ended):
            try:
                self._proc.change_terminal_size(cols, rows)
            except (OSError, asyncssh.Error):
                pass

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._proc.close()  # the host hangs up the terminal: the shell gets SIGHUP
        await close(self._conn)

    @property
    def exit_code(self) -> int | None:
        code: int | None = self._proc.returncode  # a signal: its negative number
        return code

    @property
    def error(self) -> str:
        return self._error


async def open_shell(target: SshTarget, term: str, cols: int, rows: int,
                     command: str = "") -> SshShell:
    """An interactive session on a pseudo-terminal: ``command``, or the login shell when "".
    Raises :func:`connect_error`'s errors when it cannot connect or open the session."""
    try:
        conn = await connect(target, keepalive=True)
    except Exception as exc:
        raise connect_error(exc, target) from None
    try:
        proc: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
            command or None, term_type=term or "xterm", term_size=(cols, rows),
            encoding=None, stderr=asyncssh.STDOUT)
    except Exception as exc:
        conn.close()
        raise connect_error(exc, target) from None
    return SshShell(conn, proc)


async def run_command(target: SshTarget, command: str, input: bytes = b"",
                      timeout: float = 30) -> tuple[int | None, bytes, bytes]:
    """Run one short ``command`` through the login shell; (exit code, stdout, stderr), a
    signal as its negative number. ``timeout`` bounds it all, connecting included; raises
    :func:`connect_error`'s errors (ProviderUnavailable "timed out" for the timeout)."""
    try:
        async with asyncio.timeout(timeout):
            async with await connect(target) as conn:
                r = await conn.run(command, input=input, encoding=None, check=False)
    except Exception as exc:
        raise connect_error(exc, target) from None
    out, err = r.stdout, r.stderr
    return (r.returncode, out if isinstance(out, bytes) else b"",
            err if isinstance(err, bytes) else b"")


# ---- the script runner ---------------------------------------------------------------------
async def run(target: SshTarget, payload: Payload, sink: OutputSink,
              cancel: asyncio.Event | None = None) -> RunResult:
    """:func:`controller.exec.sshrun.run`: run ``payload`` on ``target``, streaming output to
    ``sink``; never raises for the target's sake (see RunResult.error)."""
    from controller.exec import sshrun  # sshrun imports this module

    return await sshrun.run(target, payload, sink, cancel)
