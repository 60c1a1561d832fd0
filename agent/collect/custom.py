"""Custom metrics: the controller's metric sources (scripts of its library, ``Config.metric_sources``),
each run by the agent every interval (the source's own, else the agent's metric interval),
what they print read as the Prometheus text format (``agent.collect.exposition``), and their
samples handed to the collect loop for its next metric batch (so they are spooled offline and
sent exactly once like the rest), labelled with ``machine_id`` and ``source`` (the source's
name; a script's own labels of those names are replaced). At most MAX_OUTPUT bytes of a run's
output are read; a run that exits non-zero or takes longer than its timeout gives no samples
(its process group is killed at the timeout). How each source goes is reported to the
controller (``MetricSourceStatus``): after the first run, when the outcome changes, and once
a minute.

Loaded only when the controller configures a source (``agent.control``): an agent without
custom metrics never imports this. One asyncio task per source; the scripts are written into a
private directory (checked against their SHA-256 first) and run as the agent's own user with a
login's minimal environment (``agent.proc``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.collect.exposition import parse
from agent.proc import base_env, run_as, signal_group
from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

MAX_OUTPUT = 256 * 1024     # bytes of a run's stdout read; the rest is read and dropped
MAX_STDERR = 2048           # bytes of stderr kept for the report
MAX_PENDING = 100_000       # samples waiting for the collect loop; past it the oldest go
DEFAULT_TIMEOUT = 10.0
STATUS_EVERY = 60.0         # seconds between statuses that say nothing new
KILL_WAIT = 5.0

_RESERVED = ("machine_id", "source")  # set by the agent and the controller, never the script


@dataclass
class Outcome:
    """One run: the samples it gave and what the status says."""

    samples: list[pb.Sample] = field(default_factory=list)
    error: str = ""
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0
    timed_out: bool = False
    exit_code: int = 0
    duration_ms: int = 0
    started_ms: int = 0

    def key(self) -> tuple[object, ...]:
        """What makes a status worth sending again (counts and times aside)."""
        return (self.error, tuple(self.bad), self.timed_out, self.exit_code)


Send = Callable[[pb.AgentMessage], Awaitable[None]]


class _Source:
    def __init__(self, spec: pb.MetricSource) -> None:
        self.spec = spec
        self.task: asyncio.Task[None] | None = None
        self.last_key: tuple[object, ...] | None = None
        self.last_sent = 0.0


class CustomMetrics:
    """The sources the controller configured, each run on its own schedule. ``configure``
    replaces the list (a source whose script, interval and timeout did not change keeps
    running undisturbed); ``drain`` hands the samples gathered since the last call to the
    collect loop; ``close`` stops every run (killing what runs) and removes the scripts."""

    def __init__(self, agent_id: str, interval: Callable[[], float], send: Send) -> None:
        self.agent_id = agent_id
        self.interval = interval
        self.send = send
        self.dir = ""  # the scripts' private directory, made on first use
        self._sources: dict[str, _Source] = {}
        self._pending: list[pb.Sample] = []
        self.dropped = 0

    @property
    def source_ids(self) -> list[str]:
        return sorted(self._sources)

    def configure(self, specs: list[pb.MetricSource]) -> None:
        wanted = {s.id: s for s in specs if s.id}
        for sid in list(self._sources):
            old = self._sources[sid]
            new = wanted.get(sid)
            if new is None or new.SerializeToString(deterministic=True) != \
                    old.spec.SerializeToString(deterministic=True):
                self._stop(sid)
        for sid, spec in wanted.items():
            if sid not in self._sources:
                src = self._sources[sid] = _Source(spec)
                src.task = asyncio.get_running_loop().create_task(self._loop(src),
                                                                  name=f"metric-source-{sid}")
        log.info("custom metric sources: %s", ", ".join(
            f"{s.spec.name} ({s.spec.id})" for s in self._sources.values()) or "none")

    def drain(self) -> list[pb.Sample]:
        out, self._pending = self._pending, []
        return out

    async def close(self) -> None:
        for sid in list(self._sources):
            self._stop(sid)
        await asyncio.sleep(0)
        if self.dir:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)

    def _stop(self, sid: str) -> None:
        src = self._sources.pop(sid)
        if src.task is not None:
            src.task.cancel()  # a run in progress is killed by its finally

    async def _loop(self, src: _Source) -> None:
        path = ""
        try:
            path, refusal = await asyncio.to_thread(self._write, src.spec)
            while True:
                started = time.monotonic()
                outcome = Outcome(error=refusal, started_ms=int(time.time() * 1000)) \
                    if refusal else await self.run(src.spec, path)
                self._keep(outcome.samples)
                await self._report(src, outcome)
                every = float(src.spec.interval_s) or self.interval() or 10.0
                await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the agent down; the source stops
            log.exception("metric source %s failed", src.spec.name)
        finally:
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _write(self, spec: pb.MetricSource) -> tuple[str, str]:
        """Blocking: the script's file (made once per content), or why it is refused."""
        digest = hashlib.sha256(spec.content).hexdigest()
        if not spec.sha256 or digest != spec.sha256.lower():
            return "", (f"the script does not match its sha256 (it hashes to {digest}, "
                        f"expected {spec.sha256 or 'none'}): not run")
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="overcast-metrics-")  # 0700
        path = os.path.join(self.dir, f"{spec.id}-{digest[:12]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(spec.content)
        return path, ""

    def _keep(self, samples: list[pb.Sample]) -> None:
        self._pending.extend(samples)
        over = len(self._pending) - MAX_PENDING
        if over > 0:  # the collect loop is stuck: keep the newest
            del self._pending[:over]
            self.dropped += over

    async def run(self, spec: pb.MetricSource, path: str) -> Outcome:
        """Run the script at ``path`` once; its samples (labelled) and how it went."""
        now_ms = int(time.time() * 1000)
        out = Outcome(started_ms=now_ms)
        with open(path, "rb") as f:
            head = f.read(2)
        argv = [path] if head == b"#!" else ["/bin/sh", path]
        who = run_as("")
        timeout = float(spec.timeout_s) or DEFAULT_TIMEOUT
        t0 = time.monotonic()
        try:
            code, stdout, stderr, out.timed_out, cut = await _execute(argv, base_env(who),
                                                                    who.workdir(), timeout)
        except OSError as exc:
            out.error = f"cannot start the script: {exc.strerror or exc}"
            return out
        out.duration_ms = int((time.monotonic() - t0) * 1000)
        out.exit_code = code
        if out.timed_out:
            out.error = f"timed out after {timeout:g}s: killed, its samples left out"
            return out
        if code != 0:
            why = stderr.decode(errors="replace").strip().splitlines()
            out.error = f"exit status {code}" + (f": {why[-1][:200]}" if why else "")
            return out
        text = stdout.decode("utf-8", errors="replace")
        if cut:
            text = text[:text.rfind("\n") + 1]
        parsed = parse(text, now_ms)
        out.bad, out.bad_count = parsed.bad, parsed.bad_count
        if cut:
            out.bad_count += 1
            out.bad.append(f"output over {MAX_OUTPUT} bytes: the rest left out")
        base = {"machine_id": self.agent_id, "source": spec.name}
        for metric, labels, value, t in parsed.rows:
            labels = {k: v for k, v in labels.items() if k not in _RESERVED}
            out.samples.append(pb.Sample(metric=metric, labels={**labels, **base}, value=value,
                                         time_ms=now_ms if t is None else t))
        return out

    async def _report(self, src: _Source, o: Outcome) -> None:
        key, now = o.key(), time.monotonic()
        if key == src.last_key and now - src.last_sent < STATUS_EVERY:
            return
        if key != src.last_key and (o.error or o.bad_count):
            log.warning("metric source %s: %s%s", src.spec.name, o.error or "",
                        "; ".join(o.bad) if not o.error else "")
        src.last_key, src.last_sent = key, now
        await self.send(pb.AgentMessage(metric_source_status=pb.MetricSourceStatus(
            source_id=src.spec.id, time_ms=o.started_ms, samples=len(o.samples), error=o.error,
            bad_lines=o.bad, bad_line_count=o.bad_count, timed_out=o.timed_out,
            exit_code=o.exit_code, duration_ms=o.duration_ms)))


async def _execute(argv: list[str], env: dict[str, str], cwd: str,
                   timeout: float) -> tuple[int, bytes, bytes, bool, bool]:
    """Run ``argv`` in a session of its own: (exit code, stdout up to MAX_OUTPUT, the end
    of stderr, timed out, stdout was cut). At the timeout (or when the task is cancelled)
    the whole process group is killed; whatever the script left in its group is killed when
    it exits. Pipes held by processes that left the group are let go, not waited for."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd, env=env, start_new_session=True)
    out, err = bytearray(), bytearray()
    cut = False

    async def pump_out() -> None:
        nonlocal cut
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            room = MAX_OUTPUT - len(out)
            if len(chunk) > room:
                cut = True
            out.extend(chunk[:max(0, room)])

    async def pump_err() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            err.extend(chunk)
            del err[:-MAX_STDERR]

    pumps = asyncio.gather(pump_out(), pump_err())
    waiter = asyncio.ensure_future(proc.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        if waiter not in done:
            timed_out = True
            signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), KILL_WAIT)
        else:
            # the output may still be on its way; a pipe a background child holds is not
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pumps), 1.0)
    finally:
        signal_group(proc.pid, signal.SIGKILL)  # what it left in its group goes with it
        pumps.cancel()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumps
    code = proc.returncode
    return (code if code is not None else -9), bytes(out), bytes(err), timed_out, cut
