"""Running scripts and ad-hoc commands on machines, as one job per request.

The request is checked first (every machine exists in the caller's organisation and can be
reached: an agent that is connected, else an associated SSH key — a 422 naming the machines
that cannot be reached otherwise); then the job runs in the background: all agent targets in
one broadcast over their streams, the SSH targets concurrently (at most SSH_PARALLEL at a
time), results gathered as they arrive. Output is published live as ``output`` events of the
job (and kept with it, at most ``exec_max_output`` bytes per machine, then marked truncated);
``GET /api/v2/jobs/{id}/output`` reads it back. A cancel kills the process group on every
target still running. The outcome is audited once per run (who, what, which machines, exit
codes); environment values never reach the job, the audit or the log — only their names."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from controller.accounts.model import Principal
from controller.errors import Invalid, OvercastError
from controller.events.bus import EventBus
from controller.events.model import Actor, Event
from controller.events.writer import Change, Writer
from controller.exec.agentlink import AgentLink
from controller.exec.model import MAX_TIMEOUT, Payload, RunResult, sha256_hex
from controller.exec.targets import Route, Targets, assoc_key
from controller.jobs.service import JobHandle, JobService
from controller.settings import Settings
from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

SSH_PARALLEL = 64            # SSH connections one run keeps open at once
FLUSH_EVERY = 0.5            # seconds between writes of a running job's output to the store
MAX_ENV = 64
MAX_COMMAND = 64 * 1024
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
_ENV_NAME = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def output_key(org: str, job_id: str, seq: int) -> str:
    """One chunk of a run's output: written once, in order (``seq`` from 1)."""
    return f"jobout/{org}/{job_id}/{seq:010d}"


def parse_env(value: Any) -> dict[str, str]:
    """Mist's ``env`` ("A=1\\nB=two words", one per line) or an object; names checked."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for line in value.splitlines():
            if line.strip():
                name, eq, v = line.strip().partition("=")
                if not eq:
                    raise Invalid("env: each line must be NAME=value", field="env")
                pairs.append((name, v))
    else:
        raise Invalid("env must be NAME=value lines or an object", field="env")
    if len(pairs) > MAX_ENV:
        raise Invalid(f"env: at most {MAX_ENV} variables", field="env")
    out: dict[str, str] = {}
    for name, v in pairs:
        if not name or name[0].isdigit() or not set(name) <= _ENV_NAME:
            raise Invalid(f"env: {name[:64]!r} is not a variable name", field="env")
        if not isinstance(v, str | int | float | bool) or "\0" in str(v):
            raise Invalid(f"env: the value of {name} must be text", field="env")
        out[name] = str(v)
    return out


def parse_args(value: Any) -> tuple[str, ...]:
    """Mist's ``params`` (one string, split like a shell would) or a list of arguments."""
    if value is None or value == "":
        return ()
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return tuple(value)
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise Invalid(f"params: {exc}", field="params") from None
    raise Invalid("params must be a string or a list of strings", field="params")


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


@dataclass
class _Target:
    """One machine of a running job: its route, its output so far, its outcome."""

    route: Route
    kept: int = 0
    result: RunResult | None = None
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    def summary(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {"machine": self.route.machine["id"], "name": self.route.name,
                               "via": self.route.via}
        if r is None:
            return dict(out, status="running")
        ok = r.exit_code == 0 and not r.error
        return dict(out, status="succeeded" if ok else "failed", exit_code=r.exit_code,
                    error=r.error, timed_out=r.timed_out, cancelled=r.cancelled,
                    truncated=r.truncated, output_bytes=r.output_bytes,
                    seconds=round((self.finished or time.time()) - self.started, 3))


def worst_exit(results: list[dict[str, Any]]) -> int:
    """The exit status of a run on many machines: the worst one (255 for a machine that gave
    none, as ssh does when it cannot connect)."""
    worst = 0
    for r in results:
        code = r.get("exit_code")
        if r.get("status") == "running":
            continue
        if code is None or r.get("error"):
            code = 255 if code in (None, 0) else code
        if code < 0:
            code = 128 - code  # killed by a signal: like a shell says it
        worst = max(worst, min(int(code), 255))
    return worst


class ExecService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, bus: EventBus,
                 jobs: JobService, targets: Targets, link: AgentLink) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.bus = bus
        self.jobs = jobs
        self.targets = targets
        self.link = link

    # ---- requests -------------------------------------------------------------------------
    def payload(self, body: dict[str, Any], content: bytes, sha256: str, *,
                entrypoint: str = "", interpreter: str = "", ansible: bool = False) -> Payload:
        timeout = body.get("timeout")
        if timeout is None or timeout == "":
            seconds = float(self.settings.exec_timeout)
        else:
            try:
                seconds = float(timeout)
            except (TypeError, ValueError):
                raise Invalid("timeout must be a number of seconds", field="timeout") from None
            if not 0 < seconds <= MAX_TIMEOUT:
                raise Invalid(f"timeout must be between 1 and {int(MAX_TIMEOUT)} seconds",
                              field="timeout")
        user = str(body.get("user") or "")
        if user and not _USER.match(user):
            raise Invalid("user must be a login name", field="user")
        return Payload(content=content, sha256=sha256, args=parse_args(body.get("params")),
                       env=parse_env(body.get("env")), interpreter=interpreter,
                       entrypoint=entrypoint, ansible=ansible, su=_flag(body.get("su")),
                       user=user, timeout=seconds, max_output=self.settings.exec_max_output)

    def routes(self, p: Principal, body: dict[str, Any]) -> list[Route]:
        """The machines a request names (``machine``, and/or ``machines``: ids, names,
        ``tag:key=value``), each with how to reach it; Invalid naming those that cannot be."""
        refs: list[str] = []
        if body.get("machine"):
            refs.append(str(body["machine"]))
        more = body.get("machines") or []
        if isinstance(more, str):
            more = [m for m in more.split(",") if m.strip()]
        if not isinstance(more, list) or not all(isinstance(m, str) for m in more):
            raise Invalid("machines must be a list of machine ids, names or tag:key=value",
                          field="machines")
        refs.extend(more)
        if not refs:
            raise Invalid("machine is required (or machines: ids, names or tag:key=value)",
                          field="machine")
        routes = [self.targets.route(m) for m in self.targets.select(p, refs)]
        lost = [r for r in routes if r.why]
        if lost:
            names = "; ".join(f"{r.name}: {r.why}" for r in lost[:5])
            more_text = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
            raise Invalid(f"cannot reach {len(lost)} of {len(routes)} machines — {names}{more_text}",
                          field="machine", machines=[r.machine["id"] for r in lost])
        return routes

    def check(self, payload: Payload, routes: list[Route]) -> None:
        """What the run may do where: an Ansible playbook for a machine without an agent runs
        on the controller, only where the operator allowed it (``controller_ansible``); over
        SSH a run is the login user's (or root's, with su), so another ``user`` is refused."""
        if payload.user and not payload.su:
            others = [r for r in routes if r.ssh is not None and r.ssh.user != payload.user]
            if others:
                r = others[0]
                raise Invalid(f"{r.name} is reached over SSH as {r.ssh.user if r.ssh else ''}: "
                              f"a run there cannot switch to {payload.user} (associate a key "
                              f"for {payload.user}, or use su for root)", field="user",
                              machines=[o.machine["id"] for o in others])
        if payload.ansible and not self.settings.controller_ansible:
            over_ssh = [r for r in routes if r.ssh is not None]
            if over_ssh:
                names = ", ".join(r.name for r in over_ssh[:5])
                raise Invalid(
                    f"Ansible playbooks run through an agent on the machine itself; {names} "
                    f"{'has' if len(over_ssh) == 1 else 'have'} no connected agent, and running "
                    "playbooks on the controller is off (the operator's controller_ansible "
                    "setting: a playbook can run code where it runs)", field="machine",
                    machines=[r.machine["id"] for r in over_ssh])

    def start(self, p: Principal, actor: Actor, action: str, target_kind: str, target_id: str,
              routes: list[Route], payload: Payload, describe: dict[str, Any]) -> dict[str, Any]:
        """Create the job and run it in the background; returns the job document."""
        self.check(payload, routes)
        params = dict(describe, machines=[r.machine["id"] for r in routes[:1000]],
                      count=len(routes), env=sorted(payload.env), timeout=payload.timeout,
                      su=payload.su)
        job = self.jobs.create(p.org_id, action, target_kind, target_id,
                               p.user.get("email", "") or actor.email, params)
        cancel = self.jobs.cancellable(job["id"])
        state = {r.machine["id"]: _Target(r) for r in routes}

        async def work(h: JobHandle) -> Any:
            return await self._run(h, state, payload, cancel)

        def done(j: dict[str, Any]) -> None:
            self.jobs.forget_cancel(j["id"])
            res = j.get("result") or {}
            ok = j["status"] == "succeeded"
            details: dict[str, Any] = {"job": j["id"], **describe, "machines": len(routes),
                                       "env": sorted(payload.env),
                                       "exit_code": res.get("exit_code"),
                                       "failed": [t["machine"] for t in res.get("targets", [])
                                                  if t.get("status") != "succeeded"][:100]}
            if j.get("error"):
                details["error"] = j["error"].get("message", "")
            self.writer.commit(actor, Change(action, org=p.org_id, target_kind=target_kind,
                                             target_id=target_id,
                                             outcome="success" if ok else "failed",
                                             details=details))

        self.jobs.start(job, work, done)
        return job

    # ---- running --------------------------------------------------------------------------
    async def _run(self, h: JobHandle, state: dict[str, _Target], payload: Payload,
                   cancel: asyncio.Event) -> Any:
        org, job_id = h.doc["org"], h.id
        agents = {t.route.agent_id: mid for mid, t in state.items() if t.route.agent_id}
        ssh = [t for t in state.values() if t.route.ssh is not None]
        h.progress(f"running on {len(state)} machine(s): {len(agents)} through their agents, "
                   f"{len(ssh)} over SSH")
        stop_flush = asyncio.Event()
        out = _Pending()
        flusher = asyncio.get_running_loop().create_task(self._flusher(org, job_id, out, stop_flush))

        def sink_for(mid: str) -> Callable[[str, bytes], None]:
            t = state[mid]

            def output(stream: str, data: bytes) -> None:
                text = data.decode("utf-8", "replace")
                out.add(mid, t.route.name, stream, text)
                t.kept += len(data)
                self.bus.publish([Event("output", "job", job_id, org, time.time(), {
                    "machine": mid, "name": t.route.name, "stream": stream, "data": text})])
            return output

        def finished(mid: str, result: RunResult) -> None:
            t = state[mid]
            t.result, t.finished = result, time.time()
            if result.error and not result.timed_out and not result.cancelled:
                sink_for(mid)("stderr", f"overcast: {result.error}\n".encode())
            if result.truncated:
                sink_for(mid)("stderr", b"\n[overcast: output truncated]\n")
            self.bus.publish([Event("progress", "job", job_id, org, time.time(),
                                    dict(t.summary(), status_of="machine"))])

        async def over_ssh(sem: asyncio.Semaphore, t: _Target) -> None:
            from controller.exec import ssh as ssh_run  # asyncssh only where SSH is used

            mid = t.route.machine["id"]
            async with sem:
                if cancel.is_set():
                    finished(mid, RunResult(error="cancelled before it started", cancelled=True))
                    return
                assert t.route.ssh is not None
                try:
                    r = await ssh_run.run(t.route.ssh, payload, _Sink(sink_for(mid)), cancel)
                except Exception as exc:  # a bug in the runner must not hide other results
                    log.exception("SSH run on machine %s failed", mid)
                    r = RunResult(error=f"internal error: {type(exc).__name__}")
                if r.exit_code is not None and t.route.key_id:
                    self._touch(org, mid, t.route.key_id)  # the key got us in
                finished(mid, r)

        try:
            tasks: list[Coroutine[Any, Any, Any]] = []
            if agents:
                tasks.append(self.link.run_many(
                    list(agents), payload, lambda aid: _Sink(sink_for(agents[aid])), cancel,
                    on_result=lambda aid, r: finished(agents[aid], r)))
            sem = asyncio.Semaphore(SSH_PARALLEL)
            tasks.extend(over_ssh(sem, t) for t in ssh)
            await asyncio.gather(*tasks)
        finally:
            stop_flush.set()
            await flusher
        targets = [t.summary() for t in state.values()]
        code = worst_exit(targets)
        failed = [t for t in targets if t["status"] != "succeeded"]
        result = {"exit_code": code, "targets": targets,
                  "summary": {"machines": len(targets), "succeeded": len(targets) - len(failed),
                              "failed": len(failed)}}
        h.doc["result"] = result
        if cancel.is_set() and failed:  # a cancel that came as the last one ended: no matter
            raise _RunFailed("cancelled", f"cancelled ({len(failed)} of {len(targets)} machines "
                             "had not finished or failed)")
        if failed:
            raise _RunFailed("run_failed", f"{len(failed)} of {len(targets)} machines failed "
                             f"(worst exit status {code})")
        return result

    async def _flusher(self, org: str, job_id: str, out: _Pending, stop: asyncio.Event) -> None:
        """Append what came since the last time, every FLUSH_EVERY and once at the end."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), FLUSH_EVERY)
            except TimeoutError:
                pass
            b = Batch()
            for seq, chunk in out.take():
                b.put(output_key(org, job_id, seq), json.dumps(chunk).encode())
            if b:
                self.store.write(b)
            if stop.is_set():
                return

    def _touch(self, org: str, machine_id: str, key_id: str) -> None:
        """The association's key worked: remember when (the most recent is tried first)."""
        k = assoc_key(org, machine_id, key_id)
        raw = self.store.get(k)
        if raw is None:
            return
        doc = json.loads(raw)
        doc["last_used"] = int(time.time())
        b = Batch()
        b.put(k, json.dumps(doc).encode())
        self.store.write(b)

    # ---- reading back ----------------------------------------------------------------------
    def output(self, p: Principal, job_id: str, machine: str = "",
               after: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The output kept for a job after chunk ``after``, per machine in the order it first
        wrote: ([{machine, name, chunks: [[stream, text], ...]}], the last chunk's number —
        the ``after`` of the next call)."""
        job = self.jobs.get(p, job_id)  # NotFound for another organisation's job
        prefix = f"jobout/{p.org_id}/{job['id']}/"
        groups: dict[str, dict[str, Any]] = {}
        last = after
        for k, raw in self.store.scan(prefix, start=output_key(p.org_id, job["id"], after + 1)):
            last = int(k.rsplit("/", 1)[1])
            c = json.loads(raw)
            if machine and machine not in (c["machine"], c["name"]):
                continue
            g = groups.setdefault(c["machine"], {"machine": c["machine"], "name": c["name"],
                                                 "chunks": []})
            g["chunks"].append([c["stream"], c["data"]])
        return list(groups.values()), last


class _RunFailed(OvercastError):
    status = 200  # not an HTTP answer: the job's error

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Pending:
    """Output not yet written: consecutive pieces of one machine's stream joined (up to
    16 KiB), numbered in the order they came."""

    def __init__(self) -> None:
        self.seq = 0
        self.chunks: list[tuple[int, dict[str, str]]] = []

    def add(self, machine: str, name: str, stream: str, text: str) -> None:
        if self.chunks:
            last = self.chunks[-1][1]
            if (last["machine"] == machine and last["stream"] == stream
                    and len(last["data"]) < 16384):
                last["data"] += text
                return
        self.seq += 1
        self.chunks.append((self.seq, {"machine": machine, "name": name, "stream": stream,
                                       "data": text}))

    def take(self) -> list[tuple[int, dict[str, str]]]:
        out, self.chunks = self.chunks, []
        return out


@dataclass
class _Sink:
    fn: Callable[[str, bytes], None]

    def output(self, stream: str, data: bytes) -> None:
        self.fn(stream, data)


def inline_payload_parts(command: str) -> tuple[bytes, str]:
    """An ad-hoc command as a payload's content and digest (run by /bin/sh)."""
    if not command.strip():
        raise Invalid("command is required", field="command")
    if len(command) > MAX_COMMAND:
        raise Invalid(f"command must be at most {MAX_COMMAND} bytes", field="command")
    content = command.encode()
    return content, sha256_hex(content)

