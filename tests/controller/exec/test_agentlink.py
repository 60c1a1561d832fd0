"""The controller's half of runs and shells on agent streams, against streams that answer
like agents: one broadcast, results gathered as they come, a result only from the agent the
command went to, cancel, no answer, and shells that end with the stream they ran on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from controller.agents.registry import Registry, Session
from controller.exec.agentlink import AgentLink
from controller.exec.model import Payload, sha256_hex
from overcast.agent.v1 import agent_pb2 as pb

pytestmark = pytest.mark.asyncio


class Stream:
    """A session's gRPC context: what the controller writes, and an agent that answers."""

    def __init__(self, answer: Callable[[pb.ControllerMessage], Any] | None = None) -> None:
        self.sent: list[pb.ControllerMessage] = []
        self.answer = answer

    async def write(self, msg: pb.ControllerMessage) -> None:
        self.sent.append(msg)
        if self.answer is not None:
            asyncio.get_running_loop().call_soon(self.answer, msg)


def connect(registry: Registry, agent_id: str, stream: Stream) -> Session:
    s = Session(agent_id, "org", "127.0.0.1")
    s.context = stream
    registry.add(s)
    return s


class Sink:
    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def output(self, stream: str, data: bytes) -> None:
        self.parts.append((stream, data))


def payload(text: bytes = b"true", timeout: float = 5, max_output: int = 1 << 20) -> Payload:
    return Payload(content=text, sha256=sha256_hex(text), interpreter="/bin/sh",
                   timeout=timeout, max_output=max_output)


def agent_answering(link: AgentLink, agent_id: str, code: int = 0, out: bytes = b"",
                    claim: str = "") -> Callable[[pb.ControllerMessage], Any]:
    """An agent that runs every command at once: output, then the exit code. ``claim``:
    it answers in another agent's name (it cannot: the link is told who sent it)."""
    def answer(msg: pb.ControllerMessage) -> None:
        if msg.WhichOneof("body") != "command":
            return
        cid = msg.command.id

        async def go() -> None:
            sender = agent_id
            if out:
                await link.deliver(sender, pb.AgentMessage(command_output=pb.CommandOutput(
                    command_id=cid, stream=pb.CommandOutput.STDOUT, data=out)))
            await link.deliver(sender, pb.AgentMessage(command_result=pb.CommandResult(
                command_id=cid, exit_code=code)))
        asyncio.get_running_loop().create_task(go())
    return answer


async def test_one_broadcast_gathers_every_result_and_only_from_its_own_agent() -> None:
    registry = Registry()
    link = AgentLink(registry)
    streams = {f"a{i}": Stream() for i in range(50)}
    for aid, st in streams.items():
        st.answer = agent_answering(link, aid, code=int(aid[1:]) % 3, out=aid.encode())
        connect(registry, aid, st)
    sinks: dict[str, Sink] = {}
    seen: list[str] = []
    results = await link.run_many(list(streams) + ["gone"], payload(),
                                  lambda aid: sinks.setdefault(aid, Sink()),
                                  on_result=lambda aid, r: seen.append(aid))
    # the very same command went down every stream
    ids = {st.sent[0].command.id for st in streams.values()}
    assert len(ids) == 1 and all(len(st.sent) == 1 for st in streams.values())
    assert {aid: r.exit_code for aid, r in results.items() if aid != "gone"} == {
        aid: int(aid[1:]) % 3 for aid in streams}
    assert sinks["a7"].parts == [("stdout", b"a7")]
    assert "not connected" in results["gone"].error and sorted(seen) == sorted(results)
    # a result for a command that went to a different agent changes nothing
    await link.deliver("a1", pb.AgentMessage(command_result=pb.CommandResult(
        command_id=ids.pop(), exit_code=99)))
    assert results["a1"].exit_code == 1


async def test_an_agent_that_never_answers_and_a_cancel() -> None:
    registry = Registry()
    link = AgentLink(registry)
    silent = Stream()
    connect(registry, "quiet", silent)
    import controller.exec.agentlink as al

    old = al.RESULT_GRACE
    al.RESULT_GRACE = 0.2
    try:
        r = (await link.run_many(["quiet"], payload(timeout=0.1), lambda _: Sink()))["quiet"]
        assert r.timed_out and "no result" in r.error
        cancel = asyncio.Event()
        task = asyncio.create_task(link.run_many(["quiet"], payload(timeout=30), lambda _: Sink(),
                                                 cancel))
        await asyncio.sleep(0.05)
        cancel.set()
        r = (await asyncio.wait_for(task, 5))["quiet"]
        assert r.cancelled
        assert silent.sent[-1].WhichOneof("body") == "cancel"
        assert silent.sent[-1].cancel.command_id == silent.sent[-2].command.id
    finally:
        al.RESULT_GRACE = old


async def test_output_past_the_limit_is_counted_not_kept() -> None:
    registry = Registry()
    link = AgentLink(registry)
    st = Stream()
    st.answer = agent_answering(link, "a", out=b"x" * 100)
    connect(registry, "a", st)
    sink = Sink()
    r = (await link.run_many(["a"], payload(max_output=10), lambda _: sink))["a"]
    assert sink.parts == [("stdout", b"x" * 10)] and r.truncated and r.output_bytes == 100


async def test_shells_end_with_the_stream_they_ran_on_not_with_a_newer_one() -> None:
    registry = Registry()
    link = AgentLink(registry)

    def opened(aid: str) -> Callable[[pb.ControllerMessage], Any]:
        def answer(msg: pb.ControllerMessage) -> None:
            if msg.WhichOneof("body") == "command":
                sid = msg.command.shell.session_id
                asyncio.get_running_loop().create_task(link.deliver(aid, pb.AgentMessage(
                    shell_data=pb.ShellData(session_id=sid, data=b"$ "))))
        return answer

    old = connect(registry, "a", Stream(opened("a")))
    first = await link.open_shell("a", "xterm", 80, 24)
    assert await first.read() == b"$ "
    new = connect(registry, "a", Stream(opened("a")))  # the agent reconnected
    second = await link.open_shell("a", "xterm", 80, 24)
    link.stream_ended("a", old)
    assert await asyncio.wait_for(first.read(), 1) is None and "ended" in first.error
    assert await second.read() == b"$ "
    # data for the ended shell, or sent in another agent's name, goes nowhere
    await link.deliver("b", pb.AgentMessage(shell_data=pb.ShellData(
        session_id=second.session_id, data=b"forged")))
    second.write(b"ls\n")
    await asyncio.sleep(0.01)
    assert new.context.sent[-1].shell_data.data == b"ls\n"
    await link.deliver("a", pb.AgentMessage(shell_closed=pb.ShellClosed(
        session_id=second.session_id, exit_code=3)))
    assert await second.read() is None and second.exit_code == 3
