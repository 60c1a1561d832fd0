"""Commands and shells over the agents' streams: the controller's half of RunScript and
OpenShell. Protobuf stops here and in the servicer.

A run on many agents is one broadcast: the Command is built once and written to every
agent's stream at the same time (each stream serialises it for itself); results are gathered
as they arrive. A message an agent sends is only ever matched against what was sent down
that agent's own stream: state is keyed by (agent id, command id), and the agent id comes
from the stream's certificate, so an agent cannot touch another agent's run or shell.

Blocks nothing: every method runs on the event loop. ``deliver`` (called by the servicer
for each command or shell message) awaits only when a shell's reader lags behind, which
slows that one agent's stream down instead of buffering without bound."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.agents.registry import Registry
from controller.errors import ProviderUnavailable
from controller.exec.model import OutputSink, Payload, RunResult
from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

RESULT_GRACE = 30.0        # seconds past the run's timeout before the agent is given up on
START_TIMEOUT = 30.0       # seconds for an agent to answer an OpenShell
SHELL_HIGH_WATER = 4 << 20  # bytes of shell output buffered before the agent's stream waits
WRITE_TIMEOUT = 10.0       # seconds a write to one agent's stream may take


@dataclass
class _Inbox:
    """Results of one broadcast as they arrive."""

    items: deque[tuple[str, RunResult]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Run:
    sink: OutputSink
    inbox: _Inbox
    max_output: int
    kept: int = 0
    total: int = 0
    started: bool = False
    settled: bool = False


@dataclass
class AgentShell:
    """A shell on an agent's pseudo-terminal (implements controller.exec.model.ShellChannel)."""

    link: AgentLink
    agent_id: str
    session_id: str
    stream: Any = None  # the agent's stream (registry Session) the shell was opened on
    _queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _buffered: int = 0
    _drained: asyncio.Event = field(default_factory=asyncio.Event)
    _exit_code: int | None = None
    _error: str = ""
    _closed: bool = False
    _opened: asyncio.Event = field(default_factory=asyncio.Event)
    _writes: list[asyncio.Task[None]] = field(default_factory=list)

    async def read(self) -> bytes | None:
        data = await self._queue.get()
        if data is None:
            self._queue.put_nowait(None)  # every later read sees the end too
            return None
        self._buffered -= len(data)
        if self._buffered <= SHELL_HIGH_WATER // 2:
            self._drained.set()
        return data

    def write(self, data: bytes) -> None:
        if not self._closed and data:
            self._send(pb.ControllerMessage(shell_data=pb.ShellData(
                session_id=self.session_id, data=data)))

    def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            self._send(pb.ControllerMessage(shell_resize=pb.ShellResize(
                session_id=self.session_id, cols=cols, rows=rows)))

    async def close(self) -> None:
        if not self._closed:
            self._send(pb.ControllerMessage(shell_close=pb.ShellClose(session_id=self.session_id)))
            self._end(None, "")
        pending = [t for t in self._writes if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=WRITE_TIMEOUT)

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def error(self) -> str:
        return self._error

    # ---- for the link ------------------------------------------------------------------
    def _send(self, msg: pb.ControllerMessage) -> None:
        # keystrokes stay in order: each write waits for the one before it
        prev = self._writes[-1] if self._writes else None
        task = asyncio.get_running_loop().create_task(self._write_after(prev, msg))
        self._writes = [t for t in self._writes if not t.done()] + [task]

    async def _write_after(self, prev: asyncio.Task[None] | None, msg: pb.ControllerMessage) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        try:
            await self.link.write(self.agent_id, msg)
        except Exception as exc:  # noqa: BLE001 - the stream is gone: the shell ends
            self._end(None, f"the agent's stream failed: {exc}")

    async def _data(self, data: bytes) -> None:
        self._opened.set()
        self._buffered += len(data)
        self._queue.put_nowait(data)
        if self._buffered > SHELL_HIGH_WATER:
            # the reader (a browser, the CLI) lags: hold this agent's stream until it catches up
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), 60.0)
            except TimeoutError:
                self._end(None, "the client stopped reading the shell's output")

    def _end(self, exit_code: int | None, error: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._exit_code = exit_code
        self._error = error
        self._opened.set()
        self._drained.set()
        self._queue.put_nowait(None)
        self.link._shells.pop((self.agent_id, self.session_id), None)


class AgentLink:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._runs: dict[tuple[str, str], _Run] = {}
        self._shells: dict[tuple[str, str], AgentShell] = {}
        # other services' up-message kinds: kind -> handler(agent_id, its fields as a dict);
        # e.g. "tunnel_status" -> the tunnel service (protobuf stops here)
        self.handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[None]]] = {}

    # ---- writing ------------------------------------------------------------------------
    async def write(self, agent_id: str, msg: pb.ControllerMessage) -> None:
        session = self.registry.get(agent_id)
        if session is None or session.ended or session.context is None:
            raise ProviderUnavailable("the machine's agent is not connected",
                                      {"agent": agent_id})
        await asyncio.wait_for(session.write(msg), WRITE_TIMEOUT)

    def connected(self, agent_id: str) -> bool:
        s = self.registry.get(agent_id)
        return s is not None and not s.ended

    # ---- runs ---------------------------------------------------------------------------
    async def run_many(self, agent_ids: Iterable[str], payload: Payload,
                       sink_for: Callable[[str], OutputSink],
                       cancel: asyncio.Event | None = None,
                       on_result: Callable[[str, RunResult], None] | None = None,
                       user: str = "") -> dict[str, RunResult]:
        """Run ``payload`` on every agent at once (one broadcast) and gather the results as
        they arrive; ``on_result(agent_id, result)`` is called for each as it comes. An agent
        that is not connected, or does not answer within the payload's timeout plus
        RESULT_GRACE, gets a result with ``error`` instead."""
        ids = list(dict.fromkeys(agent_ids))
        command_id = uuid.uuid4().hex
        msg = pb.ControllerMessage(command=pb.Command(
            id=command_id, timeout_s=max(1, int(payload.timeout + 0.999)),
            run=pb.RunScript(content=payload.content, interpreter=payload.interpreter,
                             args=list(payload.args), env=payload.env,
                             user="root" if payload.su else (user or payload.user),
                             max_output_bytes=payload.max_output, sha256=payload.sha256,
                             entrypoint=payload.entrypoint, ansible=payload.ansible)))
        loop = asyncio.get_running_loop()
        results: dict[str, RunResult] = {}
        # results land in one queue (not a future each: waiting on 10,000 futures at every
        # wake-up costs the square of their number)
        inbox = _Inbox()
        for aid in ids:
            self._runs[(aid, command_id)] = _Run(sink_for(aid), inbox, payload.max_output)
        pending = set(ids)

        def finish(aid: str, result: RunResult) -> None:
            pending.discard(aid)
            results[aid] = result
            if on_result is not None:
                on_result(aid, result)

        async def send(aid: str) -> None:
            try:
                await self.write(aid, msg)
            except Exception as exc:  # noqa: BLE001 - not connected, or the stream broke
                why = exc.message if isinstance(exc, ProviderUnavailable) else f"sending failed: {exc}"
                self._settle(aid, command_id, RunResult(error=why))

        try:
            # the broadcast: every stream written concurrently, one message object for all
            await asyncio.gather(*(send(aid) for aid in ids))
            deadline = time.monotonic() + payload.timeout + RESULT_GRACE
            cancel_wait = loop.create_task(cancel.wait()) if cancel is not None else None
            cancelled = False
            try:
                while True:
                    while inbox.items:
                        finish(*inbox.items.popleft())
                    left = deadline - time.monotonic()
                    if not pending or left <= 0:
                        break
                    inbox.arrived.clear()
                    arrived = loop.create_task(inbox.arrived.wait())
                    aws: set[asyncio.Future[Any]] = {arrived}
                    if cancel_wait is not None and not cancelled:
                        aws.add(cancel_wait)
                    done, _ = await asyncio.wait(aws, timeout=left,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    arrived.cancel()
                    if cancel_wait is not None and cancel_wait in done and not cancelled:
                        cancelled = True
                        await self._cancel(command_id, sorted(pending))
                        # the agents kill the process groups and answer; give them time
                        deadline = min(deadline, time.monotonic() + RESULT_GRACE)
            finally:
                if cancel_wait is not None:
                    cancel_wait.cancel()
            for aid in sorted(pending):
                finish(aid, RunResult(error="the agent sent no result in time", timed_out=True,
                                      cancelled=cancelled))
            return results
        finally:
            for aid in ids:
                self._runs.pop((aid, command_id), None)

    async def _cancel(self, command_id: str, agent_ids: list[str]) -> None:
        msg = pb.ControllerMessage(cancel=pb.CancelCommand(command_id=command_id))

        async def one(aid: str) -> None:
            try:
                await self.write(aid, msg)
            except Exception as exc:  # noqa: BLE001 - gone: its result will be "no result"
                log.debug("cancel not sent to agent %s: %s", aid, exc)

        await asyncio.gather(*(one(a) for a in agent_ids))

    def _settle(self, agent_id: str, command_id: str, result: RunResult) -> None:
        run = self._runs.get((agent_id, command_id))
        if run is None or run.settled:
            return
        run.settled = True
        result.output_bytes = max(result.output_bytes, run.total)
        result.truncated = result.truncated or run.total > run.kept
        run.inbox.items.append((agent_id, result))
        run.inbox.arrived.set()

    # ---- shells -------------------------------------------------------------------------
    async def open_shell(self, agent_id: str, term: str, cols: int, rows: int,
                         user: str = "", command: str = "") -> AgentShell:
        """Ask the agent for a shell; returns once the agent has sent its first output (a
        prompt) or START_TIMEOUT passed. Raises ProviderUnavailable when the agent is not
        connected or the shell could not start."""
        sid = uuid.uuid4().hex
        shell = AgentShell(self, agent_id, sid, stream=self.registry.get(agent_id))
        self._shells[(agent_id, sid)] = shell
        try:
            await self.write(agent_id, pb.ControllerMessage(command=pb.Command(
                id=sid, shell=pb.OpenShell(session_id=sid, term=term or "xterm-256color",
                                           cols=cols, rows=rows, user=user, command=command))))
        except Exception:
            self._shells.pop((agent_id, sid), None)
            raise
        try:
            await asyncio.wait_for(shell._opened.wait(), START_TIMEOUT)
        except TimeoutError:
            pass  # a shell may print nothing until typed at: it is open all the same
        if shell._closed and shell.error:
            raise ProviderUnavailable(f"the agent could not open a shell: {shell.error}",
                                      {"agent": agent_id})
        return shell

    # ---- what the agents send -----------------------------------------------------------
    async def deliver(self, agent_id: str, msg: pb.AgentMessage) -> None:
        """One command, shell or other service's message from ``agent_id``'s own stream."""
        kind = msg.WhichOneof("body")
        if kind == "command_output":
            o = msg.command_output
            run = self._runs.get((agent_id, o.command_id))
            if run is None:
                return
            run.total += len(o.data)
            room = run.max_output - run.kept
            if room > 0:
                data = o.data if len(o.data) <= room else o.data[:room]
                run.kept += len(data)
                run.sink.output("stderr" if o.stream == pb.CommandOutput.STDERR else "stdout", data)
        elif kind == "command_started":
            run = self._runs.get((agent_id, msg.command_started.command_id))
            if run is not None:
                run.started = True
        elif kind == "command_result":
            r = msg.command_result
            self._settle(agent_id, r.command_id, RunResult(
                exit_code=None if r.error and not r.exit_code else r.exit_code,
                error=r.error, timed_out=r.timed_out, cancelled=r.cancelled,
                truncated=r.output_truncated))
        elif kind == "shell_data":
            shell = self._shells.get((agent_id, msg.shell_data.session_id))
            if shell is not None:
                await shell._data(msg.shell_data.data)
        elif kind == "shell_closed":
            c = msg.shell_closed
            shell = self._shells.get((agent_id, c.session_id))
            if shell is not None:
                shell._end(None if c.error else c.exit_code, c.error)
        elif kind is not None and kind in self.handlers:
            body = getattr(msg, kind)
            fields = {f.name: getattr(body, f.name) for f in body.DESCRIPTOR.fields}
            try:
                await self.handlers[kind](agent_id, fields)
            except Exception:  # noqa: BLE001 - one service's failure must not end the stream
                log.exception("agent %s: handling a %s message failed", agent_id, kind)

    # ---- tunnels (the agent as a gateway: controller/tunnels) ---------------------------
    async def tunnel_up(self, agent_id: str, *, tunnel_id: str, interface: str, address: str,
                        hub_public_key: str, hub_endpoint: str, hub_address: str,
                        cidrs: list[str], keepalive: int, rotate: bool = False) -> None:
        """Tell an agent to be a tunnel's gateway (it answers TunnelStatus); with ``rotate``,
        to make a new key pair and report it first. Raises ProviderUnavailable when it is
        not connected."""
        await self.write(agent_id, pb.ControllerMessage(tunnel_up=pb.TunnelUp(
            tunnel_id=tunnel_id, interface=interface, address=address,
            hub_public_key=hub_public_key, hub_endpoint=hub_endpoint, hub_address=hub_address,
            cidrs=cidrs, keepalive=keepalive, rotate=rotate)))

    async def tunnel_down(self, agent_id: str, tunnel_id: str) -> None:
        await self.write(agent_id, pb.ControllerMessage(
            tunnel_down=pb.TunnelDown(tunnel_id=tunnel_id)))

    # ---- upgrades (controller/agents/upgrade.py; the agent answers UpgradeResult) --------
    async def upgrade(self, agent_id: str, *, request_id: str, package_url: str, version: str,
                      sha256: str, find_links: str) -> None:
        """Tell an agent to install another version of itself. Raises ProviderUnavailable
        when it is not connected."""
        await self.write(agent_id, pb.ControllerMessage(upgrade=pb.Upgrade(
            request_id=request_id, package_url=package_url, version=version, sha256=sha256,
            find_links=find_links)))

    def stream_ended(self, agent_id: str, stream: Any) -> None:
        """One of the agent's streams ended (the agent may be back on a newer one already):
        the shells opened on it end with it — the agent hangs them up — while its runs go on
        and answer on the next stream."""
        for (aid, _sid), shell in list(self._shells.items()):
            if aid == agent_id and shell.stream is stream:
                shell._end(None, "the agent's connection ended")

    def disconnected(self, agent_id: str) -> None:
        """The agent's stream ended: its runs and shells end with that reason."""
        for (aid, cid), _run in list(self._runs.items()):
            if aid == agent_id:
                self._settle(aid, cid, RunResult(error="the agent disconnected during the run"))
        for (aid, _sid), shell in list(self._shells.items()):
            if aid == agent_id:
                shell._end(None, "the agent disconnected")
