"""The rule evaluator: every second it looks for rules that are due (each at its own
``when`` interval), evaluates them against the machines their selectors pick now, and
steps their incidents; what fired, resolved or needs a reminder goes to the actions runner.

A metric condition holds for a machine when it holds for any of the machine's series the
target selects: ``avg``/``all``/``any``/``count`` of the window's samples compared with the
threshold. A machine without samples in the window does not hold (its incident resolves:
"no data"; the "no data" rule is what watches silence). A log condition counts the audit
entries its search matches in the window, per machine (or per thing the entry is about).

:meth:`Evaluator.cycle` blocks (store reads, one atomic write of the incidents that
changed): the loop runs it in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.agents.model import agent_key
from controller.listing import Search
from controller.rules import model as m
from controller.rules.feed import AuditFeed, Entry
from controller.rules.incidents import Act, Finding, Incidents
from controller.rules.parse import seconds
from controller.rules.select import OrgMachines, select
from controller.rules.service import RuleService
from controller.rules.target import MetricTarget, parse_logs, parse_metric
from controller.rules.window import SampleCache, SeriesIndex
from controller.store.base import Store
from controller.store.docs import load
from controller.timeutil import parse_iso

log = logging.getLogger(__name__)
T = TypeVar("T")

_CMP: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt, "lt": operator.lt, "eq": operator.eq, "ne": operator.ne,
    "ge": operator.ge, "le": operator.le}
ORGS_EVERY = 60.0  # seconds between looks for organisations that need a "no data" rule (and
                   # whenever an agent enrols)
PRUNE_EVERY = 600  # rounds between prunings of what is remembered for throttling


@dataclass
class Cond:
    data_type: str
    start: float                       # seconds back the window starts
    stop: float                        # seconds back it ends
    op: str = "gt"
    threshold: float = 0.0
    agg: str = "avg"
    metric: MetricTarget | None = None
    search: Search | None = None
    labels_ok: dict[int, bool] = field(default_factory=dict)    # per series id
    matched: dict[int, str] = field(default_factory=dict)       # per audit seq: subject or ""

    def check(self, vals: Sequence[float]) -> tuple[bool, float]:
        """Whether the window's values hold, and the value that tells: the average, the
        count, or the sample closest to breaking (all) / furthest past the threshold (any).
        min and max decide all/any without a comparison per sample."""
        op, thr, agg = self.op, self.threshold, self.agg
        if agg == "avg":
            v = sum(vals) / len(vals)
            return _CMP[op](v, thr), v
        if agg == "count":
            return _CMP[op](len(vals), thr), float(len(vals))
        lo, hi = min(vals), max(vals)
        if op in ("eq", "ne"):
            has = thr in vals
            only = lo == hi == thr
            if agg == "all":
                return (only, thr) if op == "eq" else (not has, vals[-1])
            return (has, thr) if op == "eq" else (not only, lo if lo != thr else hi)
        high = op in ("gt", "ge")
        if agg == "all":  # the sample closest to breaking it tells
            v = lo if high else hi
        else:
            v = hi if high else lo
        return _CMP[op](v, thr), v


@dataclass
class Compiled:
    doc: dict[str, Any]
    raw: bytes
    conds: list[Cond]
    every: float

    @property
    def key(self) -> tuple[str, str]:
        return self.doc["org"], self.doc["id"]


def compile_rule(doc: dict[str, Any], raw: bytes) -> Compiled:
    conds = []
    for c in doc["conditions"]:
        w = c["window"]
        unit = m.PERIODS[w["period"]]
        cond = Cond(c["data_type"], float(w["start"] * unit), float(w.get("stop", 0) * unit))
        if c["data_type"] != "nodata":
            q = c["query"]
            cond.op, cond.threshold, cond.agg = q["operator"], float(q["threshold"]), q["aggregation"]
            if c["data_type"] == "logs":
                cond.search = parse_logs(q["target"])
            else:
                cond.metric = parse_metric(q["target"])
        conds.append(cond)
    every = max(float(m.MIN_FREQUENCY), float(seconds(doc["when"], "every")))
    return Compiled(doc, raw, conds, every)


async def finish(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` (a thread's); when cancelled, let it end first: the store it uses is
    closed once the controller's cleanup is over."""
    fut = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


class Evaluator:
    def __init__(self, store: Store, rules: RuleService, incidents: Incidents) -> None:
        self.store = store
        self.rules = rules
        self.incidents = incidents
        self.series = SeriesIndex(rules.tsdb)
        self.samples = SampleCache(rules.tsdb)
        self.feed = AuditFeed(store)
        self.dispatch: Callable[[Act], Coroutine[Any, Any, None]] | None = None  # the actions runner
        self._compiled: dict[str, Compiled] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._orgs: dict[str, OrgMachines] = {}
        self._orgs_at = 0.0
        self._agents = 0
        self.started: float | None = None   # the time of the first round ("no data" grace)
        self._quiet_at: dict[tuple[str, str], float] = {}  # (org, machine): last seen stopped
        self.rounds = 0
        self.evaluations = 0
        self.last_round = 0.0        # seconds the last round took (wall clock)

    # ---- one round ---------------------------------------------------------------------
    def _load(self) -> list[Compiled]:
        seen: dict[str, Compiled] = {}
        for key, raw in self.store.scan("rule/"):
            c = self._compiled.get(key)
            if c is None or c.raw != raw:
                try:
                    c = compile_rule(load(m.RULE, raw), raw)
                except Exception:  # a rule that no longer reads (say, a regex) is skipped
                    log.exception("rule %s cannot be evaluated", key)
                    continue
            seen[key] = c
        self._compiled = seen
        return list(seen.values())

    def _nodata_orgs(self, now: float) -> None:
        agents = self.store.count("agentid/")  # kept exact by the store: cheap
        if now - self._orgs_at < ORGS_EVERY and agents == self._agents:
            return
        self._orgs_at, self._agents = now, agents
        orgs = {raw.decode() for _, raw in self.store.scan("agentid/")}
        for org in orgs:
            if self.rules.ensure_nodata(org):
                log.info("made the 'no data' rule of organisation %s", org)

    def machines(self, org: str, now: float) -> OrgMachines:
        om = self._orgs.get(org)
        if om is None:
            om = self._orgs[org] = OrgMachines(org)
        om.refresh(self.store, now)
        return om

    def cycle(self, now: float | None = None, force: bool = False) -> list[Act]:
        """Evaluate the rules that are due (all enabled ones with ``force``); return what
        the actions runner must do."""
        t0 = time.monotonic()
        now = time.time() if now is None else now
        if self.started is None:
            self.started = now
        self._nodata_orgs(now)
        compiled = self._load()
        acts: list[Act] = []
        live = {c.key for c in compiled if c.doc.get("enabled", True)}
        for org, rid in self.incidents.open_rules() - live:
            c = self._compiled.get(m.rule_key(org, rid))
            reason = "the rule was disabled" if c is not None else "the rule was deleted"
            acts += self.incidents.close_rule(org, rid, c.doc if c else None, reason, now)
        due = [c for c in compiled if c.key in live and (force or self._due.get(c.key, 0.0) <= now)]
        logs_keep: dict[str, float] = {}
        for c in compiled:
            if c.key in live:
                for cd in c.conds:
                    if cd.data_type == "logs":
                        org = c.doc["org"]
                        logs_keep[org] = max(logs_keep.get(org, 0.0), cd.start + 60)
        self.feed.update(now, logs_keep)
        with self.samples.round():
            for c in due:
                self._due[c.key] = now + c.every
                try:
                    found, reasons = self.evaluate(c, now)
                    acts += self.incidents.step(c.doc, found, reasons, now)
                except Exception:
                    log.exception("evaluating rule %s (%s) failed", c.doc["name"], c.doc["id"])
                self.evaluations += 1
        if self.rounds % 60 == 0:
            self.samples.evict(now)
        if self.rounds % PRUNE_EVERY == 0:
            self._prune(now, [c for c in compiled if c.key in live])
        self.rounds += 1
        self.last_round = time.monotonic() - t0
        return acts

    def _prune(self, now: float, live: list[Compiled]) -> None:
        """Forget what can no longer throttle a notification, and machines stopped long ago."""
        floor = self.incidents.min_interval
        horizon = {c.key: max(floor, float(seconds(c.doc.get("notify_every") or {})))
                   for c in live}
        self.incidents.prune_notified(now, lambda org, rid: horizon.get((org, rid), 0.0))
        self._quiet_at = {k: t for k, t in self._quiet_at.items() if now - t < 86400}

    def evaluate(self, c: Compiled, now: float) -> tuple[list[Finding], dict[str, str]]:
        org = c.doc["org"]
        om = self.machines(org, now)
        kind = c.conds[0].data_type
        base: frozenset[str] | set[str] = om.monitored if kind != "logs" else set(om.docs)
        sel = select(om, c.doc.get("selectors") or [], base, now)
        if kind == "logs":
            found, seen = self._logs(c, om, sel, now)
        elif kind == "nodata":
            found, seen = self._nodata(c, om, sel, now)
        else:
            found, seen = self._metrics(c, om, sel, now)
        reasons: dict[str, str] = {}
        for subject in self.incidents.open_subjects(org, c.doc["id"]):
            if kind == "logs" and ":" in subject:
                continue
            if subject not in om.docs or om.docs[subject].get("missing_since"):
                reasons[subject] = "the machine is gone"
            elif subject not in sel:
                reasons[subject] = "the machine is no longer selected"
            elif kind == "metrics" and subject not in seen:
                reasons[subject] = "no data in the window"
            elif kind == "nodata" and om.docs[subject].get("state") in m.QUIET_STATES:
                reasons[subject] = f"the machine is {om.docs[subject]['state']}"
            elif kind == "nodata":
                agent = om.docs[subject].get("agent") or ""
                reasons[subject] = ("its agent was revoked" if self._revoked(org, str(agent))
                                    else "samples arrive again")
        return found, reasons

    # ---- conditions --------------------------------------------------------------------
    def _metrics(self, c: Compiled, om: OrgMachines, sel: set[str],
                 now: float) -> tuple[list[Finding], set[str]]:
        org = c.doc["org"]
        now_ms = int(now * 1000)
        per: list[dict[str, tuple[bool, float, dict[str, str]]]] = []
        by_agent = om.by_agent
        values = self.samples.values
        for cond in c.conds:
            assert cond.metric is not None
            target, ok_cache = cond.metric, cond.labels_ok
            start_ms, end_ms = now_ms - int(cond.start * 1000), now_ms - int(cond.stop * 1000)
            results: dict[str, tuple[bool, float, dict[str, str]]] = {}
            for ref in self.series.of(org, target.metric, now):
                ok = ok_cache.get(ref.sid)
                if ok is None:
                    ok = ok_cache[ref.sid] = target.matches(ref.labels)
                mid = by_agent.get(ref.agent)
                if not ok or mid is None or mid not in sel:
                    continue
                vals = values(ref.sid, start_ms, end_ms, now)
                if not vals:
                    continue
                hit, value = cond.check(vals)
                old = results.get(mid)
                if old is None or (hit and not old[0]):
                    results[mid] = (hit, value, ref.labels)
            per.append(results)
        seen = set(per[0]).intersection(*per[1:]) if per else set()
        found = []
        for mid in seen:
            rs = [p[mid] for p in per]
            if all(r[0] for r in rs):
                shown = [{"condition": i, "value": round(r[1], 6),
                          "labels": {k: v for k, v in r[2].items() if k != "machine_id"}}
                         for i, r in enumerate(rs)]
                found.append(Finding(mid, mid, om.name(mid), round(rs[0][1], 6), shown))
        return found, seen

    def _nodata(self, c: Compiled, om: OrgMachines, sel: set[str],
                now: float) -> tuple[list[Finding], set[str]]:
        """Machines silent for longer than the window. Silence is expected, so not counted,
        from a machine in a quiet state (stopped, suspended...), and is excused for the
        window plus the agents' longest reconnect wait (AGENT_RECONNECT_MAX) after the
        evaluator started or the machine was last seen stopped, until it is heard from
        again: agents back off up to a minute before they reconnect to a restarted
        controller. An incident already open stays open through that grace. An agent
        stopped on purpose while its machine runs still counts: the machine is unwatched
        (revoke the agent, or narrow or disable the rule, to silence it)."""
        cond = c.conds[0]
        org = c.doc["org"]
        heart = {ref.agent: ref.sid for ref in self.series.of(org, m.HEARTBEAT_METRIC, now)}
        agents = {mid: a for a, mid in om.by_agent.items()}
        start_ms = int((now - cond.start) * 1000)
        grace = cond.start + m.AGENT_RECONNECT_MAX
        started = self.started if self.started is not None else now
        opened = set(self.incidents.open_subjects(org, c.doc["id"]))
        found = []
        for mid in sel:
            doc = om.docs[mid]
            if doc.get("state") in m.QUIET_STATES:
                self._quiet_at[(org, mid)] = now
                continue
            sid = heart.get(agents.get(mid, ""))
            last = self.samples.last_time(sid, start_ms, now) if sid is not None else None
            excused = max(started, self._quiet_at.get((org, mid), 0.0))
            if (last is None or last / 1000 < excused) and now - excused <= grace \
                    and mid not in opened:
                continue  # not heard from since the start (or since it was stopped): grace
            if last is not None:
                silent = now - last / 1000
            else:
                try:
                    silent = now - parse_iso(str(doc.get("created") or ""))
                except ValueError:
                    silent = cond.start + 1
            if silent > cond.start and not self._revoked(org, agents.get(mid, "")):
                found.append(Finding(mid, mid, om.name(mid), round(silent, 3),
                                     [{"condition": 0, "value": round(silent, 3),
                                       "last_sample": last}]))
        return found, sel

    def _revoked(self, org: str, agent: str) -> bool:
        """A revoked agent's host is silent on purpose (asked only of silent machines)."""
        raw = self.store.get(agent_key(org, agent)) if agent and "/" not in agent else None
        return raw is not None and bool(json.loads(raw).get("revoked"))

    def _subject(self, om: OrgMachines, e: Entry) -> str:
        kind, tid = e.doc["target_kind"], str(e.doc["target_id"])
        if kind == "machine":
            return tid
        if kind == "agent":
            return om.by_agent.get(tid, tid)
        return f"{kind}:{tid}"

    def _logs(self, c: Compiled, om: OrgMachines, sel: set[str],
              now: float) -> tuple[list[Finding], set[str]]:
        org = c.doc["org"]
        narrowed = bool(c.doc.get("selectors"))
        per: list[dict[str, int]] = []
        for cond in c.conds:
            assert cond.search is not None
            counts: dict[str, int] = {}
            matched = cond.matched
            for e in self.feed.window(org, now - cond.start, now - cond.stop):
                subject = matched.get(e.seq)
                if subject is None:
                    subject = self._subject(om, e) if cond.search.matches(e.doc, ("action",)) else ""
                    matched[e.seq] = subject
                if subject and (not narrowed or subject in sel):
                    counts[subject] = counts.get(subject, 0) + 1
            if len(matched) > 4 * len(counts) + 10_000:  # forget entries out of every window
                oldest = now - cond.start - 60
                keep = {e.seq for e in self.feed.window(org, oldest, now + 60)}
                cond.matched = {s: v for s, v in matched.items() if s in keep}
            if _CMP[cond.op](0, cond.threshold):  # a count of 0 holds: every machine counts
                for mid in sel:
                    counts.setdefault(mid, 0)
            per.append(counts)
        found = []
        for subject in set(per[0]).intersection(*per[1:]):
            rs = [(p[subject], cd) for p, cd in zip(per, c.conds, strict=True)]
            if all(_CMP[cd.op](n, cd.threshold) for n, cd in rs):
                machine = subject if subject in om.docs else ""
                found.append(Finding(subject, machine, om.name(subject) if machine else subject,
                                     float(rs[0][0]),
                                     [{"condition": i, "value": n} for i, (n, _) in enumerate(rs)]))
        return found, set(per[0])

    # ---- the loop ----------------------------------------------------------------------
    async def run(self, tick: float = 1.0) -> None:
        """Evaluate due rules every ``tick`` seconds until cancelled; actions run as tasks."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    acts = await finish(asyncio.to_thread(self.cycle))
                except Exception:
                    log.exception("a round of rule evaluation failed")
                    acts = []
                for act in acts:
                    if self.dispatch is not None:
                        t = asyncio.create_task(self.dispatch(act), name=f"rule action {act.event}")
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                await asyncio.sleep(tick)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
