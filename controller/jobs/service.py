"""Running jobs: each is an asyncio task whose state is written to the store and announced
as live ``job`` events; the action's outcome is audited by the caller through the writer.

Progress updates are bookkeeping, not actions: they are stored and published without an
audit entry each."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from controller.accounts.model import Principal
from controller.errors import Conflict, NotFound, OvercastError
from controller.events.bus import EventBus
from controller.events.model import Event
from controller.jobs.model import JOB, MAX_PROGRESS, key
from controller.listing import Query, apply
from controller.store.base import Batch, Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso

log = logging.getLogger(__name__)

Work = Callable[["JobHandle"], Awaitable[Any]]


class JobHandle:
    """What a running job's work sees: ``progress(message)`` appends a line."""

    def __init__(self, service: JobService, doc: dict[str, Any]) -> None:
        self._service = service
        self.doc = doc

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    def progress(self, message: str, **data: Any) -> None:
        lines = self.doc.setdefault("progress", [])
        lines.append({"time": iso(), "message": message, **data})
        if len(lines) > MAX_PROGRESS:
            del lines[: len(lines) - MAX_PROGRESS]
            self.doc["progress_dropped"] = self.doc.get("progress_dropped", 0) + 1
        self._service.save(self.doc, "progress", {"message": message})


class JobService:
    def __init__(self, store: Store, bus: EventBus | None) -> None:
        self.store = store
        self.bus = bus
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancels: dict[str, asyncio.Event] = {}  # job id -> set to cancel it

    def create(self, org: str, action: str, target_kind: str, target_id: str, created_by: str,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": uuid.uuid4().hex, "org": org, "action": action,
               "target": {"kind": target_kind, "id": target_id}, "params": params or {},
               "status": "queued", "progress": [], "result": None, "error": None,
               "created": iso(), "started": "", "finished": "", "created_by": created_by}
        self.save(doc, "created")
        return doc

    def save(self, doc: dict[str, Any], event: str, data: dict[str, Any] | None = None) -> None:
        b = Batch()
        b.put(key(doc["org"], doc["id"]), dump(JOB, doc))
        self.store.write(b)
        if self.bus is not None:
            self.bus.publish([Event(event if event in ("created", "changed") else "progress", "job",
                                    doc["id"], doc["org"], time.time(),
                                    dict(data or {}, status=doc["status"], action=doc["action"]))])

    def start(self, doc: dict[str, Any], work: Work,
              done: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Run ``work`` in the background; ``done`` is called with the finished job (to audit
        the outcome) whatever happens."""
        task = asyncio.get_running_loop().create_task(self._run(doc, work, done),
                                                      name=f"job-{doc['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, doc: dict[str, Any], work: Work,
                   done: Callable[[dict[str, Any]], None] | None) -> None:
        handle = JobHandle(self, doc)
        doc.update(status="running", started=iso())
        self.save(doc, "changed")
        try:
            result = await work(handle)
            doc.update(status="succeeded", result=result)
        except OvercastError as exc:
            doc.update(status="failed", error=exc.to_dict())
        except asyncio.CancelledError:
            doc.update(status="failed", error={"code": "interrupted", "message": "the controller stopped",
                                               "details": {}})
            raise
        except Exception as exc:  # a bug: the job says so, the log has the rest
            err_id = uuid.uuid4().hex[:12]
            log.exception("job %s (%s) failed, error %s", doc["id"], doc["action"], err_id)
            doc.update(status="failed", error={"code": "internal", "message": f"internal error {err_id}",
                                               "details": {"error_id": err_id}})
            del exc
        finally:
            doc["finished"] = iso()
            self.save(doc, "changed")
            if done is not None:
                try:
                    done(doc)
                except Exception:
                    log.exception("recording the outcome of job %s failed", doc["id"])

    # ---- cancelling ------------------------------------------------------------------------
    def cancellable(self, job_id: str) -> asyncio.Event:
        """Make a job cancellable: its work watches the returned event."""
        ev = self._cancels[job_id] = asyncio.Event()
        return ev

    def forget_cancel(self, job_id: str) -> None:
        self._cancels.pop(job_id, None)

    def cancel(self, p: Principal, job_id: str) -> dict[str, Any]:
        """Ask a running job to stop (its work kills what it started and ends the job);
        Conflict for a job that has ended or cannot be cancelled."""
        doc = self.get(p, job_id)
        ev = self._cancels.get(doc["id"])
        if doc["status"] not in ("queued", "running"):
            raise Conflict(f"the job has {doc['status']} already", {"status": doc["status"]})
        if ev is None:
            raise Conflict("this job cannot be cancelled (only script and command runs can)",
                           {"action": doc["action"]})
        already = ev.is_set()
        ev.set()
        return dict(doc, cancel_requested=True, already=already)

    async def wait_all(self) -> None:
        """Let running jobs finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def fail_interrupted(self) -> int:
        """On start: jobs a stopped controller left queued or running are failed."""
        n = 0
        b = Batch()
        for k, raw in self.store.scan("job/"):
            doc = json.loads(raw)
            if doc.get("status") in ("queued", "running"):
                doc.update(status="failed", finished=iso(), error={
                    "code": "interrupted", "message": "the controller stopped before the job ended",
                    "details": {}})
                b.put(k, dump(JOB, doc))
                n += 1
        if b:
            self.store.write(b)
        return n

    def get(self, p: Principal, job_id: str) -> dict[str, Any]:
        raw = self.store.get(key(p.org_id, job_id)) if p.org_id and "/" not in job_id else None
        if raw is None:
            raise NotFound("no such job", {"id": job_id})
        return public(load(JOB, raw))

    def list(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        docs = (public(load(JOB, raw)) for _, raw in self.store.scan(f"job/{p.org_id}/"))
        return apply(docs, query)
