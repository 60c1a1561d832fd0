"""The notification queue: :meth:`NotifyService.email` and :meth:`NotifyService.webhook`
store a notification and return at once (they never raise: a message that cannot be sent is
stored as ``failed`` with the reason); :meth:`NotifyService.run` delivers in the background,
retrying with exponential backoff up to ``notify_max_attempts``. Every outcome is kept on
the notification (``attempts``, ``last_error``, ``results``) and audited: queued, each failed
attempt, sent, given up. Transports are injected (:class:`Mailer`, :class:`Poster`), so this
module imports no network library."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from controller.accounts.model import Principal
from controller.errors import Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.notify.model import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_RECIPIENTS,
    MAX_SUBJECT,
    MAX_TEXT,
    MAX_URL,
    NOTIFICATION,
    WEBHOOK_METHODS,
    DeliveryError,
    backoff,
    is_email,
    notification_key,
    pending_key,
    redact_url,
    secret_header,
    shown_url,
)
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso

log = logging.getLogger(__name__)

PARALLEL = 8  # webhook deliveries at once (e-mails: as many as the mailer's ``workers``)
NOTIFIER = Actor(kind="system", id="notify", via="system")


class Mailer(Protocol):
    """Sends one e-mail within its own deadline; ``workers`` (when it has the attribute):
    how many it sends at once, so that no more are started."""

    async def send(self, to: list[str], subject: str, text: str, html: str | None) -> str: ...


class Poster(Protocol):
    async def send(self, url: str, method: str, headers: dict[str, str], body: bytes | None) -> str: ...


class NotifyService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets: SecretBox,
                 mailer: Mailer, poster: Poster) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets
        self.mailer = mailer
        self.poster = poster
        self._due: list[tuple[float, str, str]] = []  # (when, org, id), a heap
        self._busy: set[str] = set()
        self._wake: asyncio.Event | None = None
        self.sent = 0
        self.failed_attempts = 0

    # ---- queueing (the API other services call) ------------------------------------------
    async def email(self, org: str, to: list[str], subject: str, text: str, *,
                    html: str | None = None, context: dict[str, Any] | None = None,
                    actor: Actor | None = None) -> dict[str, Any]:
        """Queue an e-mail to ``to``; returns the notification (``status`` pending, or failed
        with ``last_error`` when nothing can be sent: no valid address). Never raises."""
        good = [a.strip() for a in to if isinstance(a, str) and is_email(a.strip())][:MAX_RECIPIENTS]
        bad = [str(a)[:100] for a in to if not (isinstance(a, str) and is_email(a.strip()))]
        doc = self._new(org, "email", context)
        doc.update(to=list(dict.fromkeys(good)), subject=" ".join(str(subject).split())[:MAX_SUBJECT])
        if bad:
            doc["results"].append({"time": iso(), "ignored": bad[:20],
                                   "error": "not e-mail addresses"})
        payload = {"text": str(text)[:MAX_TEXT], "html": str(html)[:MAX_TEXT] if html else None}
        problem = "" if good else "no valid recipient address"
        return self._queue(doc, payload, {}, problem, actor)

    async def webhook(self, org: str, url: str, method: str = "POST",
                      headers: dict[str, str] | None = None, body: Any = None, *,
                      secret_headers: Iterable[str] = (), context: dict[str, Any] | None = None,
                      actor: Actor | None = None) -> dict[str, Any]:
        """Queue an HTTP call: ``body`` is sent as JSON (a str as it is, None: no body).
        Headers named in ``secret_headers``, or that sound secret (Authorization, tokens,
        keys), and the URL are sealed at rest and never shown. Never raises."""
        method = str(method or "POST").upper()
        doc = self._new(org, "webhook", context)
        doc.update(url=redact_url(str(url)), method=method)
        hdrs = {str(k): str(v) for k, v in (headers or {}).items()}
        secret = {str(s).lower() for s in secret_headers}
        doc["headers"] = {k: ("***" if k.lower() in secret or secret_header(k) else v)
                          for k, v in hdrs.items()}
        if isinstance(body, str | bytes):
            raw = body.decode(errors="replace") if isinstance(body, bytes) else body
            content_type = "text/plain; charset=utf-8"
        else:
            raw = "" if body is None else json.dumps(body, ensure_ascii=False, default=str)
            content_type = "application/json"
        if raw and not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = content_type
        problem = ""
        if method not in WEBHOOK_METHODS:
            problem = f"method must be one of: {', '.join(WEBHOOK_METHODS)}"
        elif not str(url).startswith(("http://", "https://")) or len(str(url)) > MAX_URL:
            problem = f"the URL must be http(s), at most {MAX_URL} characters"
        elif len(hdrs) > MAX_HEADERS or any("\n" in k + v or "\r" in k + v for k, v in hdrs.items()):
            problem = f"at most {MAX_HEADERS} headers, without line breaks"
        elif len(raw.encode()) > MAX_BODY:
            problem = f"the body is larger than {MAX_BODY} bytes"
        key = notification_key(org, doc["id"])
        sealed = {"_url": self.secrets.seal(str(url), aad=key),
                  "_headers": self.secrets.seal(json.dumps(hdrs), aad=key)}
        return self._queue(doc, {"body": raw or None}, sealed, problem, actor)

    def _new(self, org: str, kind: str, context: dict[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        ctx = {str(k): v for k, v in (context or {}).items() if isinstance(v, str | int | float | bool)}
        return {"id": uuid.uuid4().hex, "org": org, "kind": kind, "status": "pending",
                "attempts": 0, "max_attempts": self.settings.notify_max_attempts,
                "next_attempt": iso(now), "last_error": "", "results": [], "context": ctx,
                "created": iso(now), "sent": "", "_created_at": now, "_next": now}

    def _queue(self, doc: dict[str, Any], payload: dict[str, Any], sealed: dict[str, str],
               problem: str, actor: Actor | None) -> dict[str, Any]:
        org, nid = doc["org"], doc["id"]
        doc["_payload"] = json.dumps(payload, ensure_ascii=False)
        doc.update(sealed)
        if problem:
            doc.update(status="failed", last_error=problem, next_attempt="")
        change = Change("notification.queue", org=org, target_kind="notification", target_id=nid,
                        outcome="failed" if problem else "success", details=self._describe(doc))
        change.put(notification_key(org, nid), dump(NOTIFICATION, doc))
        if not problem:
            change.put(pending_key(org, nid), b"")
        change.event("created", "notification", nid, {"kind": doc["kind"], "status": doc["status"]})
        try:
            self.writer.commit(actor or NOTIFIER, change)
        except Exception:  # the caller's loop goes on; the log says what was lost
            log.exception("storing a notification failed")
            return dict(self.view(doc), status="failed", last_error="could not be stored")
        if not problem:
            self._schedule(doc["_next"], org, nid)
        return self.view(doc)

    # ---- reading -----------------------------------------------------------------------
    @staticmethod
    def view(doc: dict[str, Any]) -> dict[str, Any]:
        out = public(doc)
        out.pop("org", None)
        if out.get("url"):
            out["url"] = shown_url(str(out["url"]))
        return out

    @staticmethod
    def _describe(doc: dict[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = {k: doc[k] for k in ("kind", "to", "subject", "url", "method", "context")
                             if k in doc}
        if doc.get("last_error"):
            d["error"] = doc["last_error"]
        return d

    def _load(self, org: str, nid: str) -> tuple[dict[str, Any], bytes] | None:
        raw = self.store.get(notification_key(org, nid)) if org and "/" not in nid else None
        return (load(NOTIFICATION, raw), raw) if raw is not None else None

    def get(self, p: Principal, nid: str) -> dict[str, Any]:
        found = self._load(p.org_id, nid)
        if found is None:
            raise NotFound("no such notification", {"id": nid})
        return self.view(found[0])

    def views(self, org: str, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The notifications ``ids`` of ``org`` that exist, in that order (for incidents)."""
        keys = [notification_key(org, i) for i in ids if "/" not in i]
        return [self.view(load(NOTIFICATION, raw)) for raw in self.store.get_many(keys) if raw]

    def list(self, p: Principal, query: Query, status: str = "",
             kind: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The organisation's notifications, newest first unless sorted otherwise."""
        docs = (load(NOTIFICATION, raw) for _, raw in self.store.scan(f"notification/{p.org_id}/"))
        picked = sorted((self.view(d) for d in docs
                         if (not status or d["status"] == status) and (not kind or d["kind"] == kind)),
                        key=lambda d: d["created"], reverse=True)
        return apply(picked, query, text_fields=("id", "subject", "url", "last_error"))

    def retry(self, p: Principal, actor: Actor, nid: str) -> dict[str, Any]:
        """Send a failed notification again (``notify_max_attempts`` more attempts). Raises
        NotFound, Invalid when it is not failed."""
        found = self._load(p.org_id, nid)
        if found is None:
            raise NotFound("no such notification", {"id": nid})
        doc, raw = found
        if doc["status"] != "failed":
            raise Invalid(f"only a failed notification can be retried (this one is {doc['status']})",
                          field="status")
        now = time.time()
        doc.update(status="pending", max_attempts=doc["attempts"] + self.settings.notify_max_attempts,
                   next_attempt=iso(now), _next=now)
        key = notification_key(p.org_id, nid)
        change = Change("notification.retry", org=p.org_id, target_kind="notification",
                        target_id=nid, details=self._describe(doc))
        change.put(key, dump(NOTIFICATION, doc)).expect(key, raw).put(pending_key(p.org_id, nid), b"")
        change.event("changed", "notification", nid, {"status": "pending"})
        self.writer.commit(actor, change)
        self._schedule(now, p.org_id, nid)
        return self.view(doc)

    # ---- delivering --------------------------------------------------------------------
    def _schedule(self, when: float, org: str, nid: str) -> None:
        heapq.heappush(self._due, (when, org, nid))
        if self._wake is not None:
            self._wake.set()

    def load_pending(self) -> int:
        """Queue what was pending when the controller stopped; returns how many."""
        n = 0
        for key, _ in self.store.scan("notifypending/", keys_only=True):
            _, org, nid = key.split("/", 2)
            found = self._load(org, nid)
            if found is None or found[0]["status"] != "pending":
                self.store.delete(key)
                continue
            self._schedule(float(found[0].get("_next", 0)), org, nid)
            n += 1
        return n

    @property
    def queued(self) -> int:
        return len(self._due) + len(self._busy)

    async def run(self) -> None:
        """Deliver due notifications until cancelled (webhooks PARALLEL at once, e-mails as many
        as the mailer sends at once, so a silent SMTP server never holds up webhooks). A delivery
        cut short by the stop stays pending and is sent after the next start."""
        self._wake = asyncio.Event()
        sems = {"webhook": asyncio.Semaphore(PARALLEL),
                "email": asyncio.Semaphore(int(getattr(self.mailer, "workers", PARALLEL)))}
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                now = time.time()
                while self._due and self._due[0][0] <= now:
                    _, org, nid = heapq.heappop(self._due)
                    if nid in self._busy:
                        continue
                    self._busy.add(nid)
                    t = asyncio.create_task(self._attempt(sems, org, nid), name=f"notify {nid}")
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                wait = min(60.0, self._due[0][0] - now) if self._due else 60.0
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, wait))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(self, sems: dict[str, asyncio.Semaphore], org: str, nid: str) -> None:
        try:
            first = self._load(org, nid)
            if first is None or first[0]["status"] != "pending":
                return
            async with sems.get(first[0]["kind"], sems["webhook"]):
                found = self._load(org, nid)
                if found is None or found[0]["status"] != "pending":
                    return
                doc = found[0]
                try:
                    said = await self._send(doc)
                except DeliveryError as exc:
                    self._failed(doc, exc.message, exc.retryable)
                except Exception as exc:  # a bug must not stop the queue
                    log.exception("notification %s: unexpected failure", nid)
                    self._failed(doc, f"internal error: {type(exc).__name__}", True)
                else:
                    self._sent(doc, said)
        finally:
            self._busy.discard(nid)

    async def _send(self, doc: dict[str, Any]) -> str:
        payload = json.loads(doc["_payload"])
        # a backstop: the mailer keeps its own deadline (three times smtp_timeout)
        timeout = float(self.settings.smtp_timeout) * 3 + 10
        if doc["kind"] == "email":
            return await asyncio.wait_for(
                self.mailer.send(doc["to"], doc["subject"], payload["text"], payload.get("html")),
                timeout)
        key = notification_key(doc["org"], doc["id"])
        url = self.secrets.open(doc["_url"], aad=key).decode()
        headers = json.loads(self.secrets.open(doc["_headers"], aad=key))
        body = payload["body"].encode() if payload.get("body") is not None else None
        return await asyncio.wait_for(self.poster.send(url, doc["method"], headers, body), timeout)

    def _sent(self, doc: dict[str, Any], said: str) -> None:
        now = time.time()
        doc["attempts"] += 1
        doc["results"] = [*doc["results"], {"time": iso(now), "ok": True, "said": said[:300]}][-20:]
        doc.update(status="sent", sent=iso(now), next_attempt="", last_error="")
        self.sent += 1
        self._write(doc, "notification.send", "success")

    def _failed(self, doc: dict[str, Any], error: str, retryable: bool) -> None:
        now = time.time()
        doc["attempts"] += 1
        doc["results"] = [*doc["results"], {"time": iso(now), "ok": False, "error": error[:300]}][-20:]
        doc["last_error"] = error[:500]
        self.failed_attempts += 1
        if retryable and doc["attempts"] < doc["max_attempts"]:
            wait = backoff(doc["attempts"], self.settings.notify_retry_base,
                           self.settings.notify_retry_max)
            doc.update(next_attempt=iso(now + wait), _next=now + wait)
            self._write(doc, "notification.attempt", "failed")
            self._schedule(now + wait, doc["org"], doc["id"])
            return
        doc.update(status="failed", next_attempt="")
        log.warning("notification %s (%s) failed for good after %d attempt(s): %s", doc["id"],
                    doc["kind"], doc["attempts"], error)
        self._write(doc, "notification.fail", "failed")

    def _write(self, doc: dict[str, Any], action: str, outcome: str) -> None:
        org, nid = doc["org"], doc["id"]
        details = dict(self._describe(doc), attempts=doc["attempts"])
        change = Change(action, org=org, target_kind="notification", target_id=nid,
                        outcome=outcome, details=details)
        change.put(notification_key(org, nid), dump(NOTIFICATION, doc))
        if doc["status"] != "pending":
            change.delete(pending_key(org, nid))
        change.event("changed", "notification", nid, {"status": doc["status"],
                                                      "attempts": doc["attempts"]})
        try:
            self.writer.commit(NOTIFIER, change)
        except Exception:
            log.exception("recording notification %s failed", nid)

    def prune(self, older_than: float) -> int:
        """Delete sent and failed notifications made before ``older_than`` (epoch): one
        audited change per organisation and thousand notifications."""
        doomed: dict[str, list[str]] = {}
        for key, raw in self.store.scan("notification/"):
            doc = json.loads(raw)
            if doc.get("status") != "pending" and float(doc.get("_created_at", 0)) < older_than:
                doomed.setdefault(str(doc["org"]), []).append(key)
        n = 0
        for org, keys in doomed.items():
            for i in range(0, len(keys), 1000):
                part = keys[i:i + 1000]
                change = Change("notification.prune", org=org, target_kind="notification",
                                details={"count": len(part), "retention": "incident_retention"})
                for k in part:
                    change.delete(k)
                self.writer.commit(NOTIFIER, change)
                n += len(part)
        return n
