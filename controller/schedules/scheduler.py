"""The scheduler: one background task that wakes when the earliest schedule is due (or a
schedule changed, or a minute passed), sends due reminders, and claims and starts due runs.

Claiming a run writes, in one atomic batch, its record (``running``) and the schedule's state
moved past it (next run, count): a controller that stops mid-run finds the run ``running`` on
its next start and marks it ``interrupted`` (audited), never running it again.

Missed runs: an occurrence due while the scheduler was not running (before it started, or
more than ``schedule_misfire_grace`` seconds ago: a stopped controller, a suspended host) is
missed. However many were missed, a ``run_once`` schedule runs once (the run says how many it
stands for) and a ``skip`` schedule records one skipped run; both then go on from now.
A run due while the previous one of the same schedule still runs is skipped (recorded).
A schedule whose handling raises is tried again with a growing delay, never dropped, and the
failure is on its state (status "error" in the API), in the audit log and in the log.

The clock is injectable (``clock``) and :meth:`tick` can be driven by hand: tests step
time without waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from controller.accounts.model import Principal
from controller.errors import OvercastError
from controller.events.model import Actor
from controller.events.writer import Change
from controller.schedules.model import (
    SCHEDRUN,
    SCHEDSTATE,
    SCHEDULE,
    run_key,
    runs_prefix,
    schedule_key,
    state_key,
)
from controller.schedules.runner import RunInput, Runner, maybe_await
from controller.schedules.selectors import resolve
from controller.schedules.service import ScheduleService, next_for, window
from controller.schedules.spec import reminder_seconds
from controller.schedules.when import compile_when, count_between
from controller.store.base import Batch
from controller.store.docs import dump, load, public
from controller.timeutil import iso

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0  # look again at least this often (clock changes, anything missed)
# A schedule whose handling failed (a conflicting write, a time zone the system no longer
# has, a bug) is tried again after RETRY_FIRST seconds, twice as long each time after, at
# most RETRY_MAX apart, until it works or is edited; each failure is on the schedule
# (status "error", last_error), in the audit log (schedule.error) and in the log.
RETRY_FIRST = 30.0
RETRY_MAX = 900.0
Key = tuple[str, str]  # (org, schedule id)


class OwnerGone(OvercastError):
    """The schedule's owner can no longer act in its organisation."""

    code = "owner_gone"


class Scheduler:
    def __init__(self, svc: ScheduleService, runner: Runner,
                 clock: Callable[[], float] | None = None) -> None:
        self.svc = svc
        self.store = svc.store
        self.writer = svc.writer
        self.runner = runner
        self.clock = clock or svc.clock
        self.started_at = 0.0
        self._due: dict[Key, float] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._others: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        svc.on_change = self.changed

    # ---- the index of due times -----------------------------------------------------------
    def _load(self, org: str, sid: str) -> tuple[dict[str, Any] | None, dict[str, Any], bytes | None]:
        raw = self.store.get(schedule_key(org, sid))
        state, st_raw = self.svc.state(org, sid)
        return (load(SCHEDULE, raw) if raw is not None else None), state, st_raw

    @staticmethod
    def due_of(cfg: dict[str, Any] | None, state: dict[str, Any]) -> float | None:
        """When the schedule next needs the scheduler: its reminder or its run."""
        if cfg is None or not cfg.get("enabled", True) or state.get("next_run") is None:
            return None
        nr = float(state["next_run"])
        offset = reminder_seconds(cfg.get("reminder"))
        if offset and state.get("reminded_for") != nr:
            return nr - offset
        return nr

    def changed(self, org: str, sid: str) -> None:
        cfg, state, _ = self._load(org, sid)
        due = self.due_of(cfg, state)
        if due is None:
            self._due.pop((org, sid), None)
        else:
            self._due[(org, sid)] = due
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Mark runs a stopped controller left running as interrupted, and read every
        schedule's due time. Call before the first tick."""
        self.started_at = self.clock()
        self._wake = asyncio.Event()
        for k, raw in list(self.store.scan("schedstate/")):
            _, org, sid = k.split("/", 2)
            state = load(SCHEDSTATE, raw)
            if state.get("running") is not None:
                self._interrupted(org, sid, state, raw)
            self.changed(org, sid)

    def _interrupted(self, org: str, sid: str, state: dict[str, Any], raw: bytes) -> None:
        seq = int(state["running"])
        rk = run_key(org, sid, seq)
        run_raw = self.store.get(rk)
        change = Change("schedule.run", org=org, target_kind="schedule", target_id=sid,
                        outcome="failed", details={"run": seq, "status": "interrupted"})
        if run_raw is not None:
            run = load(SCHEDRUN, run_raw)
            run.update(status="interrupted", finished=iso(self.clock()),
                       reason="the controller stopped during the run (not run again)")
            change.put(rk, dump(SCHEDRUN, run))
            change.details["scheduled_for"] = run.get("scheduled_for")
        change.put(state_key(org, sid), dump(SCHEDSTATE, dict(state, running=None)))
        change.expect(state_key(org, sid), raw)
        self.writer.commit(Actor(kind="system", id="scheduler", org=org, via="schedule"), change)

    # ---- the loop -----------------------------------------------------------------------
    async def run_forever(self) -> None:
        if self._wake is None:
            self.start()
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                self.tick()
            except Exception:
                log.exception("the scheduler's tick failed")
            now = self.clock()
            delay = min([MAX_SLEEP, *(d - now for d in self._due.values())])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay) + 0.005)

    async def stop(self) -> None:
        """Cancel runs in progress (each is recorded as interrupted)."""
        tasks = [*self._tasks.values(), *self._others]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for runs and reminders in progress (tests)."""
        while True:
            tasks = [t for t in (*self._tasks.values(), *self._others) if not t.done()]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    def tick(self) -> int:
        """Handle everything due by now; return how many runs were started. A schedule
        whose handling raises is tried again later (:meth:`_failed`), never dropped."""
        now = self.clock()
        started = 0
        for key in [k for k, d in self._due.items() if d <= now]:
            try:
                started += self._process(key, now)
            except Exception as exc:
                self._failed(key, now, exc)
        return started

    def _failed(self, key: Key, now: float, exc: Exception) -> None:
        """Try ``key`` again after a backoff, and say so: on the schedule's state (the API
        shows status "error" and last_error), in the audit log and in the log."""
        org, sid = key
        message = exc.message if isinstance(exc, OvercastError) else (
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        failures = 1
        try:
            state, st_raw = self.svc.state(org, sid)
            failures = int(state.get("failures") or 0) + 1
        except Exception:  # the store itself: the backoff still applies
            state, st_raw = {}, None
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(failures - 1, 20))
        retry_at = now + delay
        self._due[key] = retry_at
        if isinstance(exc, OvercastError):
            log.warning("schedule %s could not be handled (failure %d, tried again in %.0f s): "
                        "%s", sid, failures, delay, message)
        else:
            log.exception("schedule %s could not be handled (failure %d, tried again in %.0f s)",
                          sid, failures, delay)
        change = Change("schedule.error", org=org, target_kind="schedule", target_id=sid,
                        outcome="failed", details={"error": message[:500], "failures": failures,
                                                   "retry_at": iso(retry_at)})
        if st_raw is not None:  # the schedule still exists: record it on its state
            change.put(state_key(org, sid), dump(SCHEDSTATE, dict(
                state, failures=failures, last_error=message[:500], last_error_at=now,
                retry_at=retry_at)))
            change.expect(state_key(org, sid), st_raw)
            change.event("changed", "schedule", sid, {"status": "error", "error": message[:500]})
        try:
            self.writer.commit(_system(org), change)
        except Exception:
            log.exception("recording the failure of schedule %s failed", sid)

    def _process(self, key: Key, now: float) -> int:
        org, sid = key
        cfg, state, st_raw = self._load(org, sid)
        if cfg is None or state.get("next_run") is None or not cfg.get("enabled", True):
            self._due.pop(key, None)
            return 0
        recovered = bool(state.get("failures"))
        if recovered:  # handled now: the state written next says so
            state.update(failures=0, last_error="", last_error_at=None, retry_at=None)
        nr = float(state["next_run"])
        offset = reminder_seconds(cfg.get("reminder"))
        if offset and state.get("reminded_for") != nr and now >= nr - offset and now < nr:
            # (a reminder due with its run, or after it, is left out: the run comes)
            state["reminded_for"] = nr
            self._write_state(org, sid, state, st_raw)  # before sending: at most once
            self._spawn_other(self._remind(org, cfg, nr))
            self.changed(org, sid)
            return 0
        if now < nr:
            if recovered:
                self._write_state(org, sid, state, st_raw)
            self.changed(org, sid)
            return 0
        started = self._claim(org, cfg, state, st_raw, nr, now)
        self.changed(org, sid)
        return started

    def _write_state(self, org: str, sid: str, state: dict[str, Any], raw: bytes | None) -> None:
        b = Batch()
        b.put(state_key(org, sid), dump(SCHEDSTATE, state))
        b.expect[state_key(org, sid)] = raw
        self.store.write(b)

    def _claim(self, org: str, cfg: dict[str, Any], state: dict[str, Any], st_raw: bytes | None,
               nr: float, now: float) -> int:
        sid = cfg["id"]
        immediate = bool(state.get("immediate"))
        late = not immediate and (nr < self.started_at or
                                  now - nr > self.svc.settings.schedule_misfire_grace)
        n = 1 if immediate else count_between(compile_when(cfg["when"]), nr, now,
                                              window(cfg, state))
        seq = int(state.get("seq") or 0) + 1
        run: dict[str, Any] = {
            "id": f"{sid}-{seq}", "seq": seq, "schedule": sid, "scheduled_for": iso(nr),
            "started": iso(now), "finished": "", "status": "running",
            "trigger": "immediate" if immediate else "missed" if late else "schedule",
            "missed": max(0, n - 1), "reason": "", "machines": [], "actions": [],
            "summary": {}}
        task = self._tasks.get((org, sid))
        skip = ""
        if task is not None and not task.done():
            skip = "the previous run had not finished"
        elif late and cfg.get("missed") == "skip":
            skip = (f"missed {n} time{'s' if n != 1 else ''} while the controller was not "
                    "running (missed: skip)")
            run["missed"] = n
        state.update(seq=seq, immediate=False)
        if skip:
            run.update(status="skipped", reason=skip, finished=iso(now))
        else:
            state.update(total_run_count=int(state.get("total_run_count") or 0) + 1,
                         last_run=now, running=seq)
        state["next_run"] = next_for(cfg, state, now)
        state["reminded_for"] = None
        # the claim: the state moved past this run and its record, in one atomic write
        b = Batch()
        b.put(state_key(org, sid), dump(SCHEDSTATE, state))
        b.expect[state_key(org, sid)] = st_raw
        b.put(run_key(org, sid, seq), dump(SCHEDRUN, run))
        self._trim(b, org, sid, seq)
        if skip:  # nothing else will be said of it: audited now
            self.writer.commit(_system(org), Change(
                "schedule.skip", org=org, target_kind="schedule", target_id=sid, batch=b,
                details={"run": seq, "scheduled_for": run["scheduled_for"], "reason": skip,
                         "missed": run["missed"]}))
            return 0
        self.store.write(b)  # bookkeeping: the run's outcome is what is audited
        t = asyncio.get_running_loop().create_task(self._run(org, cfg, run),
                                                   name=f"schedule-{sid}-{seq}")
        self._tasks[(org, sid)] = t
        t.add_done_callback(lambda done: self._forget((org, sid), done))
        return 1

    def _forget(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    def _trim(self, b: Batch, org: str, sid: str, seq: int) -> None:
        """Drop the records older than the last schedule_runs_kept."""
        first = seq - self.svc.settings.schedule_runs_kept + 1
        for k, _ in self.store.scan(runs_prefix(org, sid), keys_only=True):
            if int(k.rsplit("/", 1)[1]) < first:
                b.delete(k)
            else:
                break

    def _spawn_other(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._others.add(t)
        t.add_done_callback(self._others.discard)

    # ---- acting ---------------------------------------------------------------------------
    def owner(self, org: str, cfg: dict[str, Any]) -> tuple[Principal, Actor]:
        """The schedule's owner as a principal of its organisation, and as the actor of what
        the run does (via "schedule"); OwnerGone when they cannot act there any more."""
        accounts = self.svc.accounts
        user = accounts.get_user(str(cfg.get("_owner") or ""))
        if user is None or user.get("disabled"):
            raise OwnerGone(f"the schedule's owner {cfg.get('owned_by', '')} no longer exists: "
                            "nothing was run (edit its actions or selectors to take it over)")
        orgdoc = accounts.get_org(org)
        member = accounts.membership(org, user["id"])
        if orgdoc is None or member is None:
            raise OwnerGone(f"the schedule's owner {cfg.get('owned_by', '')} is no longer a "
                            "member of this organisation: nothing was run")
        p = Principal(public(user), orgdoc, str(member.get("role", "member")), "schedule",
                      cfg["id"])
        return p, p.actor(via="schedule")

    async def _run(self, org: str, cfg: dict[str, Any], run: dict[str, Any]) -> None:
        actor = _system(org)
        try:
            p, actor = self.owner(org, cfg)
            machines = await asyncio.to_thread(resolve, self.store, org, cfg["selectors"],
                                               self.clock())
            run["machines"] = [m["id"] for m in machines[:1000]]
            outcomes = await self.runner.execute(RunInput(cfg, p, actor, machines, run["id"]))
            run["actions"] = outcomes
            ok = all(o["status"] == "succeeded" for o in outcomes)
            run["status"] = "succeeded" if ok else "failed"
            if not machines and cfg["selectors"]:
                run["reason"] = "no machine matched the selectors"
        except OwnerGone as exc:
            run.update(status="failed", reason=exc.message)
        except asyncio.CancelledError:
            run.update(status="interrupted", reason="the controller stopped during the run")
            self._finish(org, cfg, run, actor)
            raise
        except Exception as exc:  # a bug: the run says so, the log has the rest
            log.exception("schedule %s run %s failed", cfg["id"], run["seq"])
            run.update(status="failed", reason=f"internal error: {type(exc).__name__}")
        self._finish(org, cfg, run, actor)

    def _finish(self, org: str, cfg: dict[str, Any], run: dict[str, Any], actor: Actor) -> None:
        sid = cfg["id"]
        results = [r for a in run.get("actions", []) for r in a.get("results", [])]
        failed = sorted({r["machine"] for r in results if r.get("status") != "succeeded"})
        run["summary"] = {"machines": len(run["machines"]), "results": len(results),
                          "failed": len(failed)}
        run["finished"] = iso(self.clock())
        change = Change("schedule.run", org=org, target_kind="schedule", target_id=sid,
                        outcome="success" if run["status"] == "succeeded" else "failed",
                        details={"name": cfg["name"], "run": run["seq"], "status": run["status"],
                                 "scheduled_for": run["scheduled_for"], "trigger": run["trigger"],
                                 "missed": run["missed"], "machines": len(run["machines"]),
                                 "jobs": [a["job"] for a in run.get("actions", []) if a.get("job")],
                                 "failed": failed[:100], "reason": run.get("reason", "")})
        if self.store.get(schedule_key(org, sid)) is not None:  # not deleted meanwhile
            state, st_raw = self.svc.state(org, sid)
            if state.get("running") == run["seq"]:
                change.put(state_key(org, sid), dump(SCHEDSTATE, dict(state, running=None)))
                change.expect(state_key(org, sid), st_raw)
            if self.store.get(run_key(org, sid, run["seq"])) is not None:
                change.put(run_key(org, sid, run["seq"]), dump(SCHEDRUN, run))
        change.event("changed", "schedule", sid, {"name": cfg["name"], "run": run["seq"],
                                                  "status": run["status"]})
        try:
            self.writer.commit(actor, change)
        except Exception:
            log.exception("recording run %s of schedule %s failed", run["seq"], sid)

    async def _remind(self, org: str, cfg: dict[str, Any], when: float) -> None:
        """E-mail the owner that the schedule (or the machine's expiration) comes."""
        change = Change("schedule.remind", org=org, target_kind="schedule", target_id=cfg["id"],
                        details={"name": cfg["name"], "run_at": iso(when)})
        actor = _system(org)
        try:
            _, actor = self.owner(org, cfg)
            notifier = self.runner.notifier
            if notifier is None:
                raise OvercastError("notifications are not available")
            to = str(self.svc.member_email(org, str(cfg.get("_owner") or "")) or "")
            if not to:
                raise OwnerGone("the owner has no e-mail address")
            subject, text = reminder_text(cfg, when)
            doc = await maybe_await(notifier.email(
                org, [to], subject, text, actor=actor,
                context={"schedule": cfg["id"], "run_at": iso(when),
                         "machine": cfg.get("expiration_for", "")}))
            change.details.update(to=to, notification=doc.get("id", "")
                                  if isinstance(doc, dict) else "")
        except OvercastError as exc:
            change.outcome = "failed"
            change.details["error"] = exc.message
        self.writer.commit(actor, change)


def reminder_text(cfg: dict[str, Any], when: float) -> tuple[str, str]:
    at = iso(when)
    message = ((cfg.get("reminder") or {}).get("message") or "").strip()
    if cfg.get("expiration_for"):
        verb = {"stop": "stopped", "destroy": "destroyed"}.get(cfg["actions"][0]["action_type"],
                                                               "acted on")
        name = cfg.get("machine_name") or cfg["expiration_for"]
        subject = f"Machine {name} expires at {at}"
        text = f"The machine {name} expires at {at}: it will be {verb} then."
    else:
        subject = f"Schedule {cfg['name']} runs at {at}"
        text = f"The schedule {cfg['name']} runs at {at}."
    return subject, text + (f"\n\n{message}" if message else "")


def _system(org: str) -> Actor:
    return Actor(kind="system", id="scheduler", org=org, via="schedule")

