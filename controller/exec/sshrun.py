"""The SSH script runner: ``run`` uploads a payload into a private temporary directory on the
target and runs it there (an Ansible payload goes to :mod:`controller.exec.ansible`).

Nothing here blocks: a run is on the event loop on its own connection, closed before it
returns (only reading an archive's entrypoint goes to a thread). ``run`` never raises for the
target's sake: what went wrong is ``RunResult.error``, in words; the helpers raise ValueError
for a payload that cannot run, ``bounded`` TimeoutError or Stop. Environment values are never
logged nor put in errors.

A run: connect (``target.connect_timeout``), then, within ``payload.timeout``, upload into a
private ``mktemp -d`` directory, start the program in its own process group through a small
POSIX sh wrapper (environment read from stdin, never from a file or the command line), stream
its output, and at the end kill the group (a timeout, a cancel, or what a finished script
left running) and remove the directory. A script killed by a signal exits 128+n, as in sh."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
import secrets
import shlex
import tarfile
from collections.abc import Coroutine
from pathlib import PurePosixPath
from typing import Any, TypeVar

import asyncssh

from controller.clouds.providers.errors import clean
from controller.exec.model import OutputSink, Payload, RunResult, SshTarget
from controller.exec.ssh import close, connect, reason

log = logging.getLogger(__name__)
T = TypeVar("T")

DRAIN = 5.0           # seconds to wait for the rest of the output once the script ended
CLEANUP_TIMEOUT = 20.0  # seconds for the last kill and removing the run's directory
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_entrypoint(entrypoint: str) -> str:
    """The entrypoint as a normalised relative path; ValueError if it leaves the archive."""
    path = PurePosixPath(entrypoint)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\n" in entrypoint:
        raise ValueError(f"the entrypoint {entrypoint!r} must be a relative path inside the "
                         "archive")
    return str(path)


@functools.lru_cache(maxsize=4)  # one payload runs on many targets
def _archive_head(content: bytes, entrypoint: str) -> bytes:
    """The first bytes of the archive's entrypoint; ValueError if absent or unreadable."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            for member in tar:
                if member.isfile() and PurePosixPath(member.name) == PurePosixPath(entrypoint):
                    f = tar.extractfile(member)
                    return f.read(2) if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, ValueError):
        raise ValueError("the archive cannot be read (expected a gzip'd tar)") from None
    raise ValueError(f"the archive has no file {entrypoint}")


def env_name_ok(name: str) -> bool:
    return bool(_ENV_NAME.match(name))


def env_file(env: dict[str, str]) -> bytes:
    """``env`` as sh assignments, one a line, values quoted; ValueError naming a bad name."""
    for name, value in env.items():
        if not env_name_ok(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte")
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode()


def program(payload: Payload) -> tuple[str, list[str]]:
    """The file the payload's content becomes (relative to the run's directory) and the
    argv that runs it, without the payload's args; ValueError when it cannot run."""
    if payload.entrypoint:
        name = check_entrypoint(payload.entrypoint)
        head = _archive_head(payload.content, name)
    else:
        name, head = "script", payload.content[:2]
    try:
        prefix = shlex.split(payload.interpreter)
    except ValueError:
        raise ValueError(f"the interpreter {payload.interpreter!r} is not valid") from None
    if not prefix and not head.startswith(b"#!"):
        prefix = ["/bin/sh"]  # no #! line: sh, as execvp would
    return name, [*prefix, f"./{name}"]


# The run's wrapper, as sh -c OUTER INNER ENV ARGV...: OUTER reads the environment from
# stdin when ENV is "env" (never a file, never an argument: ps shows those), then starts INNER
# in a new session (setsid: its own process group, so a timeout kills what the script started
# too). The subshell makes setsid's caller not a group leader, so setsid does not fork and
# exit early. Without setsid, INNER runs as it is ("p": only its pid can be killed). INNER
# writes the marker line (pid and mode) to stderr, then execs the program.
_OUTER = ('if [ "$1" = env ]; then __overcast_env=$(cat) || exit 125; set -a; '
          'eval "$__overcast_env" || exit 125; set +a; unset __overcast_env; fi; shift; '
          'if command -v setsid >/dev/null 2>&1; then (exec setsid sh -c "$0" overcast g "$@"); '
          'else (exec sh -c "$0" overcast p "$@"); fi')
_INNER = 'printf "%s %s %s\\n" {token} $$ "$1" >&2; shift; exec "$@"'


def new_token() -> str:
    """A marker no real output can predict."""
    return f"OVERCAST-PID-{secrets.token_hex(12)}"


def sudo(target: SshTarget, payload: Payload) -> str:
    """The prefix that makes a command run as root: "sudo -n " unless the login is root."""
    return "sudo -n " if payload.su and target.user != "root" else ""


def run_command_line(target: SshTarget, payload: Payload, workdir: str, argv: list[str],
                     token: str, with_env: bool) -> str:
    """What the login shell runs to start the payload in ``workdir`` (all of it quoted)."""
    words = ["sh", "-c", _OUTER, _INNER.format(token=token), "env" if with_env else "-",
             *argv, *payload.args]
    return (f"cd {shlex.quote(workdir)} && exec {sudo(target, payload)}"
            + " ".join(shlex.quote(w) for w in words))


def kill_script(pid: int, group: bool, grace: int = 2) -> str:
    """sh that sends TERM to the process group (or only the pid), then KILL after ``grace``
    seconds if anything is left. dash's kill needs "--" before -PGID, busybox's refuses it."""
    who = f"-{pid}" if group else str(pid)
    return ('k() { kill -s "$1" -- "$2" 2>/dev/null || kill -s "$1" "$2" 2>/dev/null; }; '
            f'k TERM {who} || exit 0; i=0; while [ $i -lt {grace * 10} ] && k 0 {who}; do '
            'if sleep 0.1 2>/dev/null; then i=$((i + 1)); else sleep 1; i=$((i + 10)); fi; '
            f'done; k KILL {who}; exit 0')


class LimitedOutput:
    """Passes output on to a sink until ``limit`` bytes were kept; counts all of it."""

    def __init__(self, sink: OutputSink, limit: int) -> None:
        self.sink, self.limit = sink, limit
        self.kept = self.total = 0

    def feed(self, stream: str, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.kept
        if room > 0 and data:
            part = data[:room]
            self.kept += len(part)
            self.sink.output(stream, part)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept


class Stop(Exception):
    """The run was cancelled."""


async def bounded(coro: Coroutine[Any, Any, T], cancel: asyncio.Event | None,
                  deadline: float) -> T:
    """``coro``'s result; TimeoutError at ``deadline`` (loop time), Stop once ``cancel`` is
    set (``coro`` is cancelled then)."""
    task = asyncio.ensure_future(coro)
    stop = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    try:
        await asyncio.wait({task} if stop is None else {task, stop},
                           timeout=max(0.0, deadline - asyncio.get_running_loop().time()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stop is not None:
            stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        return task.result()
    if cancel is not None and cancel.is_set():
        raise Stop()
    raise TimeoutError()


class _Session(asyncssh.SSHClientSession[bytes]):
    """The run's channel: output goes to ``out``, except the wrapper's marker line."""

    def __init__(self, out: LimitedOutput, token: str) -> None:
        self.out, self.token = out, token
        self.marker = re.compile(rb"(?:^|\n)" + token.encode() + rb" (\d+) ([gp])\n")
        self.searching = True
        self.early = b""              # stderr before the marker: sudo's complaint, say
        self.pid: int | None = None
        self.group = False            # pid is a process group's
        self.started = asyncio.Event()  # the marker came: pid is known
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()
        self.lost: Exception | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype != asyncssh.EXTENDED_DATA_STDERR:
            self.out.feed("stdout", data)
            return
        if self.searching:
            data = self._find_marker(self.early + data)
        if data:
            self.out.feed("stderr", data)

    def _find_marker(self, buf: bytes) -> bytes:
        m = self.marker.search(buf)
        if m is None and len(buf) <= 65536:
            self.early = buf
            return b""
        self.searching = False
        if m is None:
            return buf
        self.pid, self.group = int(m[1]), m[2] == b"g"
        self.started.set()
        start = m.start() + (buf[m.start():m.start() + 1] == b"\n")
        self.early = buf[:start]
        return buf[:start] + buf[m.end():]

    def exit_status_received(self, status: int) -> None:
        self.exited.set()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str,
                             lang: str) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.searching and self.early:
            self.out.feed("stderr", self.early)
        self.searching, self.lost = False, exc
        self.exited.set()
        self.closed.set()


class _Failed(Exception):
    """The run could not be set up; the message says why."""


def _said(r: asyncssh.SSHCompletedProcess) -> str:
    err = r.stderr if isinstance(r.stderr, bytes) else b""
    return clean(err.decode(errors="replace").strip()[:200] or f"exit code {r.returncode}")


async def _stage(conn: asyncssh.SSHClientConnection, payload: Payload, name: str,
                 made: list[str]) -> None:
    """Make the run's private directory (appended to ``made`` as soon as it exists) and
    upload the content into it, in one session."""
    put = ('tar -xozf - && test -f "$1"' if payload.entrypoint else 'cat > "$1"')
    stage = f'd=$(mktemp -d) || exit 1; echo "$d"; cd "$d" && {put} && chmod 700 "$1"'
    r = await conn.run(f"sh -c {shlex.quote(stage)} sh {shlex.quote(name)}",
                       input=payload.content, encoding=None, check=False)
    out = r.stdout.decode(errors="replace") if isinstance(r.stdout, bytes) else ""
    path = out.partition("\n")[0]
    if path.startswith("/") and path != "/" and out.endswith("\n"):
        made.append(path)
    if not made:
        raise _Failed(f"cannot make a temporary directory: {_said(r)}")
    if r.returncode != 0:
        raise _Failed(f"uploading the {'archive' if payload.entrypoint else 'script'} "
                      f"failed: {_said(r)}")


def _not_started(target: SshTarget, payload: Payload, session: _Session,
                 code: int | None) -> str:
    early = session.early.lower()
    if sudo(target, payload) and b"password" in early:
        return f"sudo needs a password for {target.user}"
    if sudo(target, payload) and re.search(rb"sudo:.*not found", early):
        return "sudo is not installed on the target"
    return f"the script did not start (exit code {code})"


async def _execute(conn: asyncssh.SSHClientConnection, target: SshTarget, payload: Payload,
                   sink: OutputSink, cancel: asyncio.Event | None, name: str,
                   argv: list[str], env: bytes) -> RunResult:
    """Stage, run, wait, kill what is left and remove the directory (whatever happened)."""
    out, result, made = LimitedOutput(sink, payload.max_output), RunResult(), list[str]()
    deadline = asyncio.get_running_loop().time() + payload.timeout
    session = _Session(out, new_token())
    chan: asyncssh.SSHClientChannel[bytes] | None = None
    try:
        await bounded(_stage(conn, payload, name, made), cancel, deadline)
        command = run_command_line(target, payload, made[0], argv, session.token, bool(env))
        chan, _ = await conn.create_session(lambda: session, command, encoding=None)
        if env:
            chan.write(env)
        chan.write_eof()
        await bounded(session.exited.wait(), cancel, deadline)
        if session.lost is not None:
            result.error = reason(session.lost)[0]
        else:
            result.exit_code = chan.get_returncode()
            if session.pid is None and result.exit_code != 0:
                result.error = _not_started(target, payload, session, result.exit_code)
    except TimeoutError:
        result.timed_out, result.error = True, f"timed out after {payload.timeout:g}s"
    except Stop:
        result.cancelled, result.error = True, "cancelled"
    except _Failed as exc:
        result.error = str(exc)
    except (OSError, asyncssh.Error) as exc:
        result.error = reason(exc, target)[0]
    finally:
        await _finish(conn, target, payload, session, chan, made,
                      running=not session.exited.is_set())
    result.truncated, result.output_bytes = out.truncated, out.total
    log.debug("ssh run on %s ended: exit %s, %s", target.label, result.exit_code,
              result.error or "ok")
    return result


async def _finish(conn: asyncssh.SSHClientConnection, target: SshTarget, payload: Payload,
                  session: _Session, chan: asyncssh.SSHClientChannel[bytes] | None,
                  made: list[str], running: bool) -> None:
    """Kill the run's process group (after a normal exit: whatever it left running), remove
    its directory, let the output drain. Best effort, bounded, never raises."""
    if running and chan is not None and session.pid is None:  # stopped as it started
        waits = {asyncio.ensure_future(e.wait()) for e in (session.started, session.closed)}
        await asyncio.wait(waits, timeout=DRAIN, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    parts = []
    if session.pid is not None and (session.group or running):
        parts.append(f"({kill_script(session.pid, session.group)})")
    if made:
        parts.append(f"rm -rf -- {shlex.quote(made[0])}")
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            if parts and session.lost is None:
                await conn.run(sudo(target, payload) + "sh -c " + shlex.quote("; ".join(parts)),
                               check=False)
            if chan is not None:
                await asyncio.wait_for(session.closed.wait(), DRAIN)
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        log.info("ssh run on %s: cleanup incomplete (%s)", target.label, reason(exc)[0])
    if chan is not None:
        chan.close()


async def run(target: SshTarget, payload: Payload, sink: OutputSink,
              cancel: asyncio.Event | None = None) -> RunResult:
    """Run ``payload`` on ``target`` (an Ansible payload: from the controller against it),
    streaming output to ``sink``. Returns when the run has ended and its temporary files
    are removed; never raises for the target's sake (see RunResult.error)."""
    if not payload.verify():
        return RunResult(error="the payload does not match its sha256; refused")
    if cancel is not None and cancel.is_set():
        return RunResult(cancelled=True, error="cancelled")
    if payload.ansible:
        from controller.exec import ansible  # ansible imports this module

        return await ansible.run_playbook(target, payload, sink, cancel)
    try:
        if payload.entrypoint:  # reading the archive may take a while: not on the loop
            name, argv = await asyncio.to_thread(program, payload)
        else:
            name, argv = program(payload)
        env = env_file(payload.env)
    except ValueError as exc:
        return RunResult(error=str(exc))
    try:
        conn = await connect(target, keepalive=True)
    except Exception as exc:  # a target's failure is the result, in words
        words, _ = reason(exc, target)
        log.info("ssh run on %s: %s", target.label, words)
        return RunResult(error=words)
    try:
        return await _execute(conn, target, payload, sink, cancel, name, argv, env)
    finally:
        await close(conn)
