"""Run the controller's scripts on this host (``Command{run: RunScript}``).

A run: check the content against its SHA-256 (else nothing runs), write it (or unpack its
.tar.gz) into a private temporary directory, start it in a session of its own as the asked
user with a minimal environment, send ``CommandStarted``, stream stdout and stderr up as
``CommandOutput`` (at most ``max_output_bytes``; the rest is read, counted and dropped), end
with one ``CommandResult``. A timeout or a cancel kills the process group (SIGTERM, SIGKILL
2 s later); when the script exits, what it left in its group is killed, and pipes held by
processes that left the group stop being read: nothing keeps a run open. The directory is
removed before the result is sent. One asyncio task per run; file work in a worker thread.

Disconnects: runs go on. ``send`` (from agent.control) puts a message on whichever stream is
current when it is sent (after a reconnect, the new one) and drops it while there is none:
the controller may get a run's result on a later stream, or never. :meth:`Executor.close`
(the agent stopping) kills every run. Who runs and with what environment: agent.proc."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile

from agent.proc import PATH, Refused, RunAs, Send, base_env, run_as, signal_group
from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

MAX_RUNNING = 64
DEFAULT_MAX_OUTPUT = 1 << 20      # as the controller's default (controller/exec/model.py)
CHUNK = 64 * 1024                 # the largest CommandOutput
QUEUE_HIGH = 256 * 1024           # output waiting to be sent: past it the pipes stop being read
KILL_GRACE = 2.0                  # SIGTERM, then SIGKILL this much later
PIPE_GRACE = 2.0                  # the group is dead: pipes still open after this are let go
REAP_LIMIT = 10.0                 # after SIGKILL (a process stuck in the kernel never dies)
MAX_UNPACKED = 1 << 30            # an archive unpacking to more is refused (a gzip bomb)
ANSIBLE_TMP = ".ansible-tmp"     # in a run's directory


# ---- the files a run needs --------------------------------------------------------------

def prepare(script: pb.RunScript, who: RunAs, ansible: str) -> tuple[str, list[str], str]:
    """Blocking: write or unpack ``script`` into a new private directory; (the directory,
    the command line, the working directory). Raises Refused; the caller removes the
    directory."""
    directory = tempfile.mkdtemp(prefix="overcast-run-")  # 0700
    try:
        if script.entrypoint:
            path = _unpack(script.content, directory, script.entrypoint)
            cwd = directory
        else:
            path = os.path.join(directory, "playbook.yml" if script.ansible else "script")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "wb") as f:
                f.write(script.content)
            cwd = who.workdir()  # as over SSH: where a login would start
        if script.ansible:
            os.mkdir(os.path.join(directory, ANSIBLE_TMP), 0o700)
        if who.switch:
            for root, dirs, files in os.walk(directory):
                for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.chown(name, who.uid, who.gid, follow_symlinks=False)
        return directory, _command_line(script, path, ansible), cwd
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _unpack(content: bytes, directory: str, entrypoint: str) -> str:
    # here, not at the top: tarfile brings bz2 and lzma, and the agent stays small (agent.main)
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            if sum(m.size for m in tar.getmembers()) > MAX_UNPACKED:
                raise Refused(f"the archive unpacks to more than {MAX_UNPACKED >> 20} MiB")
            # "data": no absolute paths, nothing outside the directory, no devices or
            # links out, no setuid bits
            tar.extractall(directory, filter="data")
    except tarfile.FilterError as exc:
        raise Refused(f"the archive is refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:  # gzip's errors are OSError and EOFError
        raise Refused(f"the archive cannot be unpacked: {exc}") from None
    top = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(top, entrypoint))
    if os.path.isabs(entrypoint) or not path.startswith(top + os.sep) or not os.path.isfile(path):
        raise Refused(f"the archive has no file {entrypoint!r} to run")
    os.chmod(path, os.stat(path).st_mode | 0o500)
    return path


def _command_line(script: pb.RunScript, path: str, ansible: str) -> list[str]:
    if script.ansible:
        return [ansible, "-i", "localhost,", "-c", "local", path, *script.args]
    if script.interpreter:
        return [script.interpreter, path, *script.args]
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"#!") or head == b"\x7fELF":
        return [path, *script.args]
    # no #! line: execve refuses it; shells (and execvp) run such a file with /bin/sh
    return ["/bin/sh", path, *script.args]


# ---- one run --------------------------------------------------------------------------------

class _Run:
    def __init__(self) -> None:
        self.stop_asked = asyncio.Event()
        self.cancelled = False
        self.timed_out = False

    def stop(self, *, cancelled: bool = False, timed_out: bool = False) -> None:
        if not self.stop_asked.is_set():  # the first reason wins
            self.cancelled, self.timed_out = cancelled, timed_out
            self.stop_asked.set()


class _Output(asyncio.SubprocessProtocol):
    """A run's output on its way up: at most ``limit`` bytes kept (the rest counted and
    dropped, still read so the process never blocks on a full pipe); the pipes pause while
    more than QUEUE_HIGH bytes wait, so a slow stream slows the process, not the agent's
    memory. Also says when the process has exited, which asyncio's Process.wait() does not
    while a pipe is still open (a background child holds it)."""

    def __init__(self, command_id: str, limit: int) -> None:
        self.command_id = command_id
        self.limit = limit
        self.total = 0               # all output the process produced
        self.kept = 0
        self.truncated = False
        self.exited = asyncio.Event()
        self.pipes_closed = asyncio.Event()
        self._open_pipes = 2
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued = 0
        self._paused = False
        self._more = asyncio.Event()
        self._finished = False
        self._transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.total += len(data)
        room = self.limit - self.kept
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        if not data:
            return
        self.kept += len(data)
        self._queue.append((fd, data))
        self._queued += len(data)
        self._more.set()
        if self._queued > QUEUE_HIGH:
            self._pause(True)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes -= 1
        if self._open_pipes <= 0:
            self.pipes_closed.set()

    def process_exited(self) -> None:
        self.exited.set()

    def finish(self) -> None:
        """Nothing more will come: forward() returns once the queue is sent."""
        self._finished = True
        self._more.set()

    def _pause(self, pause: bool) -> None:
        if self._transport is None or self._paused == pause:
            return
        self._paused = pause
        for fd in (1, 2):
            pipe = self._transport.get_pipe_transport(fd)
            if isinstance(pipe, asyncio.ReadTransport) and not pipe.is_closing():
                (pipe.pause_reading if pause else pipe.resume_reading)()

    async def forward(self, emit: Send) -> None:
        """Send the output as it comes (neighbouring chunks of one stream coalesced, up to
        CHUNK each) until finish() and an empty queue."""
        while True:
            while self._queue:
                fd, data = self._queue.popleft()
                while self._queue and self._queue[0][0] == fd and len(data) + len(self._queue[0][1]) <= CHUNK:
                    data += self._queue.popleft()[1]
                stream = pb.CommandOutput.STDERR if fd == 2 else pb.CommandOutput.STDOUT
                for i in range(0, len(data), CHUNK):
                    await emit(pb.AgentMessage(command_output=pb.CommandOutput(
                        command_id=self.command_id, stream=stream, data=data[i:i + CHUNK])))
                self._queued -= len(data)
                if self._queued <= QUEUE_HIGH // 2:
                    self._pause(False)
            if self._finished:
                return
            self._more.clear()
            await self._more.wait()


# ---- the executor ---------------------------------------------------------------------------

class Executor:
    """Carries out RunScript commands, each in a task of its own, at most ``max_running`` at
    once. Every command gets exactly one CommandResult through ``send`` (errors included);
    ``send`` must not block for long (it may drop) and its exceptions are swallowed."""

    def __init__(self, send: Send, max_running: int = MAX_RUNNING) -> None:
        self._send = send
        self._max = max_running
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def running(self) -> list[str]:
        return list(self._runs)

    def start(self, cmd: pb.Command) -> asyncio.Task[None]:
        """Begin ``cmd`` (never blocks, never raises); the task ends once its result is sent.
        A cancel that comes right after finds it registered."""
        refusal = ""
        if self._closing:
            refusal = "the agent is stopping"
        elif cmd.WhichOneof("kind") != "run":
            refusal = "the command has no script to run"
        elif cmd.id in self._runs:
            refusal = f"command {cmd.id} is already running"
        elif len(self._runs) >= self._max:
            refusal = f"too many commands running (at most {self._max})"
        if refusal:
            log.warning("command %s refused: %s", cmd.id, refusal)
            coro = self._emit(pb.AgentMessage(command_result=pb.CommandResult(
                command_id=cmd.id, error=refusal)))
        else:
            run = self._runs[cmd.id] = _Run()
            coro = self._carry_out(cmd, run)
        task = asyncio.create_task(coro, name=f"command-{cmd.id}")
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task

    async def handle(self, cmd: pb.Command) -> None:
        """``start`` and wait for the result to be sent."""
        await self.start(cmd)

    def cancel(self, command_id: str) -> bool:
        """Kill a run (its group: SIGTERM, SIGKILL 2 s later); False if it is not running.
        Its result says cancelled."""
        run = self._runs.get(command_id)
        if run is None:
            return False
        run.stop(cancelled=True)
        return True

    async def close(self) -> None:
        """Refuse new commands, cancel every run and wait for them to end (a few seconds at
        most: the kill's grace)."""
        self._closing = True
        for run in self._runs.values():
            run.stop(cancelled=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _emit(self, msg: pb.AgentMessage) -> None:
        try:
            await self._send(msg)
        except Exception as exc:  # a broken stream: the run goes on, this message is lost
            log.debug("dropped a %s message: %s", msg.WhichOneof("body"), exc)

    async def _carry_out(self, cmd: pb.Command, run: _Run) -> None:
        result = pb.CommandResult(command_id=cmd.id)
        directory = ""
        try:
            script = cmd.run
            if not script.sha256:
                raise Refused("the command carries no sha256 of its content: refused")
            digest = hashlib.sha256(script.content).hexdigest()
            if digest != script.sha256.lower():
                raise Refused(f"content does not match its sha256 (it hashes to {digest}, "
                              f"expected {script.sha256}): not run")
            who = run_as(script.user)
            ansible = ""
            if script.ansible:
                ansible = shutil.which("ansible-playbook") or shutil.which("ansible-playbook", path=PATH) or ""
                if not ansible:
                    raise Refused("ansible-playbook is not installed on this host")
            directory, argv, cwd = await asyncio.to_thread(prepare, script, who, ansible)
            if run.stop_asked.is_set():  # cancelled while it was being prepared
                result.cancelled = True
                return
            env = base_env(who)
            if script.ansible:
                # Ansible's temporary files in the run's directory: the user's home may be
                # missing or read-only (service accounts), and they go with the run
                tmp = os.path.join(directory, ANSIBLE_TMP)
                env |= {"ANSIBLE_LOCAL_TEMP": tmp, "ANSIBLE_REMOTE_TEMP": tmp}
            env |= script.env  # values may be secrets: never logged
            await self._execute(cmd, run, argv, cwd, env, who, result)
        except Refused as exc:
            result.error = str(exc)
            log.warning("command %s not run: %s", cmd.id, exc)
        except Exception as exc:  # whatever went wrong, the controller gets a result
            log.exception("command %s failed", cmd.id)
            result.error = f"the agent could not run it: {exc}"
        finally:
            self._runs.pop(cmd.id, None)
            if directory:
                await asyncio.to_thread(shutil.rmtree, directory, True)
            await self._emit(pb.AgentMessage(command_result=result))

    async def _execute(self, cmd: pb.Command, run: _Run, argv: list[str], cwd: str,
                       env: dict[str, str], who: RunAs, result: pb.CommandResult) -> None:
        loop = asyncio.get_running_loop()
        out = _Output(cmd.id, cmd.run.max_output_bytes or DEFAULT_MAX_OUTPUT)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: out, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=cwd, env=env,
                start_new_session=True,  # pid == process group: one kill ends it all
                **who.popen_kwargs())
        except (OSError, subprocess.SubprocessError) as exc:
            raise Refused(f"cannot start {argv[0]}: {getattr(exc, 'strerror', None) or exc}") from None
        pid = transport.get_pid()
        log.info("command %s: %s started as %s (pid %d)", cmd.id, os.path.basename(argv[0]),
                 who.name, pid)
        exited = asyncio.create_task(out.exited.wait())
        stop = asyncio.create_task(run.stop_asked.wait())
        forwarder: asyncio.Task[None] | None = None
        try:
            await self._emit(pb.AgentMessage(command_started=pb.CommandStarted(
                command_id=cmd.id, pid=pid)))
            forwarder = asyncio.create_task(out.forward(self._emit))
            await asyncio.wait({exited, stop}, timeout=cmd.timeout_s or None,
                               return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                run.stop(timed_out=True)  # a no-op when a cancel came first
                if not await self._kill(pid, out):
                    result.error = "the process did not end after SIGKILL"
            # what it left running in its group goes with it
            signal_group(pid, signal.SIGKILL)
            # pipes still open now are held by processes that left the group (setsid,
            # daemons): stop reading rather than wait for them
            try:
                await asyncio.wait_for(out.pipes_closed.wait(), PIPE_GRACE)
            except TimeoutError:
                log.info("command %s: output still open after it ended: no longer read", cmd.id)
        except BaseException:
            # cancelled (the loop is stopping): leave nothing running
            signal_group(pid, signal.SIGKILL)
            transport.close()
            if forwarder is not None:
                forwarder.cancel()
            raise
        finally:
            exited.cancel()
            stop.cancel()
        transport.close()
        out.finish()
        await forwarder
        code = transport.get_returncode()
        result.exit_code = code if code is not None else 0
        result.timed_out, result.cancelled = run.timed_out, run.cancelled
        result.output_truncated = out.truncated
        log.info("command %s: ended (exit %s%s%s), %d bytes of output", cmd.id, code,
                 ", timed out" if run.timed_out else "", ", cancelled" if run.cancelled else "",
                 out.total)

    @staticmethod
    async def _kill(pid: int, out: _Output) -> bool:
        """SIGTERM the group, SIGKILL it KILL_GRACE later; False if even that did not end it."""
        for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, REAP_LIMIT)):
            signal_group(pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(out.exited.wait(), grace)
                return True
        return False
