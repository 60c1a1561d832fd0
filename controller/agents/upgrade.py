"""Upgrading agents through their streams: a job that sends each selected agent Upgrade (the
package this controller serves: its URL, version and SHA-256, and where its dependencies
are), waits for its UpgradeResult, then for the agent to connect again running the new
version. Each agent's upgrade is audited: ``agent.upgrade`` with ``phase`` requested, then
succeeded or failed (outcome failed, with the installer's last lines).

Runs on the event loop; store reads and audit writes are quick. Protobuf stays in the
agent link (``AgentLink.upgrade``; UpgradeResult comes as plain fields)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from controller.accounts.model import Principal
from controller.agents.model import older
from controller.agents.registry import Registry
from controller.agents.service import AgentService
from controller.errors import Forbidden, Invalid, NotFound, OvercastError
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.exec.agentlink import AgentLink
from controller.install.package import Package
from controller.install.script import manifest
from controller.jobs.service import JobHandle, JobService
from controller.machines.model import key as machine_key

log = logging.getLogger(__name__)

RESULT_TIMEOUT = 960.0     # the agent's own limit (agent.upgrade: 900 s) and some grace
RECONNECT_TIMEOUT = 120.0  # from its answer to its new stream
PARALLEL = 50              # agents upgrading at once (each downloads from the controller)
POLL = 0.25
_TAG = re.compile(r"^tag:([^=]+)(?:=(.*))?$")


class UpgradeFailed(OvercastError):
    status = 200  # not an HTTP answer: the job's error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "upgrade_failed"


class Upgrades:
    def __init__(self, agents: AgentService, link: AgentLink, registry: Registry,
                 jobs: JobService, writer: Writer) -> None:
        self.agents = agents
        self.link = link
        self.registry = registry
        self.jobs = jobs
        self.writer = writer
        self._waiting: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        link.handlers["upgrade_result"] = self._result

    async def _result(self, agent_id: str, fields: dict[str, Any]) -> None:
        fut = self._waiting.get((agent_id, str(fields.get("request_id", ""))))
        if fut is not None and not fut.done():
            fut.set_result(fields)

    # ---- which agents --------------------------------------------------------------------
    def select(self, p: Principal, refs: list[str]) -> list[dict[str, Any]]:
        """Agents by id, name or ``tag:key[=value]`` (the join token's tags and its machine's),
        each once, in the order given. NotFound for an id or name that is no agent of the
        caller's organisation; Invalid for a tag nobody has, or a name several have."""
        every = self.agents.list(p)
        out: dict[str, dict[str, Any]] = {}
        for ref in (r.strip() for r in refs if r.strip()):
            m = _TAG.match(ref)
            if m is None:
                hits = [a for a in every if a["id"] == ref] or [a for a in every if a["name"] == ref]
                if len(hits) > 1:
                    raise Invalid(f"{len(hits)} agents are named {ref!r}: give the id", field="on")
                if not hits:
                    raise NotFound("no such agent", {"id": ref})
            else:
                k, v = m.group(1).strip(), m.group(2)
                hits = [a for a in every if k in (tags := self._tags(p.org_id, a))
                        and (v is None or str(tags[k]) == v.strip())]
                if not hits:
                    raise Invalid(f"no agent has the tag {ref[4:]!r}", field="on")
            for a in hits:
                out.setdefault(a["id"], a)
        if not out:
            raise Invalid("name at least one agent: an id, a name or tag:key=value", field="on")
        return list(out.values())

    def _tags(self, org: str, agent: dict[str, Any]) -> dict[str, Any]:
        raw = self.agents.store.get(machine_key(org, agent["machine"]))
        machine = json.loads(raw) if raw else {}
        return {**(agent.get("tags") or {}), **(machine.get("tags") or {})}

    # ---- the job -------------------------------------------------------------------------
    def start(self, p: Principal, actor: Actor, refs: list[str], force: bool,
              package: Package, wheels: int) -> dict[str, Any]:
        """Select the agents and start the upgrade job for ``package`` (``wheels``: how many
        dependency wheels the controller serves); returns the job document. Owners and
        administrators only (an agent runs as root on its host)."""
        if p.role != "owner" and not p.is_admin:
            raise Forbidden("only owners upgrade agents")
        targets = self.select(p, refs)
        job = self.jobs.create(p.org_id, "agent.upgrade", "agent", targets[0]["id"],
                               p.user.get("email", "") or actor.email,
                               {"agents": [a["id"] for a in targets[:1000]], "count": len(targets),
                                "version": package.version, "force": force})
        info = manifest(package, wheels)

        async def work(h: JobHandle) -> Any:
            sem = asyncio.Semaphore(PARALLEL)

            async def one(a: dict[str, Any]) -> dict[str, Any]:
                async with sem:
                    return await self._one(h, p, actor, a, info, force)

            h.progress(f"upgrading {len(targets)} agent(s) to {package.version}")
            results = await asyncio.gather(*(one(a) for a in targets))
            failed = [r for r in results if r["status"] == "failed"]
            result = {"version": package.version, "agents": results,
                      "summary": {"agents": len(results), "failed": len(failed),
                                  "upgraded": sum(r["status"] == "upgraded" for r in results),
                                  "current": sum(r["status"] == "current" for r in results)}}
            h.doc["result"] = result
            if failed:
                raise UpgradeFailed(f"{len(failed)} of {len(results)} agent(s) were not upgraded")
            return result

        self.jobs.start(job, work)
        return job

    async def _one(self, h: JobHandle, p: Principal, actor: Actor, a: dict[str, Any],
                   info: dict[str, Any], force: bool) -> dict[str, Any]:
        aid, name, to = a["id"], a["name"], info["version"]
        before = str(a.get("version") or "")
        out: dict[str, Any] = {"id": aid, "name": name, "from": before, "to": to}

        def fail(error: str, output: str = "") -> dict[str, Any]:
            h.progress(f"{name}: failed: {error}")
            self._audit(actor, p.org_id, aid, "failed", h.id, before, to, error, output)
            return dict(out, status="failed", error=error, output=output[-2000:])

        if a.get("revoked"):
            return fail("the agent is revoked")
        if not force and before and not older(before, to):
            h.progress(f"{name}: runs {before} already")
            return dict(out, status="current")
        session = self.registry.get(aid)
        if session is None or session.ended:
            return fail("the agent is not connected")
        request_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[(aid, request_id)] = fut
        self._audit(actor, p.org_id, aid, "requested", h.id, before, to)
        h.progress(f"{name}: installing {to} (running {before or 'an unknown version'})")
        try:
            try:
                await self.link.upgrade(aid, request_id=request_id, package_url=info["package_url"],
                                        version=to, sha256=info["sha256"],
                                        find_links=info["find_links"] if info["wheels"] else "")
            except OvercastError as exc:
                return fail(exc.message)
            answer = await self._answer(p, aid, session, fut, to)
        finally:
            self._waiting.pop((aid, request_id), None)
        if answer is None:
            return fail(f"no answer within {RESULT_TIMEOUT:.0f} s")
        if not answer.get("ok", True):
            return fail(str(answer.get("error") or "the agent could not install it"),
                        str(answer.get("output") or ""))
        if not answer.get("back"):
            h.progress(f"{name}: installed {to}, restarting")
            if not await self._back(p, aid, session, to, RECONNECT_TIMEOUT):
                return fail(f"installed, but not connected again with {to} within "
                            f"{RECONNECT_TIMEOUT:.0f} s")
        h.progress(f"{name}: upgraded to {to}")
        self._audit(actor, p.org_id, aid, "succeeded", h.id, before, to)
        return dict(out, status="upgraded")

    async def _answer(self, p: Principal, aid: str, session: Any, fut: asyncio.Future[dict[str, Any]],
                      to: str) -> dict[str, Any] | None:
        """The agent's UpgradeResult; or, should it be lost with the old stream, the agent
        back with the new version (``back``); None after RESULT_TIMEOUT."""
        deadline = time.monotonic() + RESULT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), 1.0)
            except TimeoutError:
                if await self._back(p, aid, session, to, 0):
                    return {"ok": True, "back": True}
        return None

    async def _back(self, p: Principal, aid: str, old: Any, to: str, within: float) -> bool:
        """Whether the agent is connected on a new stream, running ``to``."""
        deadline = time.monotonic() + within
        while True:
            s = self.registry.get(aid)
            if s is not None and s is not old and not s.ended:
                try:
                    if self.agents.get(p, aid).get("version") == to:
                        return True
                except NotFound:
                    return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)

    def _audit(self, actor: Actor, org: str, aid: str, phase: str, job: str, before: str,
               to: str, error: str = "", output: str = "") -> None:
        details: dict[str, Any] = {"phase": phase, "job": job, "from": before, "to": to}
        if error:
            details["error"] = error[:500]
        if output:
            details["output"] = output[-2000:]
        self.writer.commit(actor, Change("agent.upgrade", org=org, target_kind="agent",
                                         target_id=aid,
                                         outcome="failed" if phase == "failed" else "success",
                                         details=details))
