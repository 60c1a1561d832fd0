"""The schedule documents: what a schedule is (written by users, audited), where it stands
(written by the scheduler), and the record of each run.

    schedule/<org>/<id>        {id, name, description, tags, enabled, selectors, actions,
                                when, start_after, expires, max_run_count, run_immediately,
                                missed, reminder, expiration_for, created, created_by,
                                owned_by, _owner (the owner's user id: runs act as them;
                                whoever last changed the actions or selectors)}
    schedstate/<org>/<id>      {anchor, next_run, last_run, total_run_count, seq, running,
                                reminded_for, immediate, finished, failures, last_error,
                                last_error_at, retry_at (the scheduler could not handle it)}
    schedrun/<org>/<id>/<seq>  {id, seq, schedule, scheduled_for, started, finished, status,
                                trigger, missed, reason, machines, actions: [{action_type,
                                status, error, job, results: [{machine, name, status,
                                exit_code, error, job}]}], summary}

A run is claimed (its record written as ``running`` and the state moved past it, in one
atomic write) before anything runs: a controller stopping mid-run leaves it ``interrupted``
on the next start, never run again. Times in the state are seconds since the epoch; the
views show ISO 8601 UTC."""

from __future__ import annotations

from typing import Any, Protocol

from controller.events.model import Actor
from controller.store.docs import DocKind

SCHEDULE = DocKind("schedule")
SCHEDSTATE = DocKind("schedstate")
SCHEDRUN = DocKind("schedrun")
KINDS = (SCHEDULE, SCHEDSTATE, SCHEDRUN)

MISSED = ("run_once", "skip")
# running -> succeeded | failed | interrupted; skipped is written as such
RUN_STATUSES = ("running", "succeeded", "failed", "skipped", "interrupted")
MACHINE_ACTIONS = ("start", "stop", "reboot", "destroy", "suspend", "resume", "resize")
ACTION_TYPES = (*MACHINE_ACTIONS, "run_script", "notify")
MAX_ACTIONS = 10
MAX_SELECTORS = 20
MAX_IDS = 1000


def schedule_key(org: str, sid: str) -> str:
    return f"schedule/{org}/{sid}"


def state_key(org: str, sid: str) -> str:
    return f"schedstate/{org}/{sid}"


def runs_prefix(org: str, sid: str) -> str:
    return f"schedrun/{org}/{sid}/"


def run_key(org: str, sid: str, seq: int) -> str:
    return f"schedrun/{org}/{sid}/{seq:010d}"


class Notifier(Protocol):
    """What the notify action and the reminders need of the notification service
    (:mod:`controller.notify`): a call queues an e-mail (stored before it is sent, delivered
    in the background with retries) and returns its document."""

    def email(self, org: str, to: list[str], subject: str, text: str, *,
              html: str | None = None, context: dict[str, Any] | None = None,
              actor: Actor | None = None) -> Any: ...
