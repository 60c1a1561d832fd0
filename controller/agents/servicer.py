"""The agent gRPC service: Connect (mutual TLS, one stream per agent). The identity comes from
the client certificate only. Protobuf stops here. Enrolment is REST: agents/routes.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from controller.agents.model import PROTOCOL_VERSION
from controller.agents.registry import Session
from controller.agents.service import AgentError
from controller.pki import cert_serial
from controller.services import Services
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0


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


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def Connect(self, request_iterator: AsyncIterator[pb.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ControllerMessage]:
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
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), HELLO_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        hello = first.hello
        if hello.agent_id and hello.agent_id != agent_id:
            refused = svc.refuse_claim(agent, hello.agent_id, ip)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused.message)
        session = Session(agent_id, agent["org"], ip)
        self.services.registry.add(session)
        svc.connected(agent, ip, inventory_dict(hello.inventory), hello.agent_version,
                      hello.protocol_version)
        # a stream lives for days and a controller holds thousands: keep none of this
        del auth, pems, cns, first, hello
        settings = self.services.settings
        config = pb.Config(metric_interval_s=settings.metric_interval,
                           labels=metric_labels(agent.get("tags") or {}))
        yield pb.ControllerMessage(welcome=pb.Welcome(
            agent_id=agent_id, protocol_version=PROTOCOL_VERSION, config=config,
            acked_seq=self.services.ingestor.acked(agent_id)))
        reader = asyncio.create_task(self._read(agent, session, request_iterator))
        ended = asyncio.create_task(session.ended.wait())
        reason = "stream closed"
        get: asyncio.Task[Any] | None = None
        try:
            while True:
                get = asyncio.create_task(session.outbox.get())
                done, _ = await asyncio.wait({get, reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    yield get.result()
                    continue
                get.cancel()
                if ended in done:
                    reason = session.reason
                    break
                if reader in done:
                    err = reader.exception()
                    reason = f"agent stream error: {err}" if err else "the agent closed the stream"
                    break
        finally:
            for t in (get, reader, ended):
                if t is not None and not t.done():
                    t.cancel()
            if self.services.registry.remove(session):
                svc.disconnected(agent_id, reason)
        if session.ended.is_set() and "revoked" in session.reason:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, session.reason)
        if isinstance(reader.exception() if reader.done() and not reader.cancelled() else None, AgentError):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    async def _read(self, agent: dict[str, Any], session: Session,
                    stream: AsyncIterator[pb.AgentMessage]) -> None:
        svc = self.services.agents
        ingestor = self.services.ingestor
        # the machine's tags (as labels) and its id on every sample, set here, not trusted
        # from the agent: also on spooled batches collected before the configuration came down
        labels_extra = {**metric_labels(agent.get("tags") or {}), "machine_id": agent["id"]}
        async for msg in stream:
            kind = msg.WhichOneof("body")
            svc.touch(agent)
            if kind == "metrics":
                b = msg.metrics
                seq = b.seq
                samples = [(s.metric, {**s.labels, **labels_extra}, s.value, s.time_ms)
                           for s in b.samples if s.metric]
                # the next batch comes in ~10 s: hold no reference to this one meanwhile (with
                # thousands of agents, ~50 KiB each of parsed samples and message)
                del msg, b
                await ingestor.submit(agent["id"], agent["org"], seq, samples)
                del samples
                await session.outbox.put(pb.ControllerMessage(batch_ack=pb.BatchAck(seq=seq)))
            elif kind == "inventory":
                svc.update_inventory(agent, inventory_dict(msg.inventory))
            elif kind == "renew":
                try:
                    cert, not_after = svc.renew(agent, msg.renew.csr_pem, session.ip)
                except AgentError as exc:  # audited by the service
                    log.warning("agent %s renewal refused: %s", agent["id"], exc.message)
                    continue
                await session.outbox.put(pb.ControllerMessage(renew=pb.RenewResponse(
                    certificate_pem=cert, not_after=_ts(not_after))))
            elif kind == "hello":
                if msg.hello.agent_id and msg.hello.agent_id != agent["id"]:
                    raise svc.refuse_claim(agent, msg.hello.agent_id, session.ip)
            else:
                # command results and shells arrive with the exec issue
                log.debug("agent %s sent %s, not handled yet", agent["id"], kind)


def add_to_server(server: grpc.aio.Server, services: Services) -> None:
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(services), server)
