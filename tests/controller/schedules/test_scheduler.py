"""The scheduler driven by an injected clock: selectors resolved at each run (a machine
tagged later is in the next run), max_run_count / expires / start_after, crontab in a time
zone, run_immediately, missed runs after a "restart" (run once or skip, never many), a run
cut short by a stop marked interrupted and not run again, overlapping runs skipped,
reminders sent once, and a run whose owner left failing without acting."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from controller.schedules.scheduler import Scheduler
from controller.timeutil import iso
from tests.controller.schedules.conftest import T0, World

NOTIFY = [{"action_type": "notify", "emails": ["ops@example.com"], "subject": "hi"}]


def every(seconds: int, **more: Any) -> dict[str, Any]:
    return {"schedule_type": "interval", "every": seconds, "period": "seconds", **more}


def audit(w: World) -> list[dict[str, Any]]:
    return [json.loads(v) for k, v in w.services.store.scan("audit/")]


def restart(w: World) -> Scheduler:
    """A new scheduler over the same store, as a controller started again builds."""
    s = Scheduler(w.services.schedules, w.services.scheduler.runner, clock=w.clock)
    w.services.scheduler = s
    s.start()
    return s


async def test_tags_are_resolved_at_each_run(world: World) -> None:
    w = world
    w.machine("m1", "web1", {"role": "web"})
    w.machine("m2", "web2", {"role": "web"})
    w.machine("m3", "db1", {"role": "db"})
    w.machine("x1", "theirs", {"role": "web"}, org="another-org")
    s = w.add(name="tagged", when=every(10), actions=NOTIFY,
              selectors=[{"type": "tags", "include": ["role=web"]}])
    assert s["next_run"] == iso(T0 + 10) and s["status"] == "scheduled"
    w.services.scheduler.start()
    assert await w.step(9) == 0
    assert await w.step(1) == 1
    w.tag("m3", role="web")  # tagged after the schedule was made
    assert await w.step(10) == 1
    runs = w.runs(s["id"])
    assert [r["machines"] for r in runs] == [["m1", "m2"], ["m3", "m1", "m2"]]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert w.mail.sent[1]["context"]["machines"] == ["m3", "m1", "m2"]
    assert "web1, web2" in w.mail.sent[0]["text"]
    shown = w.services.schedules.get(w.p, s["id"])
    assert shown["total_run_count"] == 2 and shown["last_run"] == iso(T0 + 20)


async def test_max_run_count_expires_and_start_after_stop_or_hold_runs(world: World) -> None:
    w = world
    capped = w.add(name="capped", when=every(5, max_run_count=2), actions=NOTIFY)
    expiring = w.add(name="expiring", when=every(5), actions=NOTIFY, expires=iso(T0 + 12))
    later = w.add(name="later", when=every(5), actions=NOTIFY, start_after=iso(T0 + 30))
    w.services.scheduler.start()
    for _ in range(10):
        await w.step(5)
    counts = {n: len(w.runs(s["id"])) for n, s in
              (("capped", capped), ("expiring", expiring), ("later", later))}
    # later: first at start_after (T0+30), then every 5 s up to T0+50
    assert counts == {"capped": 2, "expiring": 2, "later": 5}
    shown = {s["name"]: s for s in w.services.schedules.list_schedules(
        w.p, __import__("controller.listing").listing.parse_query({}))[0]}
    assert shown["capped"]["status"] == "finished"
    assert shown["capped"]["finished_reason"] == "max_run_count"
    assert shown["expiring"]["finished_reason"] == "expired"
    assert shown["capped"]["when"]["max_run_count"] == 2 and shown["capped"]["next_run"] is None


async def test_crontab_in_a_time_zone(world: World) -> None:
    w = world
    start = dt.datetime(2030, 6, 1, 5, 58, tzinfo=dt.UTC).timestamp()  # 08:58 in Athens
    w.clock.now = start
    s = w.add(name="nine", actions=NOTIFY,
              when={"schedule_type": "crontab", "minute": "0", "hour": "9", "day_of_month": "*",
                    "month_of_year": "*", "day_of_week": "*", "timezone": "Europe/Athens"})
    assert s["next_run"] == "2030-06-01T06:00:00Z"
    assert s["when"]["expression"] == "0 9 * * *"
    w.services.scheduler.start()
    assert await w.step(60) == 0
    assert await w.step(60) == 1
    assert w.runs(s["id"])[0]["scheduled_for"] == "2030-06-01T06:00:00Z"
    assert w.services.schedules.get(w.p, s["id"])["next_run"] == "2030-06-02T06:00:00Z"


async def test_run_immediately_runs_now_then_on_schedule(world: World) -> None:
    w = world
    s = w.add(name="now", when=every(60), actions=NOTIFY, run_immediately=True)
    w.services.scheduler.start()
    assert await w.step(0) == 1
    assert [r["trigger"] for r in w.runs(s["id"])] == ["immediate"]
    assert w.services.schedules.get(w.p, s["id"])["next_run"] == iso(T0 + 60)


async def test_missed_runs_run_once_or_are_skipped_never_many(world: World) -> None:
    w = world
    once = w.add(name="once", when=every(10), actions=NOTIFY)
    skip = w.add(name="skip", when=every(10), actions=NOTIFY, missed="skip")
    w.services.scheduler.start()
    await w.step(10)  # each runs once while "up"
    w.clock.now += 55  # "down" across five more due times (T0+20 ... T0+60)
    restart(w)
    await w.step(0)
    once_runs, skip_runs = w.runs(once["id"]), w.runs(skip["id"])
    assert [(r["status"], r["trigger"], r["missed"]) for r in once_runs] == [
        ("succeeded", "schedule", 0), ("succeeded", "missed", 4)]
    assert once_runs[1]["scheduled_for"] == iso(T0 + 20)
    assert [(r["status"], r["missed"]) for r in skip_runs] == [("succeeded", 0), ("skipped", 5)]
    assert "missed 5 times" in skip_runs[1]["reason"]
    # both go on from now: next at T0+70, once each
    await w.step(5)
    assert len(w.runs(once["id"])) == 3 and len(w.runs(skip["id"])) == 3
    await w.step(5)
    assert len(w.runs(once["id"])) == 3


async def test_a_run_cut_short_by_a_stop_is_interrupted_not_run_again(world: World) -> None:
    w = world
    gate = asyncio.Event()
    runner = w.services.scheduler.runner
    real = runner.execute

    async def slow(r: Any) -> Any:
        await gate.wait()
        return await real(r)

    runner.execute = slow  # type: ignore[method-assign]
    s = w.add(name="slow", when=every(10), actions=NOTIFY)
    w.services.scheduler.start()
    w.clock.now += 10
    assert w.services.scheduler.tick() == 1
    await asyncio.sleep(0.05)
    # a run due while the last one runs is skipped
    w.clock.now += 10
    assert w.services.scheduler.tick() == 0
    assert [r["status"] for r in w.runs(s["id"])] == ["running", "skipped"]
    # the controller "dies" (tasks dropped without a word), and starts again
    old = w.services.scheduler  # left as a killed process leaves it: not stopped
    runner.execute = real  # type: ignore[method-assign]
    restart(w)
    runs = w.runs(s["id"])
    assert runs[0]["status"] == "interrupted" and "not run again" in runs[0]["reason"]
    assert w.services.schedules.get(w.p, s["id"])["status"] == "scheduled"
    await w.step(0)
    assert len(w.runs(s["id"])) == 2 and w.mail.sent == []  # nothing ran twice
    assert any(e["action"] == "schedule.run" and e["details"]["status"] == "interrupted"
               for e in audit(w))
    gate.set()
    await old.stop()


async def test_reminders_are_sent_once_before_the_run(world: World) -> None:
    w = world
    s = w.add(name="remind", when=every(100), actions=NOTIFY,
              reminder={"message": "heads up", "when": {"unit": "seconds", "value": 30}})
    w.services.scheduler.start()
    await w.step(60)
    assert w.mail.sent == []
    await w.step(15)  # T0+75: 25 s before the run
    assert [m["subject"] for m in w.mail.sent] == [f"Schedule remind runs at {iso(T0 + 100)}"]
    assert w.mail.sent[0]["to"] == ["owner@example.com"] and "heads up" in w.mail.sent[0]["text"]
    restart(w)
    await w.step(1)
    assert len(w.mail.sent) == 1  # not again after a restart
    await w.step(24)
    assert len(w.runs(s["id"])) == 1 and len(w.mail.sent) == 2  # the run's own notify


async def test_a_run_whose_owner_left_acts_on_nothing(world: World) -> None:
    w = world
    s = w.add(name="orphan", when=every(10), actions=NOTIFY)
    w.services.store.delete(f"member/{w.org}/{w.p.user_id}")
    w.services.scheduler.start()
    await w.step(10)
    [run] = w.runs(s["id"])
    assert run["status"] == "failed" and "no longer a member" in run["reason"]
    assert w.mail.sent == []


async def test_disabled_schedules_do_not_make_up_for_lost_time(world: World) -> None:
    w = world
    s = w.add(name="toggled", when=every(10), actions=NOTIFY)
    w.services.scheduler.start()
    w.services.schedules.toggle(w.p, w.actor, s["id"], False)
    await w.step(100)
    assert w.runs(s["id"]) == []
    on = w.services.schedules.toggle(w.p, w.actor, "toggled", True)  # by name too
    assert on["next_run"] == iso(T0 + 110)
    await w.step(10)
    assert [r["trigger"] for r in w.runs(s["id"])] == ["schedule"]


async def test_only_the_last_runs_are_kept(world: World) -> None:
    import dataclasses

    w = world
    svc = w.services.schedules
    svc.settings = dataclasses.replace(svc.settings, schedule_runs_kept=3)
    s = w.add(name="chatty", when=every(1), actions=NOTIFY)
    w.services.scheduler.start()
    for _ in range(5):
        await w.step(1)
    assert [r["seq"] for r in w.runs(s["id"])] == [3, 4, 5]
    assert svc.get(w.p, s["id"])["total_run_count"] == 5


async def test_a_schedule_whose_handling_fails_is_tried_again_and_says_why(
        world: World, monkeypatch: Any, caplog: Any) -> None:
    """A time zone the system lost (or a conflicting write, a bug) must not stop a schedule
    silently: it is tried again with a growing delay, shows status "error" and last_error,
    and each failure is audited and logged; once it works, the error is gone."""
    import logging
    from zoneinfo import ZoneInfoNotFoundError

    from controller.schedules import scheduler as sched_mod

    w = world
    s = w.add(name="fragile", when=every(10), actions=NOTIFY)
    broken = [True]
    real = sched_mod.next_for

    def next_for(cfg: dict[str, Any], state: dict[str, Any], after: float) -> float | None:
        if broken[0]:
            raise ZoneInfoNotFoundError("No time zone found with key Europe/Atlantis")
        return real(cfg, state, after)

    monkeypatch.setattr(sched_mod, "next_for", next_for)
    caplog.set_level(logging.WARNING, logger="controller.schedules.scheduler")
    w.services.scheduler.start()
    assert await w.step(10) == 0  # due: its handling raises
    shown = w.services.schedules.get(w.p, s["id"])
    assert shown["status"] == "error" and shown["failures"] == 1
    assert "Europe/Atlantis" in shown["last_error"] and shown["retry_at"] == iso(T0 + 40)
    errors = [e for e in audit(w) if e["action"] == "schedule.error"]
    assert len(errors) == 1 and errors[0]["outcome"] == "failed"
    assert "Europe/Atlantis" in errors[0]["details"]["error"]
    assert "schedule " + s["id"] in caplog.text and "tried again in 30 s" in caplog.text
    assert await w.step(29) == 0 and len(w.runs(s["id"])) == 0  # not before the retry
    assert await w.step(1) == 0  # the retry fails too: twice as long now
    shown = w.services.schedules.get(w.p, s["id"])
    assert shown["failures"] == 2 and shown["retry_at"] == iso(T0 + 40 + 60)
    broken[0] = False
    assert await w.step(60) == 1  # still due (once, for the missed times), and it runs
    shown = w.services.schedules.get(w.p, s["id"])
    assert shown["status"] == "scheduled" and shown["last_error"] == "" and shown["failures"] == 0
    assert [r["status"] for r in w.runs(s["id"])] == ["succeeded"]
    assert len([e for e in audit(w) if e["action"] == "schedule.error"]) == 2
    assert await w.step(10) == 1  # and goes on
