"""The agent's side of the stream: collect on a timer into the spool, keep one mutual-TLS
stream to the controller, send hello, replay the spool in order, send new batches, apply
acknowledgements and configuration, renew the certificate before it expires, and reconnect
with exponential backoff and jitter when anything breaks. Commands from the controller go to
the script runner (``agent.exec``) and the shells (``agent.shell``), which answer on the
stream too.

Blocking work (psutil, file I/O) runs in one worker thread; everything else on one asyncio
loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

# before gRPC loads: scripts and shells fork, and their children must not run gRPC's fork
# handlers (grpc/grpc#31885: see agent.proc)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

# isort: split
import grpc

from agent import AGENT_VERSION, PROTOCOL_VERSION
from agent.collect.inventory import fingerprint, inventory
from agent.collect.metrics import MetricsCollector
from agent.spool import Spool
from agent.state import AgentState, make_key_and_csr_isolated
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from agent.collect.custom import CustomMetrics
    from agent.exec import Executor
    from agent.gateway import Gateways
    from agent.shell import Shells
    from agent.upgrade import Upgrader

log = logging.getLogger(__name__)

# A dead controller is found within 30 s: a ping every 20 s unanswered for 10 s ends the stream
# (the controller pings as often: controller/agents/server.py).
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # we reconnect ourselves, with jitter: no hidden retries underneath
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 1000),
]
IN_FLIGHT = 32  # batches sent and not yet acknowledged
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0


class Revoked(Exception):
    """The controller refuses this agent's identity: it will not change by retrying."""


# (metric, sorted labels) -> its reference on the current stream
SeriesTable = dict[tuple[str, tuple[tuple[str, str], ...]], int]


def compact_batch(batch: pb.MetricBatch, series: SeriesTable) -> pb.MetricBatch:
    """``batch`` in the protocol's compact form for a stream whose series so far are
    ``series`` (updated): series new on the stream defined, then one reference and one value
    per sample. Samples taken at another time than the first one's (and any without a
    metric name) stay as they are: a batch may carry both forms."""
    out = pb.MetricBatch(seq=batch.seq, dropped=batch.dropped)
    if not batch.samples:
        return out
    t = out.time_ms = batch.samples[0].time_ms
    refs: list[int] = []
    values: list[float] = []
    for s in batch.samples:
        if s.time_ms != t or not s.metric:
            out.samples.append(s)
            continue
        labels = tuple(sorted(s.labels.items()))
        key = (s.metric, labels)
        ref = series.get(key)
        if ref is None:
            ref = series[key] = len(series)
            out.series.add(ref=ref, metric=s.metric, labels=dict(labels))
        refs.append(ref)
        values.append(s.value)
    out.refs.extend(refs)
    out.values.extend(values)
    return out


class _Stream:
    """The sending side of one Connect call. grpc aio takes one write at a time per call,
    and metric batches, command output and shells all write: every write goes through here."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._lock = asyncio.Lock()

    async def write(self, msg: pb.AgentMessage) -> None:
        async with self._lock:
            await self.call.write(msg)


def backoff_delays(rng: random.Random | None = None) -> Any:
    """Exponential backoff with full jitter: 10,000 agents reconnecting to a restarted
    controller spread over the window instead of arriving together."""
    r = rng or random.Random()
    ceiling = BACKOFF_MIN
    while True:
        yield r.uniform(BACKOFF_MIN / 2, ceiling)
        ceiling = min(BACKOFF_MAX, ceiling * 2)


class Agent:
    def __init__(self, state: AgentState, interval: float | None = None,
                 spool_max_bytes: int = 64 * 1024 * 1024) -> None:
        self.state = state
        self.interval = interval or 10.0
        self._interval_fixed = interval is not None  # given locally: the controller's does not override
        self.labels: dict[str, str] = {}  # from the controller's configuration
        self.spool = Spool(state.spool_dir, spool_max_bytes)
        self.collector = MetricsCollector()
        self.connected = asyncio.Event()
        self._new_batch = asyncio.Event()
        self._inventory: pb.Inventory | None = None
        self._inventory_fp = ""
        self._inventory_changed = asyncio.Event()
        self._renewing = False
        self._pending_key: bytes | None = None
        self._stop = asyncio.Event()
        self._stream: _Stream | None = None  # the current stream's, while connected
        # made on the first command: an agent never asked to run anything does not load them
        # (about 1.3 MiB)
        self._executor: Executor | None = None
        self._shells: Shells | None = None
        # made on the first TunnelUp, or at start when a tunnel is stored (agent.gateway)
        self._gateways: Gateways | None = None
        # made on the first Upgrade (agent.upgrade); once one is installed, run() ends with
        # this set and agent.main starts the new code in this process
        self._upgrader: Upgrader | None = None
        # made when the controller first configures a custom metric source (agent.collect.custom)
        self._custom: CustomMetrics | None = None
        self.restart_requested = False

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until stopped, or until the controller says this agent is revoked (raises Revoked)."""
        # one thread for the blocking work (psutil, spool files) instead of asyncio's default
        # of up to CPUs + 4: each thread costs a stack and a malloc arena, and the work is
        # a few milliseconds every interval
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-io"))
        collector = asyncio.create_task(self._collect_loop(), name="collect")
        connector = asyncio.create_task(self._connect_loop(), name="connect")
        stopped = asyncio.create_task(self._stop.wait())
        if self._tunnels_stored():
            self.gateways.spawn(self.gateways.restore())
        try:
            await asyncio.wait({connector, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if connector.done():
                connector.result()  # raises Revoked
        finally:
            for t in (collector, connector, stopped):
                t.cancel()
            await asyncio.gather(collector, connector, stopped, return_exceptions=True)
            # nothing this agent started outlives it
            await asyncio.gather(*(x.close() for x in (self._executor,) if x),
                                 *(x.close_all() for x in (self._shells,) if x),
                                 *(x.close() for x in (self._gateways,) if x),
                                 *(x.close() for x in (self._custom,) if x),
                                 return_exceptions=True)

    # ---- collecting (works with or without the controller) ----------------------------
    async def _collect_loop(self) -> None:
        while not self._stop.is_set():
            try:
                samples = await asyncio.to_thread(self.collector.collect)
                if self._custom is not None:  # the custom sources' samples since last round
                    samples.extend(self._custom.drain())
                await asyncio.to_thread(self.spool.append, samples)
                self._new_batch.set()
                inv = await asyncio.to_thread(inventory, AGENT_VERSION)
                fp = fingerprint(inv)
                if fp != self._inventory_fp:
                    self._inventory, self._inventory_fp = inv, fp
                    self._inventory_changed.set()
            except Exception:
                log.exception("collecting failed; trying again next round")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    # ---- the stream ----------------------------------------------------------------------
    async def _connect_loop(self) -> None:
        delays = backoff_delays()
        while not self._stop.is_set():
            try:
                await self._session()
                delays = backoff_delays()  # a session that ran resets the backoff
            except Revoked:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise Revoked(exc.details() or "refused") from None
                log.warning("controller stream ended: %s %s", exc.code().name, exc.details())
            except Exception as exc:
                log.warning("controller stream failed: %s", exc)
            self.connected.clear()
            if self._stop.is_set():
                return
            delay = next(delays)
            log.info("reconnecting in %.1f s", delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    def _channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.state.ca_pem(), private_key=self.state.key_pem(),
            certificate_chain=self.state.cert_pem())
        return grpc.aio.secure_channel(self.state.grpc_endpoint, creds, options=KEEPALIVE)

    async def _session(self) -> None:
        if self._inventory is None:
            self._inventory = await asyncio.to_thread(inventory, AGENT_VERSION)
            self._inventory_fp = fingerprint(self._inventory)
        async with self._channel() as channel:
            call = pb_grpc.AgentServiceStub(channel).Connect()
            stream = _Stream(call)
            stats = self.spool.stats()
            await stream.write(pb.AgentMessage(hello=pb.Hello(
                agent_id=self.state.agent_id, protocol_version=PROTOCOL_VERSION,
                agent_version=AGENT_VERSION, inventory=self._inventory,
                spooled_batches=stats["batches"], dropped_batches=stats["dropped_total"])))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise ConnectionError("the controller did not welcome us")
            welcome = first.welcome
            # the controller's acknowledgement wins: what it stored is never sent again
            await asyncio.to_thread(self.spool.ack, welcome.acked_seq)
            self._apply_config(welcome.config)
            self.connected.set()
            log.info("connected to %s as %s", self.state.grpc_endpoint, welcome.agent_id)
            acked = asyncio.Event()
            # the controller takes the compact form: series defined once on this stream
            series: SeriesTable | None = {} if welcome.compact_metrics else None
            sender = asyncio.create_task(self._send(stream, acked, series))
            self._stream = stream
            if self._gateways is not None:
                self._gateways.spawn(self._gateways.report())
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    kind = msg.WhichOneof("body")
                    if kind == "batch_ack":
                        await asyncio.to_thread(self.spool.ack, msg.batch_ack.seq)
                        acked.set()
                    elif kind == "config":
                        self._apply_config(msg.config)
                    elif kind == "renew":
                        await self._install_renewed(msg.renew.certificate_pem)
                    elif kind in ("command", "cancel", "shell_data", "shell_resize", "shell_close",
                                  "tunnel_up", "tunnel_down", "upgrade"):
                        self._dispatch(msg)
                    else:
                        log.debug("controller sent %s: not handled by this agent version", kind)
                    if sender.done():
                        sender.result()  # raise its error
            finally:
                sender.cancel()
                self._stream = None
                # a shell belongs to the stream it was opened on (its user is gone with
                # it); scripts run on (see agent.exec)
                if self._shells is not None:
                    await self._shells.close_all()
            if sender.done() and not sender.cancelled() and sender.exception():
                raise sender.exception()  # type: ignore[misc]
            code = await call.code()
            if code != grpc.StatusCode.OK:
                details = await call.details()
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise Revoked(details)
                raise ConnectionError(f"{code.name}: {details}")

    async def _send_up(self, msg: pb.AgentMessage) -> None:
        """How scripts and shells talk to the controller: on the current stream; what they
        say while there is none, or when it breaks, is dropped (the session notices the
        break itself and reconnects)."""
        stream = self._stream
        if stream is None:
            log.debug("not connected: a %s message dropped", msg.WhichOneof("body"))
            return
        try:
            await stream.write(msg)
        except Exception as exc:
            log.debug("a %s message dropped: %s", msg.WhichOneof("body"), exc)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            from agent.exec import Executor

            self._executor = Executor(self._send_up)
        return self._executor

    @property
    def shells(self) -> Shells:
        if self._shells is None:
            from agent.shell import Shells

            self._shells = Shells(self._send_up)
        return self._shells

    @property
    def gateways(self) -> Gateways:
        if self._gateways is None:
            from agent.gateway import Gateways

            self._gateways = Gateways(self.state.directory, self._send_up)
        return self._gateways

    @property
    def upgrader(self) -> Upgrader:
        if self._upgrader is None:
            from agent.upgrade import Upgrader

            self._upgrader = Upgrader(self.state.directory, self._send_up, self._restart)
        return self._upgrader

    def _restart(self) -> None:
        self.restart_requested = True
        self.stop()

    def _tunnels_stored(self) -> bool:
        """Whether this agent is a tunnel's gateway (without loading the tunnel code)."""
        try:
            return any(n.endswith(".json") for n in os.listdir(self.state.directory / "tunnels"))
        except OSError:
            return False

    def _dispatch(self, msg: pb.ControllerMessage) -> None:
        """Commands, cancels, shell input and tunnels: handed over without waiting (each run,
        shell and tunnel change is a task of its own), so the read loop never stalls on them."""
        kind = msg.WhichOneof("body")
        if kind == "tunnel_up":
            self.gateways.spawn(self.gateways.up(msg.tunnel_up))
        elif kind == "upgrade":
            self.upgrader.start(msg.upgrade)
        elif kind == "tunnel_down":
            self.gateways.spawn(self.gateways.down(msg.tunnel_down.tunnel_id))
        elif kind == "command":
            if msg.command.WhichOneof("kind") == "shell":
                self.shells.open(msg.command.id, msg.command.shell)
            else:
                self.executor.start(msg.command)  # answers a command without a script too
        elif kind == "cancel":
            if not self.executor.cancel(msg.cancel.command_id):
                log.debug("cancel for command %s, which is not running", msg.cancel.command_id)
        elif kind == "shell_data":
            self.shells.data(msg.shell_data.session_id, msg.shell_data.data)
        elif kind == "shell_resize":
            r = msg.shell_resize
            self.shells.resize(r.session_id, r.cols, r.rows)
        elif kind == "shell_close":
            self.shells.close(msg.shell_close.session_id)

    def _apply_config(self, config: pb.Config) -> None:
        if dict(config.labels) != self.labels:
            self.labels = dict(config.labels)
            # the controller puts them on every sample it stores (also on spooled ones sent
            # before this configuration arrived); the agent only shows them
            log.info("the controller labels this host's samples with %s", self.labels)
        self._configure_sources(list(config.metric_sources))
        if self._interval_fixed:
            return
        if config.metric_interval_s and config.metric_interval_s != self.interval:
            log.info("metric interval set to %d s by the controller", config.metric_interval_s)
            self.interval = float(config.metric_interval_s)

    def _configure_sources(self, sources: list[pb.MetricSource]) -> None:
        """The controller's custom metric sources (always the whole list): their code is
        loaded only once there is one."""
        if self._custom is None:
            if not sources:
                return
            from agent.collect.custom import CustomMetrics

            self._custom = CustomMetrics(self.state.agent_id, lambda: self.interval, self._send_up)
        self._custom.configure(sources)

    def _next_batches(self, after: int) -> list[pb.MetricBatch]:
        # read lazily: after a long outage the spool holds thousands of batches
        return list(itertools.islice(self.spool.pending(after_seq=after), IN_FLIGHT))

    async def _send(self, stream: _Stream, acked: asyncio.Event, series: SeriesTable | None) -> None:
        """Replay the spool in order, then send each new batch, at most IN_FLIGHT unacked
        (the controller acknowledges every few batches: half the window asks for it at once)."""
        last_sent = self.spool.stats()["acked_seq"]
        while True:
            sent_any = False
            for batch in await asyncio.to_thread(self._next_batches, last_sent):
                while batch.seq - self.spool.stats()["acked_seq"] > IN_FLIGHT:
                    acked.clear()
                    await acked.wait()
                wire = compact_batch(batch, series) if series is not None else batch
                if batch.seq - self.spool.stats()["acked_seq"] >= IN_FLIGHT // 2:
                    wire.ack_now = True
                await stream.write(pb.AgentMessage(metrics=wire))
                last_sent = batch.seq
                sent_any = True
            if self._inventory_changed.is_set() and self._inventory is not None:
                self._inventory_changed.clear()
                await stream.write(pb.AgentMessage(inventory=self._inventory))
            await self._maybe_renew(stream)
            if not sent_any:
                self._new_batch.clear()
                waits = [asyncio.create_task(self._new_batch.wait()),
                         asyncio.create_task(self._inventory_changed.wait())]
                _, pending = await asyncio.wait(waits, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()

    # ---- certificate renewal -------------------------------------------------------------
    async def _maybe_renew(self, stream: _Stream) -> None:
        """Ask for a new certificate (new key) once a third of the old one's life is left."""
        if self._renewing:
            return
        not_after = self.state.cert_not_after()
        if not_after is None:
            return
        left = (not_after - dt.datetime.now(dt.UTC)).total_seconds()
        lifetime = self._lifetime()
        if left > max(lifetime / 3, 60):
            return
        self._renewing = True
        key_pem, csr_pem = await asyncio.to_thread(make_key_and_csr_isolated, self.state.agent_id)
        self._pending_key = key_pem
        await stream.write(pb.AgentMessage(renew=pb.RenewRequest(csr_pem=csr_pem)))
        log.info("certificate expires in %d s: renewal asked", int(left))

    def _lifetime(self) -> float:
        before, after = self.state.cert_validity()
        return (after - before).total_seconds() if before and after else 0.0

    async def _install_renewed(self, cert_pem: bytes) -> None:
        key = self._pending_key
        if key is None:
            return
        await asyncio.to_thread(self.state.install_credentials, key, cert_pem)
        self._pending_key = None
        self._renewing = False
        log.info("certificate renewed until %s", self.state.cert_not_after())
