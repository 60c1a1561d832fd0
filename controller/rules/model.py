"""Rules and incidents: the documents, their keys, and the vocabulary of the Mist v2 rule
shapes (conditions with a query over a window, selectors, actions, ``when``,
``trigger_after``).

    rule/<org>/<id>        {id, org, name, description, enabled, conditions, selectors,
                            actions, when, trigger_after, notify_every, builtin, created,
                            created_by, owned_by, _owner (the owner's user id: actions run
                            only while they are a member), _created_at}; a webhook action
                            keeps its URL and headers sealed (``_url``, ``_headers``) and shows
                            the URL as scheme://host/… with a fingerprint
    incident/<org>/<id>    {id, org, rule, rule_name, machine, machine_name, subject, state,
                            fired, started, fired_at, resolved_at, updated, value, values,
                            condition, notifications, actions, notified_at, reminders, reason}
    incopen/<org>/<rule>/<subject>  -> the id of the open (pending or firing) incident
    incnotified/<org>/<rule>/<subject>  -> when that rule last notified about that subject
                                    (epoch seconds: throttling across incidents and restarts)
    meta/rules/nodata/<org>         the organisation's "no data" rule was made once (so a
                                    deleted one is not made again)
    meta/rules/audit_cursor         the last audit entry event rules have read"""

from __future__ import annotations

from typing import Any

from controller.notify.model import shown_url
from controller.store.docs import DocKind


def _v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2: webhook URLs shown as scheme://host/… and a fingerprint (version 1 showed
    their path, where Slack, Discord and Teams keep the token)."""
    for a in doc.get("actions") or []:
        if a.get("action_type") == "webhook" and a.get("url"):
            a["url"] = shown_url(str(a["url"]))
    return doc


RULE = DocKind("rule", 2, {1: _v2})
INCIDENT = DocKind("incident")

STATES = ("pending", "firing", "resolved")
DATA_TYPES = ("metrics", "logs", "nodata")
OPERATORS = {"gt": ">", "lt": "<", "eq": "==", "ne": "!=", "ge": ">=", "le": "<="}
# symbols some users write instead
OPERATOR_SYMBOLS = {v: k for k, v in OPERATORS.items()} | {"=": "eq", "<>": "ne"}
AGGREGATIONS = ("all", "any", "avg", "count")
PERIODS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}
MACHINE_ACTIONS = ("start", "stop", "reboot", "destroy", "delete", "undefine", "resize",
                   "suspend", "resume")
ACTION_TYPES = ("notify", "webhook", "run_script", *MACHINE_ACTIONS)
SELECTOR_TYPES = ("machines", "tags", "field", "age")

MAX_RULES = 1000            # per organisation
MAX_CONDITIONS = 10
MAX_ACTIONS = 20
MAX_SELECTORS = 20
MAX_IDS = 10_000
MAX_WINDOW = 7 * 86400      # seconds: as far back as raw samples are kept by default
MIN_FREQUENCY = 1           # seconds
DEFAULT_FREQUENCY = 60      # seconds, when ``when`` is not given
NODATA_ID = "nodata"        # the id of each organisation's "no data" rule
NODATA_INTERVALS = 3        # its default window: this many metric intervals (at least 60 s)
# the longest an agent waits before it connects again (agent/control.py BACKOFF_MAX): after
# the controller starts, or a machine is started again, a machine not heard from yet is not
# "no data" until its rule's window and this much more have passed
AGENT_RECONNECT_MAX = 60.0
# machine states in which silence is expected: the "no data" rule leaves them alone
QUIET_STATES = frozenset({"stopping", "stopped", "suspended", "paused", "terminated"})

# the metrics every agent sends (agent/collect/metrics.py), so that a rule can be written
# before the first agent reports; the organisation's own series add to these
AGENT_METRICS = frozenset(
    [f"cpu_usage_{f}" for f in ("user", "system", "idle", "nice", "iowait", "irq", "softirq",
                                "steal", "guest", "active")]
    + [f"system_{f}" for f in ("load1", "load5", "load15", "n_cpus", "uptime", "n_users")]
    + [f"mem_{f}" for f in ("total", "available", "used", "free", "cached", "buffers",
                            "used_percent", "available_percent")]
    + [f"swap_{f}" for f in ("total", "used", "free", "used_percent")]
    + [f"disk_{f}" for f in ("total", "free", "used", "used_percent", "inodes_total",
                             "inodes_free", "inodes_used")]
    + [f"diskio_{f}" for f in ("reads", "writes", "read_bytes", "write_bytes", "read_time",
                               "write_time", "io_time")]
    + [f"net_{f}" for f in ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
                            "err_in", "err_out", "drop_in", "drop_out")]
    + [f"processes_{f}" for f in ("total", "running", "sleeping", "blocked", "stopped",
                                  "zombies", "idle")])

# Mist's (collectd-style) metric names -> the selector that measures the same here
MIST_METRICS = {
    "load.shortterm": "system_load1", "load.midterm": "system_load5",
    "load.longterm": "system_load15",
    "cpu.total.nonidle": 'cpu_usage_active{cpu="cpu-total"}',
    "cpu.total.idle": 'cpu_usage_idle{cpu="cpu-total"}',
    "memory.nonfree_percent": "mem_used_percent", "memory.free_percent": "mem_available_percent",
    "swap.used_percent": "swap_used_percent",
}
# the series a "no data" rule watches: every agent sends it every interval
HEARTBEAT_METRIC = "system_uptime"


def rule_key(org: str, rule_id: str) -> str:
    return f"rule/{org}/{rule_id}"


def incident_key(org: str, incident_id: str) -> str:
    return f"incident/{org}/{incident_id}"


def open_key(org: str, rule_id: str, subject: str) -> str:
    return f"incopen/{org}/{rule_id}/{subject}"


def nodata_mark(org: str) -> str:
    return f"meta/rules/nodata/{org}"


AUDIT_CURSOR = "meta/rules/audit_cursor"
