"""The Management service: parse the request, call the domain, build the reply. Protobuf
objects stop here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from controller.accounts.model import Principal
from controller.errors import Forbidden, Unauthenticated
from controller.grpcapi.errors import mapped, mapped_stream
from controller.listing import parse_query
from controller.monitor.query import evaluate
from controller.services import Services
from controller.timeutil import parse_iso
from overcast.api.v1 import management_pb2 as pb
from overcast.api.v1 import management_pb2_grpc as pb_grpc


def _ts(value: Any) -> Timestamp | None:
    if not value:
        return None
    ts = Timestamp()
    try:
        ts.FromNanoseconds(int((float(value) if isinstance(value, int | float) else parse_iso(str(value))) * 1e9))
    except ValueError:
        return None
    return ts


def _struct(d: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(d)
    return s


def machine_pb(m: dict[str, Any]) -> pb.Machine:
    msg = pb.Machine(
        id=m["id"], external_id=str(m.get("external_id", "")), name=str(m.get("name", "")),
        cloud=str(m.get("cloud", "")), state=str(m.get("state", "")),
        hostname=str(m.get("hostname", "")),
        public_ips=[str(x) for x in m.get("public_ips", [])],
        private_ips=[str(x) for x in m.get("private_ips", [])],
        tags={str(k): "" if v is None else str(v) for k, v in (m.get("tags") or {}).items()},
        size=str(m.get("size", "")), image=str(m.get("image", "")),
        location=str(m.get("location", "")), os_type=str(m.get("os_type", "")),
        cores=float(m.get("cores") or 0), owned_by=str(m.get("owned_by", "")),
        created_by=str(m.get("created_by", "")),
    )
    for name in ("created", "last_seen", "unreachable_since", "missing_since"):
        ts = _ts(m.get(name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    if m.get("extra"):
        msg.extra.CopyFrom(_struct(m["extra"]))
    return msg


class ManagementServicer(pb_grpc.ManagementServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    def _auth(self, context: grpc.aio.ServicerContext) -> Principal:
        header = _authorization(context)
        peer = unquote(context.peer() or "")  # grpc percent-encodes the brackets of IPv6
        # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000": the address between the scheme and the port
        ip = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if peer.count(":") >= 2 else peer
        if not header:
            raise Unauthenticated("send 'authorization: Bearer <token>' metadata")
        token = header[7:].strip() if header[:7].lower() == "bearer " else header.strip()
        try:
            return self.services.accounts.resolve_token(token)
        except Unauthenticated as exc:
            self.services.accounts.audit_refused(ip, "grpc", exc, "token")
            raise

    @mapped
    async def Whoami(self, request: pb.WhoamiRequest, context: grpc.aio.ServicerContext) -> pb.WhoamiResponse:
        p = self._auth(context)
        return pb.WhoamiResponse(
            user=pb.User(id=p.user_id, email=p.user["email"], is_admin=p.is_admin),
            org=pb.Org(id=p.org_id, name=p.org["name"] if p.org else ""),
            auth_kind=p.auth, token_id=p.credential_id)

    @mapped
    async def ListMachines(self, request: pb.ListMachinesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListMachinesResponse:
        p = self._auth(context)
        params = {k: v for k, v in (("search", request.search), ("sort", request.sort),
                                    ("start", request.start),
                                    ("limit", str(request.limit) if request.limit else "")) if v}
        data, meta = self.services.machines.list(p, parse_query(params))
        return pb.ListMachinesResponse(
            machines=[machine_pb(m) for m in data],
            meta=pb.ListMeta(total=meta["total"], returned=meta["returned"],
                             start=str(meta["start"]), sort=meta["sort"]))

    @mapped
    async def GetMachine(self, request: pb.GetMachineRequest, context: grpc.aio.ServicerContext) -> pb.Machine:
        p = self._auth(context)
        return machine_pb(self.services.machines.get(p, request.id))

    @mapped
    async def GetDatapoints(self, request: pb.GetDatapointsRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetDatapointsResponse:
        p = self._auth(context)
        r = await asyncio.to_thread(evaluate, self.services.tsdb, p.org_id, request.query,
                                    start=request.start, end=request.end, step=request.step,
                                    at=request.time)
        data = r["data"]
        out = pb.GetDatapointsResponse(result_type=data["resultType"])
        for item in data["result"]:
            points = [item["value"]] if "value" in item else item["values"]
            out.series.append(pb.TimeSeries(
                labels=item["metric"],
                points=[pb.Point(time=float(t), value=float(v)) for t, v in points]))
        return out

    @mapped_stream
    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Event]:
        p = self._auth(context)
        if not p.org_id:  # the events of no organisation are the platform's, not anyone's
            raise Forbidden("you belong to no organisation: there are no events to watch")
        header = _authorization(context)
        token = header[7:].strip() if header[:7].lower() == "bearer " else header.strip()
        sub = self.services.bus.subscribe(p.org_id, list(request.kinds))
        try:
            yield pb.Event(type="ready", org=p.org_id)
            async for ev in sub:
                # a token revoked meanwhile ends the stream (UNAUTHENTICATED): nothing more
                # reaches whoever holds it
                self.services.accounts.resolve_token(token)
                msg = pb.Event(type=ev.type, kind=ev.kind, id=ev.id, org=ev.org)
                ts = _ts(ev.time)
                if ts is not None:
                    msg.time.CopyFrom(ts)
                if ev.data:
                    msg.data.CopyFrom(_struct(_jsonable(ev.data)))
                yield msg
        finally:
            sub.close()


def _authorization(context: grpc.aio.ServicerContext) -> str:
    md = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
    return str(md.get("authorization") or "")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))  # Struct takes JSON types only


def add_to_server(server: grpc.aio.Server, services: Services) -> None:
    pb_grpc.add_ManagementServicer_to_server(ManagementServicer(services), server)
