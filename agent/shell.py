"""Interactive shells for the controller (``Command{shell: OpenShell}``).

A shell: a pseudo-terminal sized as asked, the user's login shell (``shell -l``, or
``shell -c COMMAND``) on it in a session of its own as the asked user, and the terminal
relayed as ``ShellData`` both ways until the shell exits (``ShellClosed`` up, with its exit
code: negative for a signal, like Python's returncode) or the controller hangs up
(``ShellClose`` down: SIGHUP to the shell's process group, SIGKILL 2 s later; a job-control
shell passes the SIGHUP on to its jobs). A shell that cannot start is answered by
``ShellClosed`` with ``error``. As over SSH, background jobs still running when the shell
exits of itself are left alone (the terminal is closed under them). ``Command.timeout_s``
does not apply to shells: the controller ends one with ``ShellClose``.

Nothing blocks the loop: the terminal is non-blocking and read only while no send is in
flight (a slow stream slows the shell down instead of filling the agent's memory); input
waits in a bounded buffer while the shell does not read it. Shells belong to the stream
that opened them: the agent closes them all when the stream ends (``close_all``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pty
import signal
import struct
import subprocess
import termios
from collections.abc import Coroutine
from typing import Any

from agent.proc import Refused, RunAs, Send, base_env, run_as, signal_group
from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

MAX_SHELLS = 32
CHUNK = 64 * 1024           # the largest ShellData
HANGUP_GRACE = 2.0          # SIGHUP, then SIGKILL this much later
DRAIN_IDLE = 0.25           # the shell has exited: stop reading once the terminal is this quiet
DRAIN_MAX = 5.0             # ...or after this long (a background job that keeps writing)
INPUT_MAX = 1 << 20         # input waiting for a shell that does not read: the rest is dropped
DEFAULT_TERM = "xterm-256color"


def _take_terminal() -> None:
    """In the child, between fork and exec (after Popen's setsid and user switch): make the
    terminal on its stdin the controlling terminal of its new session, as login_tty(3) does
    (job control and /dev/tty need one). Popen has no option for this, hence a preexec_fn.
    Python warns that one may deadlock in a process with threads, as the child runs Python
    code while locks other threads held at fork time stay taken: this one takes none, it is
    one ioctl. gRPC's fork handlers, which do crash such children, are off (agent.proc)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _login_shell(who: RunAs) -> str:
    """The user's login shell; /bin/sh for the agent's own account when that has none
    (nologin: a service account), as the agent runs scripts as it anyway. Another user's
    nologin is respected, as su(1) does."""
    if not who.switch and os.path.basename(who.shell) in ("nologin", "false"):
        return "/bin/sh"
    return who.shell


def _winsize(cols: int, rows: int) -> bytes:
    return struct.pack("HHHH", min(rows or 24, 0xFFFF), min(cols or 80, 0xFFFF), 0, 0)


class _Session:
    def __init__(self, session_id: str, master: int, slave: int) -> None:
        self.id = session_id
        self.master = master
        self.slave = slave                   # -1 once handed to the shell
        self.pid = 0                         # the shell's, once started (its group's too)
        self.exited = False
        self.hangup_asked = False
        self.stop_reading = False
        self.readable: asyncio.Future[None] | None = None
        self.pending = bytearray()           # input the terminal has not taken yet
        self.writing = False                 # a writer callback is registered
        self.killer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        """Have the reader look again (the shell exited, or reading must stop)."""
        if self.readable is not None and not self.readable.done():
            self.readable.set_result(None)

    def hang_up(self) -> None:
        """SIGHUP the shell's group now, SIGKILL it HANGUP_GRACE later."""
        self.hangup_asked = True
        if not self.pid or self.exited or self.killer is not None:
            return
        signal_group(self.pid, signal.SIGHUP)
        self.killer = asyncio.get_running_loop().call_later(
            HANGUP_GRACE, signal_group, self.pid, signal.SIGKILL)


class Shells:
    """The open shells, by session id, at most ``max_shells``. Each gets exactly one
    ShellClosed through ``send``, which must not block for long (it may drop); its
    exceptions are swallowed."""

    def __init__(self, send: Send, max_shells: int = MAX_SHELLS) -> None:
        self._send = send
        self._max = max_shells
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open_sessions(self) -> list[str]:
        return list(self._sessions)

    def open(self, command_id: str, msg: pb.OpenShell) -> asyncio.Task[None]:
        """Open a shell (session id: ``msg.session_id``, else ``command_id``). Never blocks
        (the terminal is made here, the shell started in the returned task, which ends once
        ShellClosed is sent) and never raises: input may follow at once."""
        sid = msg.session_id or command_id
        refusal = ""
        if sid in self._sessions:
            refusal = f"shell session {sid} is already open"
        elif len(self._sessions) >= self._max:
            refusal = f"too many shells open (at most {self._max})"
        else:
            try:
                master, slave = pty.openpty()
            except OSError as exc:
                refusal = f"cannot open a terminal: {exc}"
        if refusal:
            log.warning("shell %s refused: %s", sid, refusal)
            return self._spawn(self._closed(sid, 0, refusal), sid)
        os.set_blocking(master, False)
        fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(msg.cols, msg.rows))
        s = self._sessions[sid] = _Session(sid, master, slave)
        return self._spawn(self._run(s, msg), sid)

    def data(self, session_id: str, data: bytes) -> None:
        """Keystrokes for a shell, in order; never blocks (they wait while the shell does
        not read, up to INPUT_MAX, past which they are dropped)."""
        s = self._sessions.get(session_id)
        if s is None:
            log.debug("input for shell %s, which is not open: dropped", session_id)
            return
        if len(s.pending) + len(data) > INPUT_MAX:
            log.warning("shell %s does not read its input: %d bytes dropped", session_id, len(data))
            return
        s.pending += data
        self._flush(s)

    def resize(self, session_id: str, cols: int, rows: int) -> None:
        """Set the terminal's size (the kernel sends SIGWINCH to the shell's foreground job)."""
        s = self._sessions.get(session_id)
        if s is not None and s.master >= 0:
            with contextlib.suppress(OSError):  # the terminal went with its shell
                fcntl.ioctl(s.master, termios.TIOCSWINSZ, _winsize(cols, rows))

    def close(self, session_id: str) -> None:
        """Hang up a shell (SIGHUP, SIGKILL 2 s later); its ShellClosed follows when it ends."""
        s = self._sessions.get(session_id)
        if s is not None:
            s.hang_up()

    async def close_all(self) -> None:
        """Hang up every shell and wait until each has ended (seconds at most)."""
        for s in list(self._sessions.values()):
            s.hang_up()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- inside -----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], sid: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"shell-{sid}")
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task

    async def _emit(self, msg: pb.AgentMessage) -> None:
        try:
            await self._send(msg)
        except Exception as exc:  # a broken stream: this message is lost
            log.debug("dropped a %s message: %s", msg.WhichOneof("body"), exc)

    async def _closed(self, sid: str, exit_code: int, error: str = "") -> None:
        await self._emit(pb.AgentMessage(shell_closed=pb.ShellClosed(
            session_id=sid, exit_code=exit_code, error=error)))

    async def _run(self, s: _Session, msg: pb.OpenShell) -> None:
        exit_code, error = 0, ""
        reader: asyncio.Task[None] | None = None
        try:
            who = run_as(msg.user)
            shell = _login_shell(who)
            argv = [shell, "-c", msg.command] if msg.command else [shell, "-l"]
            env = base_env(who) | {"TERM": msg.term or DEFAULT_TERM, "SHELL": shell}
            if who.switch:  # as login(1) does: the user's terminal is the user's
                os.fchown(s.slave, who.uid, -1)
                os.fchmod(s.slave, 0o620)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=s.slave, stdout=s.slave, stderr=s.slave, cwd=who.workdir(),
                    env=env, start_new_session=True, preexec_fn=_take_terminal,
                    **who.popen_kwargs())
            except (OSError, subprocess.SubprocessError) as exc:
                raise Refused(f"cannot start {argv[0]}: {getattr(exc, 'strerror', None) or exc}") from None
            # the shell holds the terminal now: once it (and its children) let go, reading
            # the master ends in EIO
            os.close(s.slave)
            s.slave = -1
            s.pid = proc.pid
            log.info("shell %s: %s started as %s (pid %d)", s.id, argv[0], who.name, proc.pid)
            if s.hangup_asked:
                s.hang_up()
            reader = asyncio.create_task(self._relay(s))
            exit_code = await proc.wait()
            s.exited = True
            if s.killer is not None:
                s.killer.cancel()
            # what it wrote is still in the terminal: read on while it comes
            s.wake()
            _, pending = await asyncio.wait({reader}, timeout=DRAIN_MAX)
            if pending:
                s.stop_reading = True
                s.wake()
            await reader
            log.info("shell %s: ended (exit %d)", s.id, exit_code)
        except Refused as exc:
            error = str(exc)
            log.warning("shell %s not started: %s", s.id, exc)
        except asyncio.CancelledError:  # the loop is stopping: leave nothing running
            if s.pid and not s.exited:
                signal_group(s.pid, signal.SIGKILL)
            raise
        except Exception as exc:
            error = f"the agent could not run the shell: {exc}"
            log.exception("shell %s failed", s.id)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()  # only when this task itself is cancelled
            self._release(s)
            await self._closed(s.id, exit_code, error)

    def _release(self, s: _Session) -> None:
        self._sessions.pop(s.id, None)
        loop = asyncio.get_running_loop()
        if s.writing:
            loop.remove_writer(s.master)
            s.writing = False
        for fd in (s.master, s.slave):
            if fd >= 0:
                os.close(fd)
        s.master = s.slave = -1
        s.pending.clear()

    async def _relay(self, s: _Session) -> None:
        """Terminal output up, one chunk at a time: the next read waits for the send."""
        while data := await self._read(s):
            await self._emit(pb.AgentMessage(shell_data=pb.ShellData(session_id=s.id, data=data)))

    async def _read(self, s: _Session) -> bytes:
        """The terminal's next output; b"" at its end: every process let go of it (EIO), or,
        once the shell has exited, nothing came for DRAIN_IDLE, or stop_reading."""
        loop = asyncio.get_running_loop()
        while not s.stop_reading:
            try:
                data = os.read(s.master, CHUNK)
            except BlockingIOError:
                pass
            except OSError:  # EIO: no process holds the terminal any more
                return b""
            else:
                # a terminal gives a few KiB a read: take what is there now up to CHUNK, so
                # bulk output (cat of a big file) goes up in 64 KiB messages, not 4 KiB ones
                buf = bytearray(data)
                while data and len(buf) < CHUNK:
                    try:
                        data = os.read(s.master, CHUNK - len(buf))
                    except OSError:  # nothing more now (or EIO: the next read says so)
                        break
                    buf += data
                return bytes(buf)
            s.readable = loop.create_future()
            loop.add_reader(s.master, s.wake)
            try:
                await asyncio.wait_for(s.readable, DRAIN_IDLE if s.exited else None)
            except TimeoutError:
                return b""
            finally:
                loop.remove_reader(s.master)
                s.readable = None
        return b""

    def _flush(self, s: _Session) -> None:
        """Write pending input as far as the terminal takes it; the rest when it is writable."""
        while s.pending and s.master >= 0:
            try:
                n = os.write(s.master, s.pending)
            except BlockingIOError:
                break
            except OSError:  # the terminal is gone with the shell: nobody reads it
                s.pending.clear()
                break
            del s.pending[:n]
        loop = asyncio.get_running_loop()
        if s.pending and not s.writing:
            loop.add_writer(s.master, self._flush, s)
            s.writing = True
        elif not s.pending and s.writing:
            loop.remove_writer(s.master)
            s.writing = False
