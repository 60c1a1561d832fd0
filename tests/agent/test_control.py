"""Reconnection backoff: exponential, capped, and jittered so a fleet spreads out; batches in
the protocol's compact form; commands, cancels and shells over a real stream, beside metric
batches, and what a reconnect does to them."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import statistics
from pathlib import Path
from typing import Any

# first: it keeps gRPC's fork handlers off before gRPC loads (agent/exec.py)
from agent import control

# isort: split
import grpc
import pytest

from agent.control import BACKOFF_MAX, BACKOFF_MIN, backoff_delays
from agent.state import AgentState
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc


def test_backoff_grows_to_the_cap_and_never_exceeds_it() -> None:
    delays = list(itertools.islice(backoff_delays(random.Random(1)), 40))
    assert all(BACKOFF_MIN / 2 <= d <= BACKOFF_MAX for d in delays)
    assert max(delays[:3]) <= 4 * BACKOFF_MIN  # starts small
    assert max(delays[-10:]) > BACKOFF_MAX / 2  # and reaches the cap's range


def test_a_fleet_reconnecting_together_is_spread_out() -> None:
    # 10,000 agents losing the controller at the same moment: their 6th attempts are spread
    # over the whole window instead of landing together
    sixth = [next(itertools.islice(backoff_delays(random.Random(i)), 5, None)) for i in range(10_000)]
    assert statistics.pstdev(sixth) > 5
    buckets = [0] * 8
    for d in sixth:
        buckets[min(7, int(d / (max(sixth) / 8)))] += 1
    assert max(buckets) < 2 * min(buckets) + 200  # roughly uniform, no spike


def _batch(seq: int, rows: list[tuple[str, dict[str, str], float, int]]) -> pb.MetricBatch:
    return pb.MetricBatch(seq=seq, dropped=2, samples=[
        pb.Sample(metric=m, labels=labels, value=v, time_ms=t) for m, labels, v, t in rows])


def _expand(batches: list[pb.MetricBatch]) -> list[list[tuple[str, dict[str, str], float, int]]]:
    """What a controller makes of compact batches of one stream: the samples again."""
    series: dict[int, tuple[str, dict[str, str]]] = {}
    out = []
    for b in batches:
        for d in b.series:
            assert d.ref == len(series)  # numbered from 0, in order, once each
            series[d.ref] = (d.metric, dict(d.labels))
        assert len(b.refs) == len(b.values)
        rows = [(*series[r], v, b.time_ms) for r, v in zip(b.refs, b.values, strict=True)]
        rows += [(s.metric, dict(s.labels), s.value, s.time_ms) for s in b.samples]
        out.append(sorted(rows, key=repr))
    return out


def test_the_compact_form_says_what_the_samples_say() -> None:
    t = 1_800_000_000_000
    first = _batch(7, [("cpu_usage_idle", {"cpu": "cpu-total"}, 97.5, t),
                       ("cpu_usage_idle", {"cpu": "cpu0"}, 96.0, t),
                       ("mem_used_percent", {}, 41.0, t),
                       ("late", {"b": "2", "a": "1"}, 1.0, t + 5),  # another time: as it is
                       ("", {}, 3.0, t)])  # no metric: as it is (the controller drops it)
    second = _batch(8, [("mem_used_percent", {}, 42.0, t + 10_000),
                        ("cpu_usage_idle", {"cpu": "cpu0"}, 95.0, t + 10_000),
                        ("disk_free", {"path": "/"}, 5e9, t + 10_000)])
    table: control.SeriesTable = {}
    wire = [control.compact_batch(first, table), control.compact_batch(second, table)]
    assert [(w.seq, w.dropped) for w in wire] == [(7, 2), (8, 2)]
    assert [len(w.series) for w in wire] == [3, 1]  # each series defined once on the stream
    assert len(wire[0].samples) == 2 and not wire[1].samples
    assert _expand(wire) == _expand([first, second])
    # smaller on the wire once the series are defined
    assert wire[1].ByteSize() < second.ByteSize()
    # a new stream defines them again
    again = control.compact_batch(second, {})
    assert len(again.series) == 3 and _expand([again]) == _expand([second])
    assert control.compact_batch(pb.MetricBatch(seq=9), {}) == pb.MetricBatch(seq=9)


# ---- commands and shells over a real stream ----------------------------------------------

class FakeController(pb_grpc.AgentServiceServicer):
    """A plaintext AgentService that welcomes, acknowledges every batch, queues what comes up
    and sends down what a test asks (the real one is mutual TLS: tests/e2e)."""

    def __init__(self) -> None:
        self.up: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        self.seen: list[pb.AgentMessage] = []
        self.context: Any = None
        self.streams = 0
        self.end = asyncio.Event()
        self._writing = asyncio.Lock()  # one write at a time on a call, here too

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        hello = await context.read()
        await context.write(pb.ControllerMessage(welcome=pb.Welcome(agent_id=hello.hello.agent_id)))
        self.context, self.end = context, asyncio.Event()
        self.streams += 1
        reading = asyncio.ensure_future(self._read(context))
        await asyncio.wait([reading, asyncio.ensure_future(self.end.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()

    async def _read(self, context: Any) -> None:
        while (msg := await context.read()) is not grpc.aio.EOF:
            if msg.WhichOneof("body") == "metrics":
                await self.send(batch_ack=pb.BatchAck(seq=msg.metrics.seq))
            await self.up.put(msg)

    async def send(self, **body: Any) -> None:
        async with self._writing:
            await self.context.write(pb.ControllerMessage(**body))

    async def until(self, *ends: tuple[str, str], timeout: float = 20.0) -> list[pb.AgentMessage]:
        """Wait until each of ``ends`` (kind, command or session id) has come up; everything
        that came up so far."""
        def key(msg: pb.AgentMessage) -> tuple[str, str]:
            kind = msg.WhichOneof("body")
            body = getattr(msg, kind)
            return kind, getattr(body, "command_id", "") or getattr(body, "session_id", "")

        async with asyncio.timeout(timeout):
            while not set(ends) <= {key(m) for m in self.seen}:
                self.seen.append(await self.up.get())
        return self.seen


def _script(text: str, cid: str, **kw: Any) -> pb.Command:
    content = text.encode()
    return pb.Command(id=cid, run=pb.RunScript(content=content, **kw,
                                               sha256=hashlib.sha256(content).hexdigest()))


async def test_commands_and_shells_share_the_stream_with_metrics(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = grpc.aio.server()
    fake = FakeController()
    pb_grpc.add_AgentServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    state = AgentState(tmp_path / "state")
    state.agent_id, state.grpc_endpoint = "agent-1", f"127.0.0.1:{port}"
    agent = control.Agent(state, interval=0.05)  # batches all the time: writes compete
    monkeypatch.setattr(agent, "_channel", lambda: grpc.aio.insecure_channel(state.grpc_endpoint))
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 20)
        # a run with lots of output, a shell and a run to cancel, all at once
        await fake.send(command=_script("#!/bin/sh\nhead -c 600000 /dev/zero\necho end >&2\n", "big"))
        await fake.send(command=pb.Command(id="sh", shell=pb.OpenShell(session_id="s1", command="exec /bin/sh")))
        await fake.send(shell_data=pb.ShellData(session_id="s1", data=b"echo hi-$((1+1)); exit 3\n"))
        await fake.send(command=_script("#!/bin/sh\nexec sleep 300\n", "long"))
        await fake.until(("command_started", "long"))
        await fake.send(cancel=pb.CancelCommand(command_id="long"))
        seen = await fake.until(("command_result", "big"), ("command_result", "long"),
                                 ("shell_closed", "s1"))
        results = {m.command_result.command_id: m.command_result for m in seen
                   if m.WhichOneof("body") == "command_result"}
        assert results["big"].exit_code == 0 and results["long"].cancelled
        out = [m.command_output for m in seen if m.WhichOneof("body") == "command_output"]
        assert sum(len(o.data) for o in out if o.stream == pb.CommandOutput.STDOUT) == 600000
        assert b"end\n" in b"".join(o.data for o in out if o.stream == pb.CommandOutput.STDERR)
        shell = b"".join(m.shell_data.data for m in seen if m.WhichOneof("body") == "shell_data")
        assert b"hi-2" in shell
        [closed] = [m.shell_closed for m in seen if m.WhichOneof("body") == "shell_closed"]
        assert closed.exit_code == 3
        assert any(m.WhichOneof("body") == "metrics" for m in seen)

        # the stream ends: the shell goes with it, the run goes on and reports on the next one
        await fake.send(command=pb.Command(id="sh2", shell=pb.OpenShell(session_id="s2", command="sleep 100")))
        await fake.send(command=_script("#!/bin/sh\nsleep 1.5\necho after\n", "across"))
        await fake.until(("command_started", "across"))
        fake.end.set()
        async with asyncio.timeout(20):
            while fake.streams < 2 or agent.shells.open_sessions:
                await asyncio.sleep(0.05)
        seen = await fake.until(("command_result", "across"))
        assert seen[-1].command_result.exit_code == 0
        assert b"after\n" in b"".join(m.command_output.data for m in seen
                                      if m.WhichOneof("body") == "command_output")
        assert agent.executor.running == []
    finally:
        agent.stop()
        await asyncio.wait_for(running, 20)
        await server.stop(None)
