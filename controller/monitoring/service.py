"""Enable and disable monitoring on a machine, each as a job with live output.

Enable (a machine without an agent, reachable over SSH with its key): a one-use join token
is made for the machine, and the one-line install command it prints is run over SSH as root
(``controller.monitoring.install`` wraps it); what the install prints is the job's output.
As soon as the agent enrols with that token it is linked to the machine (one host, one
machine), then the job waits for its stream and its first stored samples. A failed install
leaves nothing: the script takes back what it added, an agent it enrolled is revoked, the
token is deleted, and the machine says why (``monitoring.state`` failed).

Disable (a machine an agent reports for; owners only, since it revokes the agent): the
install script's ``--uninstall`` runs over SSH when the machine has a key (its output is the
job's), else through the agent itself; then the agent is revoked and the machine forgets it.
``force`` revokes it when the host cannot be reached or the uninstall fails.

The request is checked before the job starts (NotFound, Conflict when monitoring is on or off
already or a job runs for the machine, Invalid when the machine cannot be reached, Forbidden);
the job's outcome is audited once (``machine.enable_monitoring``/``machine.disable_monitoring``),
the link and unlink as ``machine.link``/``machine.unlink``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from controller.accounts.model import Principal
from controller.agents.ingest import Ingestor
from controller.agents.registry import Registry
from controller.agents.service import AgentService
from controller.errors import Conflict, Forbidden, Invalid, NotFound, OvercastError
from controller.events.bus import EventBus
from controller.events.model import Actor, Event
from controller.events.writer import Change, Writer
from controller.exec.agentlink import AgentLink
from controller.exec.model import Payload, RunResult, sha256_hex
from controller.exec.targets import Route, Targets
from controller.install.script import script as install_script
from controller.jobs.service import JobHandle, JobService
from controller.machines.model import key as machine_key
from controller.monitoring import install
from controller.monitoring.link import link_change, set_job, unlink_change
from controller.monitoring.model import monitoring_view
from controller.monitoring.output import JobOutput
from controller.settings import Settings
from controller.store.base import Store

log = logging.getLogger(__name__)

MAX_INSTALL_TIMEOUT = 3600
ENROL_WAIT = 20.0     # seconds after a successful install for the agent's enrolment to show
CONNECT_WAIT = 60.0   # ...for its stream
SAMPLES_WAIT = 60.0   # ...for its first stored samples
STOP_WAIT = 60.0      # seconds for an agent that uninstalls itself to disconnect
UNINSTALL_TIMEOUT = 300.0
EXIT_CODES = {2: "the script was given a wrong option", 3: "the controller refused the join token",
              4: "the controller's CA did not match the fingerprint",
              5: "the host cannot reach the controller (it needs HTTPS to the controller's "
                 "external URL and the agents' endpoint)",
              6: "the agent does not support this platform", 143: "stopped (cancelled or timed out)"}


class MonitoringFailed(OvercastError):
    """The job failed; the message says why. ``installed``: the agent is installed and
    reports for the machine all the same (it has not connected yet, say)."""

    status = 200  # not an HTTP answer: the job's error
    code = "monitoring_failed"

    def __init__(self, message: str, installed: bool = False) -> None:
        super().__init__(message)
        self.installed = installed


async def wait_until(check: Callable[[], bool], seconds: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


class MonitoringService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, bus: EventBus,
                 jobs: JobService, targets: Targets, agents: AgentService, link: AgentLink,
                 registry: Registry, ingestor: Ingestor) -> None:
        self.settings, self.store, self.writer, self.bus = settings, store, writer, bus
        self.jobs, self.targets, self.agents = jobs, targets, agents
        self.link, self.registry, self.ingestor = link, registry, ingestor
        self._busy: dict[str, str] = {}  # machine id -> the monitoring job running for it

    # ---- requests ----------------------------------------------------------------------------
    def _machine(self, p: Principal, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the machine's view, its stored document); NotFound, Conflict when busy."""
        m = self.targets.machine(p, ref)
        raw = self.store.get(machine_key(p.org_id, m["id"]))
        if raw is None:
            raise NotFound("no such machine", {"id": ref})
        busy = self._busy.get(m["id"])
        if busy:
            raise Conflict(f"a monitoring job runs for {m['name']} already", {"job": busy})
        return m, json.loads(raw)

    def enable(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        m, doc = self._machine(p, ref)
        mon = monitoring_view(doc)
        if mon["enabled"] and not self._revoked(p.org_id, mon["agent_id"]):
            raise Conflict(f"monitoring is on already for {m['name']}: agent {mon['agent_id']} "
                           f"reports for it ({mon['state']})", {"machine": m["id"], **mon})
        route = self.targets.ssh_route(m)
        if route is None or route.ssh is None:
            raise Invalid(f"cannot reach {m['name']} over SSH: no key is associated with it "
                          "(enabling monitoring installs the agent over SSH; associate a key: "
                          "PUT /api/v2/machines/{machine}/actions/associate-key)", field="machine",
                          machines=[m["id"]])
        opts = install.options(body, MAX_INSTALL_TIMEOUT)
        tags = {k: str(v) for k, v in (m.get("tags") or {}).items()
                if isinstance(k, str) and 0 < len(k) <= 64 and len(str(v)) <= 256}
        secret, tok = self.agents.create_join_token(
            p, actor, min(self.settings.join_token_max_ttl, opts.timeout + 600), 1, tags,
            f"monitoring {m['name']}"[:100])
        content = install.enable_script(self.agents.install_command(secret), opts)
        del secret
        payload = Payload(content=content, sha256=sha256_hex(content), su=True,
                          timeout=float(opts.timeout), max_output=self.settings.exec_max_output)
        return self._start(p, actor, "machine.enable_monitoring", m, {
            "via": "ssh", "host": route.ssh.label, "options": opts.to_dict(), "join_token_id": tok["id"]},
            {"state": "installing", "options": opts.to_dict()},
            lambda h, out, cancel, state: self._enable(h, p, actor, m, route, payload, tok["id"],
                                                      out, cancel, state),
            cleanup=lambda: self._delete_token(p, actor, tok["id"]))

    def disable(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        if p.role != "owner" and not p.is_admin:
            raise Forbidden("only owners disable monitoring (it revokes the machine's agent)")
        m, doc = self._machine(p, ref)
        mon = monitoring_view(doc)
        if not mon["enabled"]:
            raise Conflict(f"monitoring is off for {m['name']} already: no agent reports for it",
                           {"machine": m["id"], **mon})
        agent_id, force = mon["agent_id"], bool(body.get("force"))
        opts = install.stored_options(doc)
        route = self.targets.ssh_route(m)
        via = "ssh" if route is not None else "agent" if self.link.connected(agent_id) else ""
        if not via and not force:
            raise Invalid(f"cannot reach {m['name']}: no SSH key is associated with it and its "
                          "agent is not connected (force revokes the agent without "
                          "uninstalling it)", field="machine", machines=[m["id"]])
        return self._start(p, actor, "machine.disable_monitoring", m, {
            "via": via or "none", "agent_id": agent_id, "force": force},
            {"state": "removing", "options": opts.to_dict()},
            lambda h, out, cancel, state: self._disable(h, p, actor, m, agent_id, route, via,
                                                       force, opts, out, cancel, state))

    def _start(self, p: Principal, actor: Actor, action: str, m: dict[str, Any],
               params: dict[str, Any], state: dict[str, Any], work: Any,
               cleanup: Callable[[], None] | None = None) -> dict[str, Any]:
        org, mid = p.org_id, m["id"]
        job = self.jobs.create(org, action, "machine", mid, p.user.get("email", "") or actor.email,
                               dict(params, machine=mid, name=m["name"], count=1))
        state = dict(state, job=job["id"])
        self._busy[mid] = job["id"]
        self._mark(org, mid, state)
        cancel = self.jobs.cancellable(job["id"])

        # a failed enable leaves nothing installed: the machine says "failed" and why; after
        # a failed disable (or an enable whose agent was installed all the same) monitoring
        # stays on, and the machine shows the agent's state
        failed = "failed" if action == "machine.enable_monitoring" else ""

        async def run(h: JobHandle) -> Any:
            out = JobOutput(self.store, self.bus, org, h.id, m, self.settings.exec_max_output)
            try:
                return await work(h, out, cancel, state)
            except MonitoringFailed as exc:
                out.line(exc.message)
                self._mark(org, mid, dict(state, state="" if exc.installed else failed,
                                          error=exc.message))
                raise
            finally:
                await out.close()

        def done(j: dict[str, Any]) -> None:
            self.jobs.forget_cancel(j["id"])
            self._busy.pop(mid, None)
            if cleanup is not None:
                cleanup()
            error = j.get("error") or {}
            if j["status"] != "succeeded" and error.get("code") != "monitoring_failed":
                self._mark(org, mid, dict(state, state=failed,
                                          error=error.get("message", "the job failed")))
            res = j.get("result") or {}
            self.writer.commit(actor, Change(
                action, org=org, target_kind="machine", target_id=mid,
                outcome="success" if j["status"] == "succeeded" else "failed",
                details={"job": j["id"], "agent_id": res.get("agent_id", ""),
                         "via": params.get("via"), "exit_code": res.get("exit_code"),
                         "error": (j.get("error") or {}).get("message", "")}))

        self.jobs.start(job, run, done)
        return job

    def _mark(self, org: str, mid: str, state: dict[str, Any]) -> None:
        if set_job(self.store, org, mid, state):
            self.bus.publish([Event("changed", "machine", mid, org, time.time(),
                                    {"monitoring": state.get("state") or "done"})])

    def _revoked(self, org: str, agent_id: str) -> bool:
        """An agent revoked by hand (overcast agent revoke) reports for nothing any more."""
        raw = self.store.get(f"agent/{org}/{agent_id}") if agent_id else None
        return raw is not None and bool(json.loads(raw).get("revoked"))

    def _delete_token(self, p: Principal, actor: Actor, token_id: str) -> None:
        """The one-use join token goes with its job, used or not."""
        try:
            self.agents.delete_join_token(p, actor, token_id)
        except NotFound:
            pass

    # ---- enabling ----------------------------------------------------------------------------
    async def _enable(self, h: JobHandle, p: Principal, actor: Actor, m: dict[str, Any],
                      route: Route, payload: Payload, token_id: str, out: JobOutput,
                      cancel: asyncio.Event, state: dict[str, Any]) -> dict[str, Any]:
        from controller.exec import sshrun  # asyncssh only where SSH is used

        org, mid, name = p.org_id, m["id"], m["name"]
        assert route.ssh is not None
        h.progress(f"installing the agent on {name} over SSH ({route.ssh.label}) with the "
                   "install script")
        found: list[str] = []
        watcher = asyncio.get_running_loop().create_task(
            self._watch(h, actor, org, token_id, mid, state, found))
        try:
            r = await sshrun.run(route.ssh, payload, out, cancel)
            ok = r.exit_code == 0 and not r.error
            if ok:
                await asyncio.wait({watcher}, timeout=ENROL_WAIT)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        target = self._summary(m, "ssh", r)
        h.doc["result"] = {"machine": mid, "agent_id": found[0] if found else "",
                           "exit_code": _code(r), "targets": [target]}
        if not ok:
            if found:  # enrolled, then the install failed: nothing of it stays
                self._undo(p, actor, mid, found[0], state)
            raise MonitoringFailed(f"the install on {name} failed: {_why(r)}")
        if not found:
            raise MonitoringFailed(
                f"the install on {name} ended well but no agent enrolled with its token: the "
                "host has an agent enrolled already (its state directory), which the script "
                "kept; uninstall it there (install script --uninstall) and enable again")
        agent_id = found[0]
        if not await wait_until(lambda: self.link.connected(agent_id), CONNECT_WAIT):
            raise MonitoringFailed(
                f"agent {agent_id} is installed and enrolled but has not connected in "
                f"{CONNECT_WAIT:.0f} s: the host must reach {self.settings.agents_public_endpoint}",
                installed=True)
        h.progress(f"agent {agent_id} is connected")
        first = await wait_until(lambda: self.ingestor.acked(agent_id) > 0, SAMPLES_WAIT)
        h.progress("its first samples are stored" if first else
                   f"no samples stored yet after {SAMPLES_WAIT:.0f} s")
        self._mark(org, mid, dict(state, state=""))
        return dict(h.doc["result"], state="connected", first_samples=first)

    async def _watch(self, h: JobHandle, actor: Actor, org: str, token_id: str, mid: str,
                     state: dict[str, Any], found: list[str]) -> None:
        """Link the agent to the machine as soon as it enrols with the job's token (before it
        connects, usually: its stream then reports into the machine from the start)."""
        while True:
            raw = self.store.get(f"jointoken/{org}/{token_id}")
            agents = list(json.loads(raw).get("agents") or []) if raw else []
            if agents:
                change = link_change(self.store, org, agents[0], mid, state)
                if change is not None:
                    try:
                        self.writer.commit(actor, change)
                    except Conflict:  # a poll wrote the machine meanwhile: again
                        await asyncio.sleep(0.1)
                        continue
                found.append(agents[0])
                # a stream opened before the link reads the agent as it was: open it again
                self.registry.end(agents[0], "linked to its machine: reconnect")
                h.progress(f"agent {agents[0]} enrolled: it reports for this machine")
                return
            await asyncio.sleep(0.25)

    def _undo(self, p: Principal, actor: Actor, mid: str, agent_id: str,
              state: dict[str, Any]) -> None:
        """An agent the failed install enrolled: revoked (on behalf of the user, whose token
        enrolled it) and unlinked."""
        owner = dataclasses.replace(p, role="owner")
        self.agents.revoke(owner, actor, agent_id)
        self.registry.end(agent_id, "the agent was revoked")
        change = unlink_change(self.store, p.org_id, mid, agent_id, state,
                               {"reason": "the install failed"})
        if change is not None:
            self.writer.commit(actor, change)

    # ---- disabling ---------------------------------------------------------------------------
    async def _disable(self, h: JobHandle, p: Principal, actor: Actor, m: dict[str, Any],
                       agent_id: str, route: Route | None, via: str, force: bool,
                       opts: install.Options, out: JobOutput, cancel: asyncio.Event,
                       state: dict[str, Any]) -> dict[str, Any]:
        name, mid = m["name"], m["id"]
        script = install_script(self.settings.public_url)
        r = RunResult(exit_code=0)
        done = False  # the uninstall is known to have run (its stopping agent, through one)
        if via == "ssh":
            from controller.exec import sshrun

            assert route is not None and route.ssh is not None
            h.progress(f"uninstalling the agent on {name} over SSH ({route.ssh.label})")
            r = await sshrun.run(route.ssh, Payload(
                content=script, sha256=sha256_hex(script), args=install.uninstall_args(opts),
                su=True, timeout=UNINSTALL_TIMEOUT, max_output=self.settings.exec_max_output),
                out, cancel)
            done = r.exit_code == 0 and not r.error
            if r.exit_code is None and not r.cancelled and self.link.connected(agent_id):
                out.line(f"SSH failed ({r.error}): uninstalling through the agent instead")
                via = "agent"
        if via == "agent":
            h.progress(f"uninstalling the agent on {name} through the agent itself")
            wrapper = install.detached_uninstall(script, opts)
            results = await self.link.run_many([agent_id], Payload(
                content=wrapper, sha256=sha256_hex(wrapper), su=True, timeout=60.0,
                max_output=self.settings.exec_max_output), lambda _a: out, cancel)
            r = results[agent_id]
            if r.exit_code == 0 and not r.error:
                done = await wait_until(lambda: not self.link.connected(agent_id), STOP_WAIT)
                h.progress("the agent stopped" if done else "the agent is still connected "
                           f"after {STOP_WAIT:.0f} s")
        elif via != "ssh":
            h.progress(f"{name} cannot be reached: the agent is revoked without uninstalling it")
        ok = r.exit_code == 0 and not r.error
        h.doc["result"] = {"machine": mid, "agent_id": agent_id, "exit_code": _code(r),
                           "uninstalled": done, "targets": [self._summary(m, via, r)]}
        if not ok and not force:
            raise MonitoringFailed(f"the uninstall on {name} failed ({_why(r)}): the agent was "
                                   "not revoked (force revokes it anyway)")
        if not ok:
            out.line(f"the uninstall failed ({_why(r)}); revoking the agent anyway (force)")
        self.agents.revoke(p, actor, agent_id)
        self.registry.end(agent_id, "the agent was revoked")
        await wait_until(lambda: not self.link.connected(agent_id), 10.0, 0.1)
        change = unlink_change(self.store, p.org_id, mid, agent_id, dict(state, state=""),
                               {"job": h.id, "uninstalled": h.doc["result"]["uninstalled"]})
        if change is not None:
            self.writer.commit(actor, change)
        h.progress(f"agent {agent_id} revoked; monitoring is off for {name}")
        return dict(h.doc["result"], state="disabled")

    @staticmethod
    def _summary(m: dict[str, Any], via: str, r: RunResult) -> dict[str, Any]:
        ok = r.exit_code == 0 and not r.error
        return {"machine": m["id"], "name": m["name"], "via": via,
                "status": "succeeded" if ok else "failed", "exit_code": r.exit_code,
                "error": r.error or ("" if ok else _why(r)), "timed_out": r.timed_out,
                "cancelled": r.cancelled}

    # ---- after a restart -----------------------------------------------------------------
    def sweep_interrupted(self) -> int:
        """Machines whose monitoring job a stopped controller left running say so."""
        n = 0
        for k, raw in self.store.scan("machine/"):
            doc = json.loads(raw)
            job = doc.get("_monitoring") or {}
            if job.get("state") in ("installing", "removing"):
                _, org, mid = k.split("/", 2)
                if set_job(self.store, org, mid, dict(job, state="failed", error=(
                        "the controller stopped during the job: look at the host"))):
                    n += 1
        return n


def _code(r: RunResult) -> int:
    if r.exit_code is None or r.error:
        return 255 if r.exit_code in (None, 0) else int(r.exit_code)
    return int(r.exit_code)


def _why(r: RunResult) -> str:
    if r.exit_code not in (None, 0):
        meaning = EXIT_CODES.get(int(r.exit_code), "see its output")
        return f"exit status {r.exit_code}: {meaning}"
    return r.error or "no exit status"
