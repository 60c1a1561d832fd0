"""Interactive shells: ``open`` checks the machine is the caller's and reachable, stores a
pending session and hands out a one-use ticket; ``admit`` trades the ticket for the right to
connect; ``run`` opens the channel (the machine's agent, else SSH) and relays it to the
client while recording it; the session document and the audit log say who, which machine,
when, how long, and how it ended.

Tickets live in memory, hashed (a restart forgets them: they are good for a minute at most).
Everything runs on the event loop; store writes are quick (memtable), recordings are written
by a thread (:mod:`controller.shells.recording`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.accounts.model import Principal
from controller.accounts.service import AccountService
from controller.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from controller.events.model import SYSTEM, Actor
from controller.events.writer import Change, Writer
from controller.exec.agentlink import AgentLink
from controller.exec.model import ShellChannel, SshTarget
from controller.exec.targets import Route, Targets
from controller.listing import Query, apply
from controller.settings import Settings
from controller.shells.model import (
    DEFAULT_TERM,
    ERROR,
    ID_RE,
    SHELL,
    SHUTDOWN,
    ShellClient,
    key,
    new_id,
)
from controller.shells.recording import Recorder
from controller.shells.relay import Live, relay
from controller.store.base import Batch, Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso

log = logging.getLogger(__name__)

SshOpener = Callable[[SshTarget, str, int, int, str], Awaitable[ShellChannel]]
SHUTDOWN_WAIT = 4.0   # seconds close_all waits for live shells to write their end


@dataclass
class Ticket:
    """What one ticket admits to: a pending shell, for the user who asked for it."""

    shell_id: str
    org: str
    digest: bytes              # SHA-256 of the ticket: the ticket itself is never kept
    expires: float
    actor: Actor               # who asked (their address and channel are replaced on connect)
    machine: dict[str, Any] = field(repr=False)
    term: str = DEFAULT_TERM
    cols: int = 80
    rows: int = 24
    login: str = ""
    command: str = ""
    used: bool = False


@dataclass(frozen=True)
class Admission:
    ticket: Ticket
    ip: str


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def ws_base(public_url: str) -> str:
    return "wss" + public_url[5:] if public_url.startswith("https") else "ws" + public_url[4:]


class ShellService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, targets: Targets,
                 link: AgentLink, accounts: AccountService,
                 ssh_opener: SshOpener | None = None) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.targets = targets
        self.link = link
        self.accounts = accounts
        self._ssh_opener = ssh_opener
        self._tickets: dict[str, Ticket] = {}
        self._live: dict[str, Live] = {}

    # ---- asking for a shell -------------------------------------------------------------
    def open(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """A pending shell on machine ``ref`` of the caller's organisation and the ticket to
        connect to it. NotFound for a machine that is not theirs, Invalid when it cannot be
        reached (no connected agent, no key)."""
        machine = self.targets.machine(p, ref)
        route = self.targets.route(machine)
        if route.why:
            raise Invalid(f"cannot open a shell on {route.name}: {route.why}", field="machine")
        login = str(body.get("user") or "")
        _check_login(route, login)
        self._prune()
        now = time.time()
        ticket = secrets.token_urlsafe(32)
        t = Ticket(new_id(), p.org_id, _digest(ticket), now + self.settings.shell_ticket_ttl,
                   actor, machine, term=str(body.get("term") or DEFAULT_TERM),
                   cols=int(body.get("cols") or 80), rows=int(body.get("rows") or 24),
                   login=login, command=str(body.get("command") or ""))
        doc = {"id": t.shell_id, "org": p.org_id, "machine": machine["id"],
               "machine_name": route.name, "cloud": machine.get("cloud") or "",
               "user": p.user.get("email", ""), "user_id": p.user_id, "via": route.via,
               "login": route.ssh.user if route.ssh is not None else login,
               "target": route.ssh.label if route.ssh is not None else route.agent_id,
               "term": t.term, "cols": t.cols, "rows": t.rows, "command": t.command,
               "state": "pending", "created": iso(now), "expires": iso(t.expires),
               "started": None, "ended": None, "duration": None, "exit_code": None,
               "reason": "", "error": "", "bytes_in": 0, "bytes_out": 0, "recorded": False,
               "recording_bytes": 0, "recording_truncated": False}
        change = Change("shell.open", org=p.org_id, target_kind="shell", target_id=t.shell_id,
                        details={"machine": machine["id"], "machine_name": route.name,
                                 "via": route.via, "login": doc["login"],
                                 "command": t.command})
        change.put(key(p.org_id, t.shell_id), dump(SHELL, doc))
        change.event("created", "shell", t.shell_id, {"machine": machine["id"], "state": "pending"})
        self.writer.commit(actor, change)
        self._tickets[t.shell_id] = t
        location = (f"{ws_base(self.settings.public_url)}/api/v2/shells/{t.shell_id}/ws"
                    f"?ticket={ticket}")
        return {"id": t.shell_id, "location": location, "ticket": ticket,
                "expires": iso(t.expires), "machine": machine["id"], "via": route.via}

    def _prune(self) -> None:
        # a used or expired ticket is kept a while to say so, then forgotten
        cutoff = time.time() - self.settings.shell_ticket_ttl - 60
        for sid in [s for s, t in self._tickets.items() if t.expires < cutoff]:
            del self._tickets[sid]

    # ---- connecting -------------------------------------------------------------------
    def admit(self, shell_id: str, ticket: str, ip: str, p: Principal | None) -> Admission:
        """Trade a ticket for the right to connect, once. Unauthenticated for a missing,
        wrong, used or expired ticket (refusals of real shells' tickets are audited);
        Forbidden when the connection carries another user's credentials."""
        if not ticket:
            raise Unauthenticated("a ticket is required: POST /api/v2/machines/{machine}/"
                                  "actions/ssh answers with this shell's location and ticket")
        t = self._tickets.get(shell_id) if ID_RE.match(shell_id) else None
        if t is None or not hmac.compare_digest(_digest(ticket), t.digest):
            raise Unauthenticated("this ticket is not valid for this shell")
        if t.used:
            self._refuse(t, ip, "this ticket was used already: ask for a new shell "
                                "(POST /api/v2/machines/{machine}/actions/ssh)")
        if time.time() > t.expires:
            self._refuse(t, ip, f"this ticket has expired (tickets are good for "
                                f"{self.settings.shell_ticket_ttl} s): ask for a new shell")
        if p is not None and p.user_id != t.actor.id:
            raise Forbidden("this shell was asked for by another user")
        t.used = True
        return Admission(t, ip)

    def _refuse(self, t: Ticket, ip: str, why: str) -> None:
        exc = Unauthenticated(why)
        exc.org, exc.credential_id, exc.user_id = t.org, t.shell_id, t.actor.id  # type: ignore[attr-defined]
        self.accounts.audit_refused(ip, "ws", exc, "shell_ticket")
        raise exc

    async def run(self, admission: Admission, client: ShellClient) -> None:
        """Open the shell and relay it to ``client`` until either ends, the shell is idle or
        too long open, or the controller stops; then close both, and store and audit how it
        went. Never raises for the shell's or the client's failures."""
        t = admission.ticket
        actor = dataclasses.replace(t.actor, ip=admission.ip, via="ws")
        doc = self._doc(t.org, t.shell_id)
        live = Live(doc, self.settings.shell_idle_timeout, self.settings.shell_max_duration)
        self._live[t.shell_id] = live
        try:
            route = self.targets.route(t.machine)
            doc.update(state="open", started=iso(), client_ip=admission.ip,
                       via=route.via or doc["via"])
            self._commit(actor, doc, "shell.connect", {"machine": doc["machine"],
                                                       "client_ip": admission.ip})
            try:
                channel = await self._open_channel(t, route)
            except Exception as exc:  # noqa: BLE001 - any failure to open is the client's answer
                message = _message(exc, "could not open the shell")
                live.end(ERROR, message)
                await client.send_control({"type": "error", "reason": ERROR, "message": message})
                return
            await relay(live, channel, client, self._recorder(t, doc))
        except asyncio.CancelledError:
            live.end(SHUTDOWN, "the controller stopped")
            raise
        except Exception as exc:  # noqa: BLE001 - logged once here; the session says it failed
            log.exception("shell %s failed", t.shell_id)
            live.end(ERROR, f"internal error ({exc.__class__.__name__})")
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._finish(actor, live, client))

    async def _open_channel(self, t: Ticket, route: Route) -> ShellChannel:
        if route.why:
            raise Invalid(f"cannot open a shell on {route.name}: {route.why}")
        if route.agent_id:
            return await self.link.open_shell(route.agent_id, t.term, t.cols, t.rows,
                                              user=t.login, command=t.command)
        assert route.ssh is not None
        _check_login(route, t.login)
        opener = self._ssh_opener
        if opener is None:
            from controller.exec.ssh import open_shell  # asyncssh: loaded when first needed
            opener = open_shell
        return await opener(route.ssh, t.term, t.cols, t.rows, t.command)

    def _recorder(self, t: Ticket, doc: dict[str, Any]) -> Recorder | None:
        limit = self.settings.shell_recording_max_bytes
        if limit <= 0:
            return None
        path = self.recording_file(t.org, t.shell_id)
        return Recorder(path, limit, t.cols, t.rows, t.term, doc["machine_name"], t.command)

    def recording_file(self, org: str, shell_id: str) -> Path:
        if not ID_RE.match(shell_id) or not org or "/" in org or org.startswith("."):
            raise NotFound("no such shell", {"id": shell_id})
        return Path(self.settings.data_dir) / "recordings" / org / f"{shell_id}.cast"

    async def _finish(self, actor: Actor, live: Live, client: ShellClient) -> None:
        try:
            await client.close()
            live.conclude()
            doc = live.doc
            self._commit(actor, doc, "shell.close", {
                "machine": doc["machine"], "machine_name": doc["machine_name"],
                "started": doc["started"], "ended": doc["ended"], "duration": doc["duration"],
                "exit_code": doc["exit_code"], "reason": doc["reason"], "error": doc["error"],
                "bytes_in": doc["bytes_in"], "bytes_out": doc["bytes_out"],
                "recorded": doc["recorded"], "recording_bytes": doc["recording_bytes"]},
                outcome="failed" if doc["state"] == "failed" else "success")
        finally:
            self._live.pop(live.doc["id"], None)
            live.done.set()

    def _commit(self, actor: Actor, doc: dict[str, Any], action: str, details: dict[str, Any],
                outcome: str = "success") -> None:
        change = Change(action, org=doc["org"], target_kind="shell", target_id=doc["id"],
                        outcome=outcome, details=details)
        change.put(key(doc["org"], doc["id"]), dump(SHELL, doc))
        change.event("changed", "shell", doc["id"], {"state": doc["state"]})
        self.writer.commit(actor, change)

    async def close_all(self, reason: str = SHUTDOWN) -> None:
        """End every live shell (the controller stops) and wait, a little, until each has
        stored and audited its end."""
        self._tickets.clear()
        lives = list(self._live.values())
        for live in lives:
            live.stop(reason)
        if lives:
            await asyncio.wait([asyncio.ensure_future(lv.done.wait()) for lv in lives],
                               timeout=SHUTDOWN_WAIT)

    def sweep_interrupted(self) -> int:
        """On start: shells a stopped controller left open are failed (and audited), those
        never connected to are expired."""
        b, changes = Batch(), []
        for k, raw in self.store.scan("shell/"):
            doc = load(SHELL, raw)
            if doc.get("state") == "pending":
                b.put(k, dump(SHELL, dict(doc, state="expired")))
            elif doc.get("state") == "open":
                doc.update(state="failed", ended=iso(), reason=SHUTDOWN,
                           error="the controller stopped while the shell was open")
                with contextlib.suppress(OSError, NotFound):  # what was written is kept
                    size = self.recording_file(doc["org"], doc["id"]).stat().st_size
                    doc.update(recorded=True, recording_bytes=size)
                c = Change("shell.close", org=doc["org"], target_kind="shell",
                           target_id=doc["id"], outcome="failed",
                           details={"machine": doc["machine"], "error": doc["error"]})
                changes.append(c.put(k, dump(SHELL, doc)))
        if b:
            self.store.write(b)
        if changes:
            self.writer.commit_many(SYSTEM, changes)
        return len(changes)

    # ---- reading ------------------------------------------------------------------------
    def _doc(self, org: str, shell_id: str) -> dict[str, Any]:
        raw = self.store.get(key(org, shell_id)) if org and ID_RE.match(shell_id) else None
        if raw is None:
            raise NotFound("no such shell", {"id": shell_id})
        return load(SHELL, raw)

    def view(self, doc: dict[str, Any]) -> dict[str, Any]:
        live = self._live.get(doc["id"])
        out = public(live.snapshot() if live is not None else doc)
        out.pop("org", None)
        if out.get("state") == "pending" and doc["id"] not in self._tickets:
            out["state"] = "expired"  # the ticket is gone with a restart
        elif out.get("state") == "pending" and self._tickets[doc["id"]].expires < time.time():
            out["state"] = "expired"
        return out

    def get(self, p: Principal, shell_id: str) -> dict[str, Any]:
        return self.view(self._doc(p.org_id, shell_id))

    def list(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not p.org_id:
            return apply([], query)
        docs = (self.view(load(SHELL, raw))
                for _, raw in self.store.scan(f"shell/{p.org_id}/", reverse=True))
        return apply(docs, query)

    def recording(self, p: Principal, shell_id: str) -> tuple[Path, str]:
        """The recording's file and a name to save it as; NotFound when there is none."""
        doc = self._doc(p.org_id, shell_id)
        path = self.recording_file(p.org_id, doc["id"])
        if not doc.get("recorded") and doc["id"] not in self._live:
            why = "its recording was deleted" if doc.get("recording_deleted") else "it was not recorded"
            raise NotFound(f"this shell has no recording: {why}", {"id": shell_id})
        if not path.is_file():
            raise NotFound("this shell's recording is missing from the data directory",
                           {"id": shell_id})
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in doc["machine_name"])
        return path, f"shell-{name[:60]}-{doc['id']}.cast"

    def delete_recording(self, p: Principal, actor: Actor, shell_id: str) -> dict[str, Any]:
        doc = self._doc(p.org_id, shell_id)
        if doc["id"] in self._live:
            raise Conflict("the shell is still open: its recording is being written")
        if not doc.get("recorded"):
            raise NotFound("this shell has no recording", {"id": shell_id})
        path = self.recording_file(p.org_id, doc["id"])
        path.unlink(missing_ok=True)
        doc.update(recorded=False, recording_deleted=iso())
        self._commit(actor, doc, "shell.recording.delete",
                     {"machine": doc["machine"], "bytes": doc.get("recording_bytes", 0)})
        return self.view(doc)


def _check_login(route: Route, login: str) -> None:
    if route.ssh is not None and login and login != route.ssh.user:
        raise Invalid(f"over SSH the shell logs in as {route.ssh.user} (the user its key is "
                      "for); user chooses the account on machines with an agent", field="user")


def _message(exc: BaseException, what: str) -> str:
    from controller.errors import OvercastError

    if isinstance(exc, OvercastError):
        return exc.message
    log.warning("%s: %s", what, exc.__class__.__name__, exc_info=exc)
    return f"{what}: {exc}"

