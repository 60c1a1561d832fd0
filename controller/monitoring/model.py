"""What monitoring stores and shows.

A machine's ``monitoring`` as the API shows it is ``{enabled, agent_id, state}`` (plus ``job``
and ``error`` when an enable or disable ran): enabled when an agent reports for the machine
(its own machine in the Agents cloud, or a cloud machine it is linked to). ``state``:

    connected     the agent's stream is up
    unreachable   the agent is installed but not connected now
    disabled      no agent reports for the machine
    installing    an enable-monitoring job runs
    removing      a disable-monitoring job runs
    failed        the last enable failed (``error`` says why; nothing of it was left behind)

The job's bookkeeping lives in the machine document as ``_monitoring`` {state, job, error,
options} (pollers keep fields they do not know); the stored ``monitoring`` flag is the agents'
(True once an agent reports for the machine, False once monitoring was disabled).

Metric sources::

    metricsource/<org>/<id>            {id, name, script, selectors, interval, timeout,
                                        created, created_by}
    metricstatus/<org>/<source>/<mid>  the last status an agent sent for the source
"""

from __future__ import annotations

import re
from typing import Any

from controller.store.docs import DocKind

METRIC_SOURCE = DocKind("metricsource")
KINDS = (METRIC_SOURCE,)

# metric sources: what one may ask for
MAX_SOURCES = 200              # per organisation
MAX_PER_MACHINE = 32           # sources sent to one agent (the first, by name)
MAX_SCRIPT_BYTES = 256 * 1024  # a source's script (it goes down every matching stream)
MIN_INTERVAL, MAX_INTERVAL = 1, 86_400
DEFAULT_TIMEOUT, MAX_TIMEOUT = 10, 600
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

# enable monitoring: the install script's options a request may set, and their form
PATH_OPTION = re.compile(r"^/[A-Za-z0-9_./+-]{0,199}$")  # as the script's own check
DEFAULT_INSTALL_TIMEOUT = 900
STATES = ("connected", "unreachable", "disabled", "installing", "removing", "failed")


def source_key(org: str, source_id: str) -> str:
    return f"metricsource/{org}/{source_id}"


def status_key(org: str, source_id: str, machine_id: str) -> str:
    return f"metricstatus/{org}/{source_id}/{machine_id}"


def monitoring_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The machine's ``monitoring`` as the API shows it (see the module's docstring)."""
    agent = str(doc.get("agent") or "")
    job: dict[str, Any] = doc.get("_monitoring") or {}
    enabled = bool(agent) and doc.get("monitoring") is not False
    if enabled:
        own = doc.get("id") == agent
        connected = doc.get("state") == "running" if own else doc.get("agent_state") == "connected"
        state = "connected" if connected else "unreachable"
    else:
        state = "disabled"
    if job.get("state") in ("installing", "removing", "failed"):
        state = job["state"]
    out: dict[str, Any] = {"enabled": enabled, "agent_id": agent if enabled else "",
                           "state": state}
    if job.get("job"):
        out["job"] = job["job"]
    if state == "failed" and job.get("error"):
        out["error"] = job["error"]
    return out
