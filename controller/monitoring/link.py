"""One host, one machine, when monitoring was enabled on it: the agent the install enrolled
reports into the machine it was installed on, and its own machine in the Agents cloud goes.

The same shape as ``controller.clouds.links`` (which matches hosts a poll finds to agents by
firmware id, MAC, or address and hostname), for a pair known for certain: the join token was
made for this machine. Pure store reads; the changes go through the writer."""

from __future__ import annotations

import json
from typing import Any

from controller.agents.model import agent_key
from controller.errors import Conflict
from controller.events.writer import Change
from controller.machines.model import key as machine_key
from controller.store.base import Batch, Store

_AGENT_FIELDS = ("agent", "agent_facts", "agent_state", "agent_last_seen")


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def link_change(store: Store, org: str, agent_id: str, machine_id: str,
                job: dict[str, Any]) -> Change | None:
    """The change that makes ``agent_id`` report into ``machine_id``, with ``_monitoring``
    set to ``job`` (the job's bookkeeping); None when the agent or machine is gone."""
    araw = store.get(agent_key(org, agent_id))
    mraw = store.get(machine_key(org, machine_id))
    if araw is None or mraw is None:
        return None
    agent, m = json.loads(araw), json.loads(mraw)
    own_raw = store.get(machine_key(org, agent_id)) if agent_id != machine_id else None
    own = json.loads(own_raw) if own_raw else {}
    facts = {k: own.get(k) for k in ("hostname", "os_type", "cores", "public_ips",
                                     "private_ips", "extra") if own.get(k)}
    linked = dict(m, agent=agent_id, monitoring=True, _monitoring=job,
                  agent_state="connected" if own.get("state") == "running" else "unreachable",
                  agent_last_seen=own.get("last_seen", ""))
    if facts:
        linked["agent_facts"] = facts
    for f in ("hostname", "os_type", "cores"):
        if not linked.get(f) and own.get(f):
            linked[f] = own[f]
    c = Change("machine.link", org=org, target_kind="machine", target_id=machine_id,
               details={"agent": agent_id, "matched_by": "enable-monitoring",
                        "job": job.get("job", "")})
    c.put(machine_key(org, machine_id), _dump(linked)).expect(machine_key(org, machine_id), mraw)
    c.put(agent_key(org, agent_id), _dump(dict(agent, machine=machine_id)))
    c.expect(agent_key(org, agent_id), araw)
    if own_raw is not None:
        c.delete(machine_key(org, agent_id)).expect(machine_key(org, agent_id), own_raw)
        c.event("deleted", "machine", agent_id, {"merged_into": machine_id})
    c.event("changed", "machine", machine_id, {"agent": agent_id})
    return c


def unlink_change(store: Store, org: str, machine_id: str, agent_id: str,
                  job: dict[str, Any], details: dict[str, Any]) -> Change | None:
    """The change that turns monitoring off on the machine: a cloud machine forgets the
    agent; an agent's own machine keeps its id (the agent is revoked) and says disabled."""
    mraw = store.get(machine_key(org, machine_id))
    if mraw is None:
        return None
    m = json.loads(mraw)
    if machine_id != agent_id:
        for f in _AGENT_FIELDS:
            m.pop(f, None)
    m.update(monitoring=False, _monitoring=job)
    c = Change("machine.unlink", org=org, target_kind="machine", target_id=machine_id,
               details=dict(details, agent=agent_id))
    c.put(machine_key(org, machine_id), _dump(m)).expect(machine_key(org, machine_id), mraw)
    c.event("changed", "machine", machine_id, {"monitoring": False})
    return c


def set_job(store: Store, org: str, machine_id: str, job: dict[str, Any]) -> bool:
    """The job's bookkeeping on the machine (``_monitoring``): progress, not an action, so
    stored without an audit entry (as jobs' progress is). False when the machine is gone."""
    for _ in range(5):  # a poll may rewrite the machine meanwhile: read again
        raw = store.get(machine_key(org, machine_id))
        if raw is None:
            return False
        b = Batch()
        b.put(machine_key(org, machine_id), _dump(dict(json.loads(raw), _monitoring=job)))
        b.expect[machine_key(org, machine_id)] = raw
        try:
            store.write(b)
            return True
        except Conflict:
            continue
    return False
