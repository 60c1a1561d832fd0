"""Custom metric sources: a script of the library run by the agents of the machines its
selectors pick, at the agent's metric interval (or the source's own). Created, edited and
deleted through the writer (audited, published as ``metricsource`` events); the agents get
their sources from ``controller.monitoring.push``.

Selectors are Mist's (as rules and schedules take them), all of which a machine must match:
``{"type": "machines", "ids": [...]}`` (a machine's id; for a machine an agent reports for,
the agent's id too) and ``{"type": "tags", "include": ["env=prod", "web"]}`` (every tag, with
that value or any). They are resolved whenever an agent's sources are worked out, so a
machine that gains a tag starts running the sources that select it.

Blocks briefly (store reads); callers on the event loop may call it for one agent."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from controller.accounts.model import Principal
from controller.agents.model import agent_key
from controller.errors import Conflict, Invalid, NotFound
from controller.events.model import Actor, Event
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.machines.model import key as machine_key
from controller.monitoring.model import (
    DEFAULT_TIMEOUT,
    MAX_INTERVAL,
    MAX_PER_MACHINE,
    MAX_SCRIPT_BYTES,
    MAX_SOURCES,
    MAX_TIMEOUT,
    METRIC_SOURCE,
    MIN_INTERVAL,
    NAME,
    source_key,
    status_key,
)
from controller.scripts.model import content_key, script_key
from controller.scripts.service import ScriptService
from controller.store.base import Batch, Store
from controller.store.docs import by_ref, dump, load, public
from controller.timeutil import iso


@dataclass(frozen=True)
class SourceSpec:
    """One source as an agent gets it."""

    id: str
    name: str
    content: bytes
    sha256: str
    interval: int
    timeout: int


def digest(specs: list[SourceSpec]) -> str:
    """Equal for the same list: what was sent to an agent is compared by it."""
    h = hashlib.sha256()
    for s in specs:
        h.update(f"{s.id}\0{s.name}\0{s.sha256}\0{s.interval}\0{s.timeout}\n".encode())
    return h.hexdigest()


def check_selectors(value: Any) -> list[dict[str, Any]]:
    """Mist's selectors, normalised: machines ids and tags include lists."""
    if not isinstance(value, list) or not value:
        raise Invalid("selectors must be a list of at least one selector: {\"type\": "
                      "\"machines\", \"ids\": [...]} or {\"type\": \"tags\", \"include\": "
                      "[\"key=value\", ...]}", field="selectors")
    out: list[dict[str, Any]] = []
    for i, s in enumerate(value):
        kind = s.get("type") if isinstance(s, dict) else None
        items = s.get("ids" if kind == "machines" else "include") if isinstance(s, dict) else None
        if kind not in ("machines", "tags") or not isinstance(items, list) or not items \
                or not all(isinstance(x, str) and 0 < len(x) <= 320 for x in items):
            raise Invalid(f"selectors[{i}] must be {{\"type\": \"machines\", \"ids\": [...]}} "
                          "or {\"type\": \"tags\", \"include\": [\"key=value\", ...]} with at "
                          "least one entry", field="selectors")
        if len(items) > 1000:
            raise Invalid(f"selectors[{i}]: at most 1000 entries", field="selectors")
        out.append({"type": kind, "ids" if kind == "machines" else "include": items})
    return out


def selects(selectors: list[dict[str, Any]], machine: dict[str, Any], agent_id: str) -> bool:
    """Whether every selector picks ``machine`` (reported on by ``agent_id``)."""
    tags = machine.get("tags") or {}
    for s in selectors:
        if s["type"] == "machines":
            if not ({str(machine.get("id")), agent_id} & set(s["ids"])):
                return False
        else:
            for t in s["include"]:
                k, eq, v = t.partition("=")
                if k.strip() not in tags or (eq and str(tags[k.strip()]) != v.strip()):
                    return False
    return True


class SourceService:
    def __init__(self, store: Store, writer: Writer, scripts: ScriptService) -> None:
        self.store = store
        self.writer = writer
        self.scripts = scripts

    # ---- reading ---------------------------------------------------------------------------
    def _load(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        found = by_ref(self.store, METRIC_SOURCE, f"metricsource/{p.org_id}/", ref) \
            if p.org_id else None
        if found is None:
            raise NotFound("no such metric source", {"id": ref})
        return found

    def _docs(self, org: str) -> list[dict[str, Any]]:
        return [load(METRIC_SOURCE, raw) for _, raw in self.store.scan(f"metricsource/{org}/")]

    def has_sources(self, org: str) -> bool:
        return any(True for _ in self.store.scan(f"metricsource/{org}/", limit=1, keys_only=True))

    def list_sources(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return apply((public(d) for d in self._docs(p.org_id)), query)

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        """The source with the machines it selects now and what their agents last said."""
        doc, _ = self._load(p, ref)
        out = public(doc)
        out["machines"] = [m["id"] for m in self._machines(p.org_id)
                           if selects(doc["selectors"], m, str(m.get("agent") or ""))]
        out["status"] = [json.loads(raw) for _, raw in
                         self.store.scan(f"metricstatus/{p.org_id}/{doc['id']}/")]
        return out

    def _machines(self, org: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for _, raw in self.store.scan(f"machine/{org}/")]

    # ---- changes ---------------------------------------------------------------------------
    def _script(self, p: Principal, ref: str) -> dict[str, Any]:
        view, content = self.scripts.payload(p, ref)  # NotFound, ScriptCorrupt
        if view.get("entrypoint") or view.get("exec_type") != "executable":
            raise Invalid(f"the script {view['name']!r} is an archive or an Ansible playbook: a "
                          "metric source runs one executable file", field="script")
        if len(content) > MAX_SCRIPT_BYTES:
            raise Invalid(f"a metric source's script may have at most {MAX_SCRIPT_BYTES} bytes",
                          field="script")
        return view

    def _fields(self, p: Principal, body: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        if "name" in body:
            name = str(body["name"]).strip()
            if not NAME.match(name):
                raise Invalid("name must be 1 to 100 letters, digits and _ . : - (it becomes the "
                              "source label of the samples)", field="name")
            if any(d["name"] == name and d["id"] != doc.get("id") for d in self._docs(p.org_id)):
                raise Conflict(f"a metric source is named {name!r} already", {"name": name})
            out["name"] = name
        if "script" in body:
            view = self._script(p, str(body["script"]))
            out.update(script=view["id"], script_name=view["name"])
        if "selectors" in body:
            selectors = check_selectors(body["selectors"])
            machines = self._machines(p.org_id)
            known = {m["id"] for m in machines} | {str(m["agent"]) for m in machines
                                                   if m.get("agent")}
            unknown = [i for s in selectors if s["type"] == "machines" for i in s["ids"]
                       if i not in known]
            if unknown:
                raise Invalid(f"no such machine: {', '.join(unknown[:5])}", field="selectors",
                              machines=unknown[:100])
            out["selectors"] = selectors
        for name, low, high in (("interval", MIN_INTERVAL, MAX_INTERVAL),
                                ("timeout", 1, MAX_TIMEOUT)):
            if name in body:
                v = body[name]
                if v in (None, 0) and name == "interval":
                    out[name] = 0  # the agent's metric interval
                    continue
                if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
                    raise Invalid(f"{name} must be {low} to {high} seconds", field=name)
                out[name] = v
        return out

    def create(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        if len(self._docs(p.org_id)) >= MAX_SOURCES:
            raise Conflict(f"an organisation may have at most {MAX_SOURCES} metric sources")
        for required in ("name", "script", "selectors"):
            if required not in body:
                raise Invalid(f"{required} is required", field=required)
        sid = uuid.uuid4().hex[:16]
        doc = self._fields(p, body, {"id": sid, "interval": 0, "timeout": DEFAULT_TIMEOUT,
                                     "created": iso(), "created_by": p.user.get("email", "")})
        change = Change("metricsource.create", org=p.org_id, target_kind="metricsource",
                        target_id=sid, details=self._details(doc))
        change.put(source_key(p.org_id, sid), dump(METRIC_SOURCE, doc))
        change.event("created", "metricsource", sid, {"name": doc["name"]})
        self.writer.commit(actor, change)
        return public(doc)

    def edit(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        doc, raw = self._load(p, ref)
        new = self._fields(p, body, doc)
        change = Change("metricsource.edit", org=p.org_id, target_kind="metricsource",
                        target_id=doc["id"], details=self._details(new, sorted(body)))
        change.put(source_key(p.org_id, doc["id"]), dump(METRIC_SOURCE, new))
        change.expect(source_key(p.org_id, doc["id"]), raw)
        change.event("changed", "metricsource", doc["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        return public(new)

    def delete(self, p: Principal, actor: Actor, ref: str) -> None:
        doc, raw = self._load(p, ref)
        change = Change("metricsource.delete", org=p.org_id, target_kind="metricsource",
                        target_id=doc["id"], details={"name": doc["name"]})
        change.delete(source_key(p.org_id, doc["id"])).expect(source_key(p.org_id, doc["id"]), raw)
        for k, _ in self.store.scan(f"metricstatus/{p.org_id}/{doc['id']}/", keys_only=True):
            change.delete(k)
        change.event("deleted", "metricsource", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)

    @staticmethod
    def _details(doc: dict[str, Any], changed: list[str] | None = None) -> dict[str, Any]:
        d = {k: doc.get(k) for k in ("name", "script", "script_name", "selectors", "interval",
                                     "timeout")}
        if changed is not None:
            d["changed"] = changed
        return d

    # ---- for the agents --------------------------------------------------------------------
    def machine_of(self, agent: dict[str, Any]) -> dict[str, Any]:
        """The machine an agent reports for (linked, else its own; {} when there is none)."""
        org = agent["org"]
        for mid in (agent.get("machine"), agent["id"]):
            raw = self.store.get(machine_key(org, str(mid))) if mid else None
            if raw is not None:
                return dict(json.loads(raw))
        return {}

    def for_agent(self, agent: dict[str, Any]) -> list[SourceSpec]:
        """The sources the agent's machine is selected for now, by name (at most
        MAX_PER_MACHINE), each with its script's current content (one that no longer
        matches its checksum, or is gone, is left out)."""
        org = agent["org"]
        machine = self.machine_of(agent)
        if not machine:
            return []
        out: list[SourceSpec] = []
        for doc in sorted(self._docs(org), key=lambda d: d["name"]):
            if not selects(doc["selectors"], machine, agent["id"]):
                continue
            sraw = self.store.get(script_key(org, doc["script"]))
            content = self.store.get(content_key(org, doc["script"]))
            if sraw is None or content is None:
                continue
            sha = hashlib.sha256(content).hexdigest()
            if sha != json.loads(sraw).get("sha256"):
                continue
            out.append(SourceSpec(doc["id"], doc["name"], content, sha, int(doc.get("interval") or 0),
                                  int(doc.get("timeout") or DEFAULT_TIMEOUT)))
            if len(out) >= MAX_PER_MACHINE:
                break
        return out

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        org = self.store.get(f"agentid/{agent_id}") if "/" not in agent_id else None
        raw = self.store.get(agent_key(org.decode(), agent_id)) if org else None
        return dict(json.loads(raw)) if raw else None

    def status(self, agent_id: str, fields: dict[str, Any]) -> Event | None:
        """What an agent says about a source's runs, kept per (source, machine): bookkeeping,
        stored without an audit entry. Ignored for a source not of the agent's organisation.
        Returns the live event to publish."""
        agent = self.agent(agent_id)
        sid = str(fields.get("source_id") or "")
        if agent is None or agent.get("revoked") or not sid or "/" in sid:
            return None
        org = agent["org"]
        if self.store.get(source_key(org, sid)) is None:
            return None
        mid = str(self.machine_of(agent).get("id") or agent_id)
        t_ms = int(fields.get("time_ms") or 0)
        doc = {"machine": mid, "agent": agent_id, "time": iso(t_ms / 1000 if t_ms else None),
               "received": iso(), "samples": int(fields.get("samples") or 0),
               "error": str(fields.get("error") or "")[:1000],
               "bad_lines": [str(x)[:300] for x in list(fields.get("bad_lines") or [])[:10]],
               "bad_line_count": int(fields.get("bad_line_count") or 0),
               "timed_out": bool(fields.get("timed_out")),
               "exit_code": int(fields.get("exit_code") or 0),
               "duration_ms": int(fields.get("duration_ms") or 0)}
        b = Batch()
        b.put(status_key(org, sid, mid), json.dumps(doc).encode())
        self.store.write(b)
        return Event("changed", "metricstatus", sid, org, time.time(), doc)
