"""The gRPC management API, through a real controller and an insecure channel: tokens in the
metadata, machines per organisation with search/sort/limit, and the live event stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.store import open_store
from controller.store.docs import dump
from overcast.api.v1 import management_pb2 as pb
from overcast.api.v1 import management_pb2_grpc as pb_grpc
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller

OTHER_EMAIL = "bob@globex.example.com"
OTHER_PASSWORD = "globex password 1"


def _machine(mid: str, name: str, state: str, env: str, created: str) -> dict[str, Any]:
    return {"id": mid, "name": name, "state": state, "tags": {"env": env},
            "public_ips": ["192.0.2." + mid[-1]], "cloud": "c1", "created": created}


ACME_MACHINES = [
    _machine("m-acme-1", "web-1", "running", "prod", "2026-01-01T00:00:00Z"),
    _machine("m-acme-2", "web-2", "stopped", "prod", "2026-01-02T00:00:00Z"),
    _machine("m-acme-3", "db-1", "running", "dev", "2026-01-03T00:00:00Z"),
]
GLOBEX_MACHINE = _machine("m-globex-1", "globex-secret", "running", "prod", "2026-01-04T00:00:00Z")


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller with two organisations (Acme, Globex) and machines in each, seeded in
    the store before it starts."""
    c = Controller(tmp_path_factory.mktemp("grpc"))
    acme = c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")["org"]["id"]
    globex = c.adduser(OTHER_EMAIL, OTHER_PASSWORD, "--org", "Globex")["org"]["id"]
    store = open_store(Path(c.data_dir) / "store")
    try:
        for m in ACME_MACHINES:
            store.put(machine_key(acme, m["id"]), dump(MACHINE, m))
        store.put(machine_key(globex, GLOBEX_MACHINE["id"]), dump(MACHINE, GLOBEX_MACHINE))
    finally:
        store.close()
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def token(ctl: Controller) -> str:
    return ctl.token(name="grpc tests")


@pytest.fixture(scope="module")
def stub(ctl: Controller) -> Iterator[pb_grpc.ManagementStub]:
    with grpc.insecure_channel(ctl.grpc_addr) as ch:
        yield pb_grpc.ManagementStub(ch)


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def code_of(fn: Any, *args: Any, **kw: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, timeout=10, **kw)
    return ei.value.code(), ei.value.details()


def denied_logs(ctl: Controller, token: str) -> list[dict[str, Any]]:
    r = ctl.http(token).get("/api/v2/logs?outcome=denied&allorgs=true&limit=1000")
    assert r.status == 200, r.body
    return list(r.body["data"])


# ---- Whoami and authentication ------------------------------------------------------------

def test_whoami_with_token(ctl: Controller, stub: pb_grpc.ManagementStub, token: str) -> None:
    r = stub.Whoami(pb.WhoamiRequest(), metadata=md(token), timeout=10)
    assert r.user.email == ADMIN_EMAIL
    assert r.user.is_admin
    assert r.org.name == "Acme" and r.org.id
    assert r.auth_kind == "token"
    assert r.token_id and r.token_id not in token  # the id, never the secret


def test_missing_token_is_unauthenticated(stub: pb_grpc.ManagementStub) -> None:
    code, details = code_of(stub.Whoami, pb.WhoamiRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in details.lower()


def test_wrong_token_is_unauthenticated_and_audited(ctl: Controller, stub: pb_grpc.ManagementStub,
                                                    token: str) -> None:
    before = {e["seq"] for e in denied_logs(ctl, token)}
    code, details = code_of(stub.Whoami, pb.WhoamiRequest(), metadata=md("oc_not-a-real-token"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid" in details
    new = [e for e in denied_logs(ctl, token) if e["seq"] not in before]
    refused = [e for e in new if e["action"] == "auth.refused"]
    assert refused, new
    assert refused[0]["outcome"] == "denied"
    assert refused[0]["source"] == {"via": "grpc", "ip": "127.0.0.1"}
    assert "oc_not-a-real-token" not in json.dumps(refused)  # the secret never enters the log


def test_revoked_token_is_unauthenticated(ctl: Controller, stub: pb_grpc.ManagementStub,
                                          token: str) -> None:
    h = ctl.session()
    r = h.post("/api/v2/auth/tokens", {"name": "to revoke over grpc"})
    assert r.status == 201, r.body
    doomed, doomed_id = r.body["token"], r.body["id"]
    assert stub.Whoami(pb.WhoamiRequest(), metadata=md(doomed), timeout=10).token_id == doomed_id
    assert h.delete(f"/api/v2/auth/tokens/{doomed_id}").status == 200
    code, details = code_of(stub.Whoami, pb.WhoamiRequest(), metadata=md(doomed))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in details
    reasons = [e["details"].get("reason", "") for e in denied_logs(ctl, token)
               if e["action"] == "auth.refused" and e["source"]["via"] == "grpc"]
    assert any("revoked" in r for r in reasons), reasons


def test_every_rpc_needs_a_token(stub: pb_grpc.ManagementStub) -> None:
    for call, req in ((stub.ListMachines, pb.ListMachinesRequest()),
                      (stub.GetMachine, pb.GetMachineRequest(id="m-acme-1"))):
        assert code_of(call, req)[0] == grpc.StatusCode.UNAUTHENTICATED
    stream = stub.WatchEvents(pb.WatchEventsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as ei:
        next(iter(stream))
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- machines -----------------------------------------------------------------------------

def test_list_machines_of_own_org_only(stub: pb_grpc.ManagementStub, token: str) -> None:
    r = stub.ListMachines(pb.ListMachinesRequest(), metadata=md(token), timeout=10)
    assert sorted(m.id for m in r.machines) == ["m-acme-1", "m-acme-2", "m-acme-3"]
    assert r.meta.total == 3 and r.meta.returned == 3
    web1 = next(m for m in r.machines if m.id == "m-acme-1")
    assert web1.name == "web-1" and web1.state == "running"
    assert dict(web1.tags) == {"env": "prod"}
    assert list(web1.public_ips) == ["192.0.2.1"]
    assert web1.created.ToJsonString().startswith("2026-01-01T00:00:00")


def test_list_machines_search_sort_limit(stub: pb_grpc.ManagementStub, token: str) -> None:
    r = stub.ListMachines(pb.ListMachinesRequest(search="state:running"), metadata=md(token), timeout=10)
    assert sorted(m.id for m in r.machines) == ["m-acme-1", "m-acme-3"]
    assert r.meta.total == 2

    r = stub.ListMachines(pb.ListMachinesRequest(search="tags.env:prod", sort="-name"),
                          metadata=md(token), timeout=10)
    assert [m.name for m in r.machines] == ["web-2", "web-1"]
    assert r.meta.sort == "-name"

    r = stub.ListMachines(pb.ListMachinesRequest(sort="name", limit=2), metadata=md(token), timeout=10)
    assert [m.name for m in r.machines] == ["db-1", "web-1"]
    assert r.meta.total == 3 and r.meta.returned == 2

    r = stub.ListMachines(pb.ListMachinesRequest(sort="name", limit=2, start="2"),
                          metadata=md(token), timeout=10)
    assert [m.name for m in r.machines] == ["web-2"]
    assert r.meta.start == "2"

    # another organisation's machine never matches, whatever the search
    r = stub.ListMachines(pb.ListMachinesRequest(search="globex"), metadata=md(token), timeout=10)
    assert list(r.machines) == [] and r.meta.total == 0


def test_bad_search_is_invalid_argument(stub: pb_grpc.ManagementStub, token: str) -> None:
    for search in ('name:"unterminated', "(state:running", "a OR"):
        code, details = code_of(stub.ListMachines, pb.ListMachinesRequest(search=search),
                                metadata=md(token))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (search, details)
        assert details
    code, _ = code_of(stub.ListMachines, pb.ListMachinesRequest(limit=100000), metadata=md(token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_get_machine(stub: pb_grpc.ManagementStub, token: str) -> None:
    m = stub.GetMachine(pb.GetMachineRequest(id="m-acme-2"), metadata=md(token), timeout=10)
    assert m.id == "m-acme-2" and m.name == "web-2" and m.state == "stopped"


def test_get_machine_of_other_org_or_unknown_is_not_found(ctl: Controller,
                                                          stub: pb_grpc.ManagementStub,
                                                          token: str) -> None:
    for mid in ("m-globex-1", "no-such-machine", "../m-acme-1"):
        code, details = code_of(stub.GetMachine, pb.GetMachineRequest(id=mid), metadata=md(token))
        assert code == grpc.StatusCode.NOT_FOUND, mid
        assert "globex-secret" not in details
    # and the Globex user sees theirs, not Acme's
    bob = ctl.token(OTHER_EMAIL, OTHER_PASSWORD, name="bob grpc")
    m = stub.GetMachine(pb.GetMachineRequest(id="m-globex-1"), metadata=md(bob), timeout=10)
    assert m.name == "globex-secret"
    assert code_of(stub.GetMachine, pb.GetMachineRequest(id="m-acme-1"),
                   metadata=md(bob))[0] == grpc.StatusCode.NOT_FOUND
    r = stub.ListMachines(pb.ListMachinesRequest(), metadata=md(bob), timeout=10)
    assert [x.id for x in r.machines] == ["m-globex-1"]


# ---- WatchEvents --------------------------------------------------------------------------

async def _collect(call: Any, until: Any, timeout: float = 10) -> list[pb.Event]:
    """Read events from the stream until ``until(events)`` holds."""
    got: list[pb.Event] = []

    async def reader() -> None:
        while not until(got):
            ev = await call.read()
            assert ev is not grpc.aio.EOF, f"the stream ended: {await call.code()}"
            got.append(ev)

    await asyncio.wait_for(reader(), timeout)
    return got


async def test_watch_events_streams_changes_of_own_org_only(ctl: Controller, token: str) -> None:
    bob = await asyncio.to_thread(ctl.token, OTHER_EMAIL, OTHER_PASSWORD, "bob watcher")
    async with grpc.aio.insecure_channel(ctl.grpc_addr) as ch:
        s = pb_grpc.ManagementStub(ch)
        acme_call = s.WatchEvents(pb.WatchEventsRequest(), metadata=md(token))
        globex_call = s.WatchEvents(pb.WatchEventsRequest(), metadata=md(bob))
        acme_ready = await acme_call.read()
        assert acme_ready.type == "ready" and acme_ready.org
        ready = await globex_call.read()
        assert ready.type == "ready" and ready.org

        # a change in Acme (a token created over REST)
        h = await asyncio.to_thread(ctl.session)
        r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"watched {time.time()}"})
        assert r.status == 201, r.body
        tid = r.body["id"]

        def saw_both(evs: list[pb.Event]) -> bool:
            return (any(e.type == "created" and e.kind == "token" and e.id == tid for e in evs)
                    and any(e.type == "audit" and e.data["action"] == "token.create"
                            and e.data["target"]["id"] == tid for e in evs))

        evs = await _collect(acme_call, saw_both)
        created = next(e for e in evs if e.type == "created" and e.kind == "token")
        assert created.org == acme_ready.org != ready.org
        assert created.time.seconds > 0
        audit = next(e for e in evs if e.type == "audit" and e.data["target"]["id"] == tid)
        assert audit.kind == "log"
        assert audit.data["details"]["token_name"].startswith("watched")
        assert audit.data["org"] == acme_ready.org

        # a change in Globex reaches the Globex stream (so it is alive) ...
        hb = await asyncio.to_thread(ctl.session, OTHER_EMAIL, OTHER_PASSWORD)
        r = await asyncio.to_thread(hb.post, "/api/v2/auth/tokens", {"name": "globex secret token"})
        assert r.status == 201, r.body
        gid = r.body["id"]
        gevs = await _collect(globex_call, lambda evs: any(e.id == gid for e in evs))
        assert all(e.id != tid for e in gevs), "Globex saw Acme's token"
        assert all(e.org == ready.org for e in gevs if e.type != "ready")

        # ... and a later Acme change arrives on the Acme stream with no Globex event before it
        r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"marker {time.time()}"})
        marker = r.body["id"]
        later = await _collect(acme_call, lambda evs: any(e.id == marker for e in evs))
        leaked = [e for e in later if e.id == gid or
                  (e.type == "audit" and e.data["target"]["id"] == gid)]
        assert not leaked, leaked
        acme_call.cancel()
        globex_call.cancel()


async def test_watch_events_kinds_filter(ctl: Controller, token: str) -> None:
    async with grpc.aio.insecure_channel(ctl.grpc_addr) as ch:
        s = pb_grpc.ManagementStub(ch)
        call = s.WatchEvents(pb.WatchEventsRequest(kinds=["token"]), metadata=md(token))
        assert (await call.read()).type == "ready"
        h = await asyncio.to_thread(ctl.session)
        r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"kinds {time.time()}"})
        tid = r.body["id"]
        r = await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")
        assert r.status == 200
        evs = await _collect(call, lambda evs: any(e.type == "changed" and e.id == tid for e in evs))
        assert {e.kind for e in evs} == {"token"}, [(e.type, e.kind) for e in evs]
        assert [e.type for e in evs if e.id == tid] == ["created", "changed"]
        call.cancel()


# ---- IPv6 ---------------------------------------------------------------------------------

def _free_port6() -> int | None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return None


def test_grpc_on_ipv6_loopback(tmp_path: Path) -> None:
    port = _free_port6()
    if port is None:
        pytest.skip("no IPv6 loopback here")
    c = Controller(tmp_path, {"OVERCAST_GRPC": f"[::1]:{port}"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    try:
        token = c.token()
        with grpc.insecure_channel(f"[::1]:{port}") as ch:
            s = pb_grpc.ManagementStub(ch)
            assert s.Whoami(pb.WhoamiRequest(), metadata=md(token), timeout=10).user.email == ADMIN_EMAIL
            assert code_of(s.Whoami, pb.WhoamiRequest(),
                           metadata=md("oc_wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
        refused = [e for e in denied_logs(c, token) if e["action"] == "auth.refused"]
        assert refused and refused[0]["source"] == {"via": "grpc", "ip": "::1"}
    finally:
        c.stop()


async def test_watch_events_ends_when_its_token_is_revoked(ctl: Controller) -> None:
    h = await asyncio.to_thread(ctl.session)
    r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"leaked {time.time()}"})
    secret, tid = r.body["token"], r.body["id"]
    async with grpc.aio.insecure_channel(ctl.grpc_addr) as ch:
        call = pb_grpc.ManagementStub(ch).WatchEvents(pb.WatchEventsRequest(), metadata=md(secret))
        assert (await call.read()).type == "ready"
        assert (await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")).status == 200
        r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"after {time.time()}"})
        after = r.body["id"]
        got: list[pb.Event] = []
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            while not any(e.id == after for e in got):
                ev = await asyncio.wait_for(call.read(), 10)
                assert ev is not grpc.aio.EOF
                got.append(ev)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (ei.value.details() or "")
        assert not any(e.id == after for e in got), "events reached a revoked token"
