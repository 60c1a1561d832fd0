"""The agent gRPC service: Connect (mutual TLS, one stream per agent). The identity comes from
the client certificate only. Protobuf stops here. Enrolment is REST: agents/routes.py.

One task per stream: the handler reads the agent's messages in order and writes its answers
itself (no queue, no helper tasks: a controller holds ten thousand streams). Revoking, a
newer connection of the same agent and shutting down end a stream by cancelling that task
(``Session.end``).

Acknowledgements are cumulative, so one may stand for several batches: while an agent's
batches come at their usual pace the controller acknowledges every ``ACK_EVERY``-th (or
``ACK_DELAY`` seconds after a lone one): about one a minute at the 10 s interval instead of
six, and sending one costs the event loop about as much as taking a compact batch. A
replayed batch, and one that asks (``ack_now``), are acknowledged at once. Agents from before
this rule accept it as it is: they only ever waited for an acknowledgement with 32 batches
in flight, and they keep the few unacknowledged ones in their spool meanwhile (sent again
after a reconnect, and recognised as replays)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from controller.agents.ingest import Compact
from controller.agents.model import PROTOCOL_VERSION
from controller.agents.registry import Session
from controller.agents.service import AgentError
from controller.monitoring.wire import metric_sources
from controller.pki import cert_serial
from controller.services import Services
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
ACK_EVERY = 6  # stored batches per acknowledgement while batches come at their usual pace
ACK_DELAY = 60.0  # seconds at most before a stored batch is acknowledged
MAX_SERIES_PER_STREAM = 100_000  # compact series references one stream may define


class _Refused(Exception):
    """End the stream with this status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _peer_ip(context: grpc.aio.ServicerContext) -> str:
    from urllib.parse import unquote

    peer = unquote(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


def _ts(dt: Any) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def metric_labels(tags: dict[str, Any]) -> dict[str, str]:
    """The agent's tags as labels on its samples (so `system_load1{env="prod"}` works):
    names made Prometheus-safe; labels the controller sets itself are left alone."""
    out: dict[str, str] = {}
    for k, v in tags.items():
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in str(k))
        if name and not name[0].isdigit() and name not in ("machine_id", "__name__"):
            out[name] = "" if v is None else str(v)
    return out


def inventory_dict(inv: pb.Inventory) -> dict[str, Any]:
    d = MessageToDict(inv, preserving_proto_field_name=True)
    for k in ("memory_bytes", "swap_bytes"):
        if k in d:
            d[k] = int(d[k])
    for fs in d.get("filesystems", []):
        if "total_bytes" in fs:
            fs["total_bytes"] = int(fs["total_bytes"])
    return d


def _ack(seq: int) -> pb.ControllerMessage:
    return pb.ControllerMessage(batch_ack=pb.BatchAck(seq=seq))


def _compact(b: pb.MetricBatch, session: Session,
             labels_extra: Mapping[str, str]) -> Compact | None:
    """The batch's compact part, checked against what the stream defined; None if it has
    none. Raises _Refused for a batch that does not follow the protocol."""
    series, refs, values = b.series, b.refs, b.values
    if not (series or refs or values):
        return None
    defined = len(session.sids)
    defs: list[tuple[str, Mapping[str, str]]] = []
    for d in series:
        if d.ref != defined + len(defs):
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch {b.seq} defines series {d.ref}, expected "
                           f"{defined + len(defs)} (numbered from 0 on each stream, in order)")
        if not d.metric:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch {b.seq}: series {d.ref} has no metric name")
        defs.append((d.metric, {**d.labels, **labels_extra}))
    defined += len(defs)
    if defined > MAX_SERIES_PER_STREAM:
        raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"more than {MAX_SERIES_PER_STREAM} series on one stream")
    if len(refs) != len(values):
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                       f"batch {b.seq} has {len(refs)} series references for {len(values)} values")
    if refs and max(refs) >= defined:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                       f"batch {b.seq} uses series {max(refs)}, which this stream did not define")
    if b.time_ms < 0:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"batch {b.seq} has a negative time")
    return Compact(session.sids, defs, refs, values, b.time_ms)


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def Connect(self, request_iterator: AsyncIterator[pb.AgentMessage],
                      context: grpc.aio.ServicerContext) -> None:
        svc = self.services.agents
        ip = _peer_ip(context)
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        cns = auth.get("x509_common_name") or []
        if not pems or not cns:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a client certificate issued by this controller is required; "
                                "enrol first with a join token")
        agent_id = cns[0].decode()
        try:
            agent = svc.identify(agent_id, cert_serial(pems[0]), ip)
        except AgentError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
        # messages are read with context.read(), not by iterating request_iterator: grpc's
        # iterator (an async generator) holds the last message it gave until the next one
        # comes, ~2.6 KiB of parsed batch per agent for the 10 s between two batches
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            first = grpc.aio.EOF
        if first is grpc.aio.EOF or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        hello = first.hello
        if hello.agent_id and hello.agent_id != agent_id:
            claim = svc.refuse_claim(agent, hello.agent_id, ip)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, claim.message)
        session = Session(agent_id, agent["org"], ip)
        session.task = asyncio.current_task()
        session.context = context
        session.stored = session.acked = self.services.ingestor.acked(agent_id)
        self.services.registry.add(session)
        svc.connected(agent, ip, inventory_dict(hello.inventory), hello.agent_version,
                      hello.protocol_version)
        tags = metric_labels(agent.get("tags") or {})
        # a stream lives for days and a controller holds thousands: keep none of this, and of
        # the agent's document only its id and organisation (the service reads the rest)
        del auth, pems, cns, first, hello
        doc, agent = agent, {"id": agent_id, "org": agent["org"]}
        settings = self.services.settings
        refused: _Refused | None = None
        reason = "stream closed"
        try:
            sources = metric_sources(self.services.source_push.welcome(doc))
            del doc
            await session.write(pb.ControllerMessage(welcome=pb.Welcome(
                agent_id=agent_id, protocol_version=PROTOCOL_VERSION,
                config=pb.Config(metric_interval_s=settings.metric_interval, labels=tags,
                                 metric_sources=sources),
                acked_seq=session.acked, compact_metrics=True)))
            # the machine's tags (as labels) and its id on every sample, set here, not
            # trusted from the agent: also on spooled batches collected before the
            # configuration came down
            labels = {**tags, "machine_id": agent_id}
            del sources, tags
            await self._read(agent, session, context, labels)
            reason = "the agent closed the stream"
        except asyncio.CancelledError:
            if not session.ended:
                raise  # gRPC's: the peer is gone or the server stops
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            reason = session.reason
            if "revoked" in reason:
                refused = _Refused(grpc.StatusCode.PERMISSION_DENIED, reason)
        except AgentError as exc:  # audited by the service
            reason = f"agent stream error: {exc.message}"
            refused = _Refused(grpc.StatusCode.PERMISSION_DENIED, exc.message)
        except _Refused as exc:
            log.warning("agent %s: %s", agent_id, exc.message)
            reason = f"agent stream error: {exc.message}"
            refused = exc
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a broken stream (grpc's own errors included)
            reason = f"agent stream error: {exc}"
        finally:
            session.ended = True
            if session.ack_timer is not None:
                session.ack_timer.cancel()
                session.ack_timer = None
            session.context = None
            self.services.agentlink.stream_ended(agent_id, session)
            if self.services.registry.remove(session):
                self.services.agentlink.disconnected(agent_id)
                svc.disconnected(agent_id, reason)
        if refused is not None:
            await _abort(context, refused)

    async def _read(self, agent: dict[str, Any], session: Session,
                    context: grpc.aio.ServicerContext, labels_extra: dict[str, str]) -> None:
        svc = self.services.agents
        ingestor = self.services.ingestor
        read = context.read
        while (msg := await read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("body")
            svc.touch(agent)
            if kind == "metrics":
                b = msg.metrics
                seq = b.seq
                compact = _compact(b, session, labels_extra)
                session.note_clock(b.time_ms or max((s.time_ms for s in b.samples), default=0),
                                   time.time())
                samples = [(s.metric, {**s.labels, **labels_extra}, s.value, s.time_ms)
                           for s in b.samples if s.metric]
                ack_now = b.ack_now
                # the next batch comes in ~10 s: hold no reference to this one meanwhile (with
                # thousands of agents, ~50 KiB each of parsed samples and message)
                del msg, b
                stored = await ingestor.submit(agent["id"], agent["org"], seq, samples, compact)
                del samples, compact
                await self._stored(session, seq, stored, ack_now)
            elif kind == "inventory":
                svc.update_inventory(agent, inventory_dict(msg.inventory))
            elif kind == "renew":
                try:
                    cert, not_after = svc.renew(agent, msg.renew.csr_pem, session.ip)
                except AgentError as exc:  # audited by the service
                    log.warning("agent %s renewal refused: %s", agent["id"], exc.message)
                    continue
                await session.write(pb.ControllerMessage(renew=pb.RenewResponse(
                    certificate_pem=cert, not_after=_ts(not_after))))
            elif kind == "hello":
                if msg.hello.agent_id and msg.hello.agent_id != agent["id"]:
                    raise svc.refuse_claim(agent, msg.hello.agent_id, session.ip)
            elif kind is not None:
                # command output and results, shell data: matched only against what went
                # down this agent's own stream
                await self.services.agentlink.deliver(agent["id"], msg)

    async def _stored(self, session: Session, seq: int, stored: bool, ack_now: bool) -> None:
        """Batch ``seq`` is stored (or was already: a replay): acknowledge now, or later."""
        if seq > session.stored:
            session.stored = seq
        if session.stored <= session.acked:
            if not stored or ack_now:  # an old replay: the agent may not know what we have
                await session.write(_ack(session.stored))
            return
        if not stored or ack_now or session.stored - session.acked >= ACK_EVERY:
            await _send_ack(session)
        elif session.ack_timer is None:
            loop = asyncio.get_running_loop()
            session.ack_timer = loop.call_later(ACK_DELAY, _ack_later, session)


async def _send_ack(session: Session) -> None:
    if session.ack_timer is not None:
        session.ack_timer.cancel()
        session.ack_timer = None
    session.acked = session.stored
    await session.write(_ack(session.stored))


def _ack_later(session: Session) -> None:
    session.ack_timer = None
    if session.ended or session.stored <= session.acked:
        return

    async def send() -> None:
        try:
            await _send_ack(session)
        except Exception as exc:  # noqa: BLE001 - the stream ended meanwhile: nothing to do
            log.debug("agent %s: late acknowledgement not sent: %s", session.agent_id, exc)

    task = asyncio.get_running_loop().create_task(send())
    _late_acks.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(_late_acks.discard)


_late_acks: set[asyncio.Task[None]] = set()


async def _abort(context: grpc.aio.ServicerContext, refused: _Refused) -> NoReturn:
    await context.abort(refused.code, refused.message)
    raise AssertionError("unreachable")  # abort raises


def add_to_server(server: grpc.aio.Server, services: Services) -> None:
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(services), server)
