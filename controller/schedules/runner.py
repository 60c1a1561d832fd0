"""One run of a schedule: each action in order, as the schedule's owner, through the same
service calls a user's request makes (a script run through ExecService like
``POST /api/v2/scripts/{script}``, a machine action through ActionService like
``POST /api/v2/machines/{m}/actions/{verb}``, notifications through the notification
service), each audited there; the outcome per machine is gathered for the run's record.

A machine that cannot be reached, or whose cloud cannot do the action, fails on its own: the
others still run. Waiting for jobs reads their documents (the jobs themselves run as tasks of
the job service); a job still running past its time limit is reported as such."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.accounts.model import Principal
from controller.clouds.actions import ActionService
from controller.errors import OvercastError
from controller.events.model import Actor
from controller.exec.service import ExecService, inline_payload_parts
from controller.exec.targets import Targets
from controller.jobs.model import key as job_key
from controller.schedules.model import MACHINE_ACTIONS, Notifier
from controller.scripts.service import ScriptService
from controller.store.base import Store

log = logging.getLogger(__name__)

POLL = 0.25  # seconds between looks at a job's document while waiting for it


@dataclass
class RunInput:
    """What one run acts with: the schedule, who it acts as, on which machines."""

    schedule: dict[str, Any]
    principal: Principal
    actor: Actor
    machines: list[dict[str, Any]]
    run_id: str


class Runner:
    def __init__(self, store: Store, scripts: ScriptService, exec_: ExecService,
                 targets: Targets, actions: ActionService, cloud_call_timeout: float) -> None:
        self.store = store
        self.scripts = scripts
        self.exec = exec_
        self.targets = targets
        self.actions = actions
        self.cloud_call_timeout = cloud_call_timeout
        self.notifier: Notifier | None = None
        # (org, user id or e-mail) -> the member's e-mail, None for someone not a member
        self.member_email: Callable[[str, str], str | None] = lambda org, ref: None

    async def execute(self, r: RunInput) -> list[dict[str, Any]]:
        """The outcome of each action: {action_type, status, error, job, results}."""
        out = []
        for a in r.schedule["actions"]:
            kind = a["action_type"]
            try:
                if kind == "run_script":
                    res = await self._script(a, r)
                elif kind in MACHINE_ACTIONS:
                    res = await self._machine_action(a, r)
                else:
                    res = await self._notify(a, r)
            except OvercastError as exc:
                res = {"status": "failed", "error": exc.message}
            except Exception as exc:  # a bug must not stop the other actions or the schedule
                log.exception("schedule %s: action %s failed", r.schedule["id"], kind)
                res = {"status": "failed", "error": f"internal error: {type(exc).__name__}"}
            out.append({"action_type": kind, "status": res.get("status", "failed"),
                        "error": res.get("error", ""), "job": res.get("job", ""),
                        "notification": res.get("notification", ""),
                        "results": res.get("results", [])})
        return out

    # ---- scripts ------------------------------------------------------------------------
    async def _script(self, a: dict[str, Any], r: RunInput) -> dict[str, Any]:
        p, sid = r.principal, r.schedule["id"]
        body = {"params": a.get("params") or "", "timeout": a.get("timeout"),
                "su": a.get("su", False)}
        if a["script_type"] == "existing":
            view, content = await asyncio.to_thread(self.scripts.payload, p, a["script"])
            payload = self.exec.payload(body, content, view["sha256"],
                                        entrypoint=view.get("entrypoint") or "",
                                        ansible=view.get("exec_type") == "ansible")
            action, kind, tid = "script.run", "script", view["id"]
            describe: dict[str, Any] = {"script": view["id"], "name": view["name"],
                                        "sha256": view["sha256"], "schedule": sid}
        else:
            content, digest = inline_payload_parts(a["command"])
            payload = self.exec.payload(body, content, digest, interpreter="/bin/sh")
            action, kind, tid = "command.run", "command", digest[:16]
            describe = {"command": a["command"][:1000], "schedule": sid}
        if not r.machines:
            return {"status": "succeeded", "results": []}
        routes = await asyncio.to_thread(lambda: [self.targets.route(m) for m in r.machines])
        results: list[dict[str, Any]] = [
            {"machine": rt.machine["id"], "name": rt.name, "status": "failed",
             "error": f"cannot reach it: {rt.why}"} for rt in routes if rt.why]
        reachable = [rt for rt in routes if not rt.why]
        if not reachable:
            return {"status": "failed", "error": "no machine could be reached", "results": results}
        job = self.exec.start(p, r.actor, action, kind, tid, reachable, payload, describe)
        done = await self._wait(p.org_id, job["id"], payload.timeout + 60)
        targets = (done.get("result") or {}).get("targets") or []
        results += [dict(t, job=job["id"]) for t in targets]
        status = _overall(results, done)
        error = "" if status == "succeeded" else _job_error(done) or _failed_text(results)
        return {"status": status, "error": error, "job": job["id"], "results": results}

    # ---- machine actions ----------------------------------------------------------------
    async def _machine_action(self, a: dict[str, Any], r: RunInput) -> dict[str, Any]:
        verb = a["action_type"]
        params = {"size": a["params"]} if verb == "resize" else {}
        results: list[dict[str, Any]] = []
        started: list[tuple[dict[str, Any], str]] = []
        for m in r.machines:
            try:
                job = self.actions.machine_action(r.principal, r.actor, m["id"], verb, params)
                started.append((m, job["id"]))
            except OvercastError as exc:
                results.append({"machine": m["id"], "name": m.get("name", ""), "status": "failed",
                                "error": exc.message})
        timeout = 6 * self.cloud_call_timeout + 60  # an action's provider calls, and a margin
        finished = await asyncio.gather(*(self._wait(r.principal.org_id, jid, timeout)
                                          for _, jid in started))
        for (m, jid), job in zip(started, finished, strict=True):
            results.append({"machine": m["id"], "name": m.get("name", ""), "job": jid,
                            "status": job.get("status", "running"), "error": _job_error(job)})
        status = "succeeded" if all(x["status"] == "succeeded" for x in results) else "failed"
        return {"status": status, "results": results,
                "error": "" if status == "succeeded" else _failed_text(results)}

    # ---- notifications ------------------------------------------------------------------
    async def _notify(self, a: dict[str, Any], r: RunInput) -> dict[str, Any]:
        if self.notifier is None:
            return {"status": "failed", "error": "notifications are not available"}
        org = r.principal.org_id
        to: list[str] = []
        for u in a.get("users", []):
            email = self.member_email(org, u)
            if email:
                to.append(email)
        to.extend(a.get("emails", []))
        to = list(dict.fromkeys(to))
        if not to:
            return {"status": "failed", "error": "none of the users to notify is a member now"}
        s = r.schedule
        names = [str(m.get("name") or m["id"]) for m in r.machines]
        subject = a.get("subject") or f"Overcast schedule {s['name']}"
        text = a.get("message") or f"The schedule {s['name']} ran."
        if names:
            text += "\n\nMachines: " + ", ".join(names[:100]) + (
                f" and {len(names) - 100} more" if len(names) > 100 else "")
        doc = await maybe_await(self.notifier.email(
            org, to, subject, text, actor=r.actor,
            context={"schedule": s["id"], "run": r.run_id,
                     "machines": [m["id"] for m in r.machines[:1000]]}))
        return {"status": "succeeded", "notification": _doc_id(doc)}

    # ---- jobs -----------------------------------------------------------------------------
    async def _wait(self, org: str, job_id: str, timeout: float) -> dict[str, Any]:
        """The job's document once it has ended, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while True:
            raw = self.store.get(job_key(org, job_id))
            doc = json.loads(raw) if raw is not None else {"status": "failed", "error": {
                "message": "the job is gone"}}
            if doc.get("status") in ("succeeded", "failed") or time.monotonic() > deadline:
                return doc
            await asyncio.sleep(POLL)


def _overall(results: list[dict[str, Any]], job: dict[str, Any]) -> str:
    if job.get("status") not in ("succeeded", "failed"):
        return "running"
    ok = job.get("status") == "succeeded" and all(x.get("status") == "succeeded" for x in results)
    return "succeeded" if ok else "failed"


def _job_error(job: dict[str, Any]) -> str:
    if job.get("status") not in ("succeeded", "failed"):
        return "still running when the run stopped waiting for it"
    err = job.get("error") or {}
    return str(err.get("message") or "") if job.get("status") == "failed" else ""


def _failed_text(results: list[dict[str, Any]]) -> str:
    bad = [x for x in results if x.get("status") != "succeeded"]
    return f"{len(bad)} of {len(results)} machines failed" if bad else ""


def _doc_id(doc: Any) -> str:
    return str(doc.get("id", "")) if isinstance(doc, dict) else ""


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
