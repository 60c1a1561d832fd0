"""Simulated agents that also answer commands, for ``fanout_bench.py``.

The agents of ``common.py`` (``_SimAgent``, ``_SimWorker``: each its own key, certificate,
mutual-TLS channel and ``Connect`` stream, metric batches, the agent's backoff), plus what a
real agent does with a ``Command{run: RunScript}``, in one of two modes a worker switches
between (op ``mode``):

- ``execute``: each simulated agent has the real agent's script runner,
  ``agent.exec.Executor``: it checks the content's SHA-256, writes the script into a private
  temporary directory, starts it (``/bin/sh <script>`` for an ad-hoc command) in a session of
  its own, sends ``CommandStarted``, relays its output and sends ``CommandResult`` with the
  real exit code, then removes the directory. Every simulated agent's process runs on this
  machine: a run on N simulated agents starts N processes here at once;
- answer: the content's SHA-256 is checked as the agent does (a mismatch is answered with an
  error), then ``CommandStarted`` (pid 0) and ``CommandResult`` (exit 0) are sent at once,
  without starting a process.

Writes to a stream go through one lock per stream (grpc aio takes one write at a time per
call, as ``agent.control._Stream`` does): metric batches and command answers share it.
Each worker records, for every command, when it arrived (``time.time()``), when
``CommandStarted`` and ``CommandResult`` were written, and the exit code or error (op
``commands`` returns and clears them). The controller, the benchmark and the workers run on
one machine: their ``time.time()`` clocks are the same clock.

Workers are driven like common's (``SimPool``): JSON lines on stdin, one JSON answer each;
operations are the ``op_*`` methods of :class:`ExecSimWorker`."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import AgentFleet, SimPool, raise_nofile  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


class _LockedCall:
    """One write at a time on a stream (reads go to the call itself)."""

    __slots__ = ("call", "lock")

    def __init__(self, call: Any) -> None:
        import asyncio

        self.call = call
        self.lock = asyncio.Lock()

    async def write(self, data: Any) -> None:
        async with self.lock:
            await self.call.write(data)


class ExecSimAgent(common._SimAgent):
    __slots__ = ("stream", "executor")

    def __init__(self, w: Any, i: int, agent_id: str, key: bytes, cert: bytes) -> None:
        super().__init__(w, i, agent_id, key, cert)
        self.stream: _LockedCall | None = None
        self.executor: Any = None

    async def _stream(self, ch: Any, call: Any) -> None:
        import asyncio

        import grpc

        w = self.w
        locked = _LockedCall(call)
        self.stream = locked
        try:
            sender = asyncio.create_task(self._send(locked))
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    kind = msg.WhichOneof("body")
                    if kind == "batch_ack":
                        w.ack_msgs += 1
                        self._ack(msg.batch_ack.seq)
                    elif kind == "command":
                        w.command(self, msg.command)
                    elif kind == "cancel" and self.executor is not None:
                        self.executor.cancel(msg.cancel.command_id)
                    if sender.done():
                        sender.result()
            finally:
                sender.cancel()
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise ConnectionError(f"{code.name}: {await call.details()}")
            self.last_error = "stream ended by the controller (OK)"
        finally:
            self.stream = None
            await ch.close()


class ExecSimWorker(common._SimWorker):
    agent_class = ExecSimAgent

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.execute = bool(cfg.get("execute", False))
        # command id -> agent index -> [t_recv, t_started, t_done, exit_code, error]
        self.cmds: dict[str, dict[int, list[Any]]] = {}
        self.tasks: set[Any] = set()

    # ---- commands ---------------------------------------------------------------------
    def command(self, a: ExecSimAgent, cmd: Any) -> None:
        import asyncio

        rec = [time.time(), 0.0, 0.0, None, ""]
        self.cmds.setdefault(cmd.id, {})[a.i] = rec
        if self.execute:
            if a.executor is None:
                from agent.exec import Executor

                a.executor = Executor(lambda msg, a=a: self._send_up(a, msg))
            a.executor.start(cmd)
            return
        task = asyncio.create_task(self._answer(a, cmd))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_up(self, a: ExecSimAgent, msg: Any) -> None:
        """What a run says, on the agent's current stream (dropped while there is none, as
        the agent does); the times of CommandStarted and CommandResult recorded."""
        s = a.stream
        if s is None:
            return
        await s.write(msg.SerializeToString())  # the simulators' calls take bytes
        kind = msg.WhichOneof("body")
        if kind == "command_started":
            rec = self.cmds.get(msg.command_started.command_id, {}).get(a.i)
            if rec is not None:
                rec[1] = time.time()
        elif kind == "command_result":
            r = msg.command_result
            rec = self.cmds.get(r.command_id, {}).get(a.i)
            if rec is not None:
                rec[2] = time.time()
                rec[3] = None if r.error else r.exit_code
                rec[4] = r.error

    async def _answer(self, a: ExecSimAgent, cmd: Any) -> None:
        import hashlib

        from overcast.agent.v1 import agent_pb2 as pb

        result = pb.CommandResult(command_id=cmd.id)
        try:
            if cmd.WhichOneof("kind") != "run":
                result.error = "the command has no script to run"
            else:
                run = cmd.run
                digest = hashlib.sha256(run.content).hexdigest()
                if not run.sha256 or digest != run.sha256.lower():
                    result.error = (f"content does not match its sha256 (it hashes to {digest}, "
                                    f"expected {run.sha256}): not run")
                else:
                    await self._send_up(a, pb.AgentMessage(command_started=pb.CommandStarted(
                        command_id=cmd.id, pid=0)))
                    result.exit_code = 0
            await self._send_up(a, pb.AgentMessage(command_result=result))
        except Exception as exc:  # noqa: BLE001 - a broken stream: the result is lost
            common._sim_log(f"agent {a.i}: answering {cmd.id} failed: {exc}")

    # ---- operations -------------------------------------------------------------------
    def op_mode(self, execute: bool) -> dict[str, Any]:
        self.execute = bool(execute)
        return {"execute": self.execute}

    def op_commands(self) -> dict[str, Any]:
        """Every command's records since the last call (and clears them): per command id,
        rows [t_recv, t_started, t_done, exit_code, error] (times 0.0 when not reached)."""
        out = {cid: list(rows.values()) for cid, rows in self.cmds.items()}
        self.cmds = {}
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"commands": out, "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                "running": len(self.tasks) + sum(len(a.executor.running) for a in self.agents
                                                 if getattr(a, "executor", None) is not None)}

    async def op_quit(self) -> dict[str, Any]:
        import asyncio

        execs = [a.executor for a in self.agents if getattr(a, "executor", None) is not None]
        await asyncio.gather(*(e.close() for e in execs), return_exceptions=True)
        return await super().op_quit()


def simulator_main() -> int:
    """Entry point of a worker process (see ExecSimPool)."""
    import asyncio

    # before gRPC loads (as the agent does: see agent/exec.py): gRPC's fork handlers off
    import agent.exec  # noqa: F401

    raise_nofile()
    cfg = json.loads(sys.argv[1])
    try:
        return asyncio.run(common.serve_worker(cfg, ExecSimWorker))
    except KeyboardInterrupt:
        return 130


class ExecSimPool(SimPool):
    """common.SimPool with ExecSimWorker processes."""

    def __init__(self, workers: int, cfg: dict[str, Any], log_dir: Path) -> None:
        import queue
        import subprocess
        import threading

        self.procs = []
        self.queues = []
        self.logs = []
        self._n = 0
        code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import sim_exec; "
                "sys.exit(sim_exec.simulator_main())")
        for i in range(workers):
            log_path = log_dir / f"sim-{i}.log"
            self.logs.append(log_path)
            p = subprocess.Popen([sys.executable, "-c", code, json.dumps({**cfg, "index": i})],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(log_path, "w"), text=True, cwd=str(ROOT))  # noqa: SIM115
            q: queue.Queue[Any] = queue.Queue()
            threading.Thread(target=self._pump, args=(p, q), daemon=True).start()
            self.procs.append(p)
            self.queues.append(q)
        for i in range(workers):
            self._get(i, 120)  # {"ready": true}


class ExecFleet(AgentFleet):
    """common.AgentFleet whose simulators answer commands, enrolled with join tokens that
    carry ``tags`` (the machines of the agents get them)."""

    def start_simulators(self, agents: int, tags: dict[str, str] | None = None) -> None:
        h = self.controller.session()
        self.tokens = []
        for i in range(self.workers):
            r = h.post("/api/v2/agents/tokens", {"uses": math.ceil(agents / self.workers) + 10,
                                                 "ttl": 3600, "name": f"bench-{i}",
                                                 "tags": tags or {}})
            if r.status != 201:
                raise RuntimeError(f"POST /api/v2/agents/tokens answered {r.status}: {r.body}")
            self.tokens.append(str(r.body["token"]))
        self.pool = ExecSimPool(self.workers, self.sim_cfg, self.tmp)

    def enrol_each(self, counts: list[int], timeout: float = 600) -> list[dict[str, Any]]:
        """Each simulator enrols ``counts[i]`` more agents; their answers (``enrolled``: the
        simulator's total)."""
        assert self.pool is not None
        return self.pool.ask("enroll", [{"n": n, "url": self.controller.url, "token": tok}
                                        for n, tok in zip(counts, self.tokens, strict=True)],
                             timeout=timeout)
