"""The agent protocol's compact metric form and cumulative acknowledgements, on the wire
against a real controller: series defined once per stream then sent as references and
values (mixed with the first form in one batch), labels added by the controller, batches
acknowledged every few (at once when asked, or when replayed), and batches that do not
follow the protocol refused without storing anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.agents.servicer import ACK_EVERY
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.support.agents import AgentProc, join_token
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("agproto"))
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Proto")
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def admin(ctl: Controller) -> Http:
    return ctl.http(ctl.token(name="agproto"))


class Stream:
    """One agent's Connect stream, driven by hand (grpc.aio)."""

    def __init__(self, ctl: Controller, agent: AgentProc) -> None:
        ca = (ctl.data_dir / "pki" / "ca.crt").read_bytes()
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=(agent.state_dir / "key.pem").read_bytes(),
            certificate_chain=(agent.state_dir / "cert.pem").read_bytes())
        self.channel = grpc.aio.secure_channel(f"127.0.0.1:{ctl.agents_port}", creds)
        self.call: Any = pb_grpc.AgentServiceStub(self.channel).Connect()
        self.agent_id = agent.agent_id
        self._reading: asyncio.Future[Any] | None = None

    async def hello(self) -> pb.Welcome:
        await self.call.write(pb.AgentMessage(hello=pb.Hello(agent_id=self.agent_id,
                                                              protocol_version=1)))
        first = await self.call.read()
        assert first.WhichOneof("body") == "welcome", first
        return first.welcome  # type: ignore[no-any-return]

    async def send(self, batch: pb.MetricBatch) -> None:
        await self.call.write(pb.AgentMessage(metrics=batch))

    async def ack(self, timeout: float) -> int | None:
        """The next BatchAck's seq, None if none comes within ``timeout`` (the read goes on:
        cancelling a read would cancel the stream)."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait({self._reading}, timeout=timeout)
        if not done:
            return None
        msg, self._reading = self._reading.result(), None
        assert msg is not grpc.aio.EOF and msg.WhichOneof("body") == "batch_ack", msg
        return int(msg.batch_ack.seq)

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """How the controller ended the stream."""
        try:
            if self._reading is not None:
                await self._reading
            while (await self.call.read()) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return await self.call.code(), await self.call.details()

    async def close(self) -> None:
        self.call.cancel()
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)
        await self.channel.close()


def _enrolled(ctl: Controller, admin: Http, tmp_path: Path, name: str) -> AgentProc:
    a = AgentProc(ctl, tmp_path / name, hostname=name)
    r = a.enrol(join_token(admin, tags="env=proto")["token"])
    assert r.returncode == 0, r.stderr
    return a


def _value(admin: Http, query: str, t_ms: int) -> dict[str, float]:
    """An instant query at t_ms: the value of each series, by its labels."""
    r = admin.get(f"/api/v2/datapoints?query={query}&time={t_ms / 1000:.3f}")
    assert r.status == 200, r.body
    return {",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"):
            float(s["value"][1]) for s in r.body["data"]["data"]["result"]}


def test_compact_batches_are_stored_and_acknowledged_every_few(ctl: Controller, admin: Http,
                                                               tmp_path: Path) -> None:
    a = _enrolled(ctl, admin, tmp_path, "compact")
    t0 = (int(time.time()) - 600) * 1000

    async def run() -> None:
        s = Stream(ctl, a)
        try:
            welcome = await s.hello()
            assert welcome.compact_metrics and welcome.acked_seq == 0
            defs = [pb.SeriesDef(ref=0, metric="proto_load", labels={"cpu": "cpu-total"}),
                    pb.SeriesDef(ref=1, metric="proto_mem")]
            await s.send(pb.MetricBatch(seq=1, series=defs, refs=[0, 1], values=[1.5, 10.0],
                                        time_ms=t0))
            # stored, but acknowledged later, with a few more
            assert await s.ack(1.5) is None
            for seq in range(2, ACK_EVERY + 1):
                await s.send(pb.MetricBatch(seq=seq, refs=[1, 0], values=[10.0 + seq, seq],
                                            time_ms=t0 + (seq - 1) * 10_000))
            assert await s.ack(10) == ACK_EVERY  # one acknowledgement for all of them
            # asked for: at once; the first form and the compact one in the same batch
            seq = ACK_EVERY + 1
            await s.send(pb.MetricBatch(
                seq=seq, refs=[0], values=[42.0], time_ms=t0 + 100_000, ack_now=True,
                samples=[pb.Sample(metric="proto_other", labels={"x": "y"}, value=7.0,
                                   time_ms=t0 + 100_000)]))
            assert await s.ack(10) == seq
        finally:
            await s.close()

    asyncio.run(run())
    mid = a.agent_id
    load = _value(admin, f'proto_load{{machine_id="{mid}"}}', t0)
    assert load == {f"cpu=cpu-total,env=proto,machine_id={mid}": 1.5}  # tags and id added
    assert _value(admin, f'proto_mem{{machine_id="{mid}"}}', t0 + 20_000) == {
        f"env=proto,machine_id={mid}": 13.0}
    assert list(_value(admin, f'proto_load{{machine_id="{mid}"}}', t0 + 100_000).values()) == [42.0]
    assert list(_value(admin, f'proto_other{{machine_id="{mid}"}}', t0 + 100_000).values()) == [7.0]


def test_series_belong_to_their_stream_and_replays_are_acknowledged_at_once(
        ctl: Controller, admin: Http, tmp_path: Path) -> None:
    a = _enrolled(ctl, admin, tmp_path, "replay")
    t0 = (int(time.time()) - 600) * 1000
    defs = [pb.SeriesDef(ref=0, metric="proto_replay")]

    async def run() -> None:
        s = Stream(ctl, a)
        try:
            await s.hello()
            await s.send(pb.MetricBatch(seq=1, series=defs, refs=[0], values=[1.0], time_ms=t0))
            await s.send(pb.MetricBatch(seq=2, refs=[0], values=[2.0], time_ms=t0 + 10_000))
            assert await s.ack(1.5) is None
        finally:
            await s.close()
        # the agent did not hear about 1 and 2; the Welcome says they are stored
        s = Stream(ctl, a)
        try:
            for _ in range(50):
                welcome = await s.hello()
                if welcome.acked_seq == 2:
                    break
                await s.close()  # the first stream's batches are not stored yet: again
                await asyncio.sleep(0.1)
                s = Stream(ctl, a)
            assert welcome.acked_seq == 2
            # a batch sent again is acknowledged at once; its definitions count on this stream
            await s.send(pb.MetricBatch(seq=2, series=defs, refs=[0], values=[2.0],
                                        time_ms=t0 + 10_000))
            assert await s.ack(10) == 2
            await s.send(pb.MetricBatch(seq=3, refs=[0], values=[3.0], time_ms=t0 + 20_000,
                                        ack_now=True))
            assert await s.ack(10) == 3
        finally:
            await s.close()
        # a new stream starts with no series: a reference it did not define is refused
        s = Stream(ctl, a)
        try:
            await s.hello()
            await s.send(pb.MetricBatch(seq=4, refs=[0], values=[4.0], time_ms=t0 + 30_000))
            code, details = await s.status()
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "did not define" in details
        finally:
            await s.close()

    asyncio.run(run())
    values = [_value(admin, f'proto_replay{{machine_id="{a.agent_id}"}}', t0 + k * 10_000)
              for k in range(4)]
    assert [list(v.values()) for v in values] == [[1.0], [2.0], [3.0], [3.0]]  # 4 not stored


@pytest.mark.parametrize(("batch", "message"), [
    (pb.MetricBatch(seq=1, series=[pb.SeriesDef(ref=1, metric="m")], refs=[1], values=[1.0],
                    time_ms=1), "expected 0"),
    (pb.MetricBatch(seq=1, series=[pb.SeriesDef(ref=0)], refs=[0], values=[1.0], time_ms=1),
     "no metric name"),
    (pb.MetricBatch(seq=1, series=[pb.SeriesDef(ref=0, metric="m")], refs=[0, 0], values=[1.0],
                    time_ms=1), "2 series references for 1 values"),
    (pb.MetricBatch(seq=1, series=[pb.SeriesDef(ref=0, metric="m")], refs=[0], values=[1.0],
                    time_ms=-5), "negative time"),
])
def test_batches_that_do_not_follow_the_protocol_end_the_stream(
        ctl: Controller, admin: Http, tmp_path: Path, batch: pb.MetricBatch, message: str) -> None:
    a = _enrolled(ctl, admin, tmp_path, "bad")

    async def run() -> tuple[grpc.StatusCode, str, int]:
        s = Stream(ctl, a)
        try:
            await s.hello()
            await s.send(batch)
            code, details = await s.status()
        finally:
            await s.close()
        s = Stream(ctl, a)
        try:
            return code, details, (await s.hello()).acked_seq
        finally:
            await s.close()

    code, details, acked = asyncio.run(run())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert acked == 0  # nothing of it was stored
    assert ctl.http().get("/api/v2/health").status == 200
