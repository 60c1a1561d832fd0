"""The agent service as a stream uses it: a stream keeps only its agent's id and
organisation (a controller holds thousands), so what it reports goes where the agent's
stored document says now: to the cloud machine it was linked to after it connected."""

from __future__ import annotations

import json

from controller.agents.model import AGENT, agent_key
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.services import Services
from controller.store.docs import dump

ORG = "org1"


def doc(s: Services, key: str) -> dict[str, object]:
    raw = s.store.get(key)
    assert raw is not None
    return dict(json.loads(raw))


def test_a_stream_reports_to_the_machine_its_agent_is_linked_to_now(services: Services) -> None:
    s = services
    agent = {"id": "a1", "org": ORG, "name": "web-1", "tags": {}, "revoked": False}
    s.store.put(agent_key(ORG, "a1"), dump(AGENT, agent))
    s.store.put(machine_key(ORG, "a1"), dump(MACHINE, {"id": "a1", "org": ORG, "name": "web-1",
                                                       "agent": "a1", "tags": {}}))
    ref = {"id": "a1", "org": ORG}  # what a stream keeps
    s.agents.touch(ref)
    assert doc(s, machine_key(ORG, "a1"))["last_seen"]
    # linked to a cloud machine while its stream is open
    s.store.put(machine_key(ORG, "cm1"), dump(MACHINE, {"id": "cm1", "org": ORG, "name": "vm-1",
                                                        "agent": "a1", "tags": {}}))
    s.store.put(agent_key(ORG, "a1"), dump(AGENT, dict(agent, machine="cm1")))
    s.agents.update_inventory(ref, {"hostname": "web-1", "cpus": 4})
    cloud = doc(s, machine_key(ORG, "cm1"))
    assert cloud["agent_facts"] and cloud["agent_state"] == "connected"
    s.agents._touched.clear()  # a minute later
    s.agents.touch(ref)
    assert doc(s, machine_key(ORG, "cm1"))["agent_last_seen"]
