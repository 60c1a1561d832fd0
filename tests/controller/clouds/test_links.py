"""Linking a cloud machine and the agent on the same host: by the firmware's ids first, then
by MAC, then by address and hostname; never two machines to one agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.clouds.links import link_agents
from controller.clouds.model import index_prefix, resource_id
from controller.store import open_store
from controller.store.base import Batch, Store

ORG, CLOUD = "o1", "c1"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "db")


def agent(store: Store, aid: str, **extra: Any) -> None:
    macs = extra.pop("macs", [])
    b = Batch()
    b.put(f"agent/{ORG}/{aid}", json.dumps({"id": aid, "org": ORG}).encode())
    b.put(f"machine/{ORG}/{aid}", json.dumps({
        "id": aid, "hostname": extra.pop("hostname", "h"), "private_ips": extra.pop("ips", []),
        "public_ips": [], "state": "running",
        "extra": {"interfaces": [{"name": "eth0", "mac": m} for m in macs], **extra}}).encode())
    store.write(b)


def cloud_machine(store: Store, ext: str, **fields: Any) -> str:
    rid = resource_id(CLOUD, "machine", ext)
    b = Batch()
    b.put(f"machine/{ORG}/{rid}", json.dumps({"id": rid, "external_id": ext, "name": ext,
                                              **fields}).encode())
    b.put(index_prefix(ORG, CLOUD, "machine") + rid, f"machine/{ORG}/{rid}".encode())
    store.write(b)
    return rid


def test_a_kvm_guest_links_by_its_uuid_and_ec2_by_its_instance_id(store: Store) -> None:
    agent(store, "a1", system_uuid="6695eb01-f6a4-8304-79aa-97f2502e193f")
    agent(store, "a2", instance_id="i-0123456789abcdef0")
    g = cloud_machine(store, "6695EB01-F6A4-8304-79AA-97F2502E193F")
    e = cloud_machine(store, "i-0123456789abcdef0")
    changes = {c.target_id: c for c in link_agents(store, ORG, CLOUD)}
    assert changes[g].details["agent"] == "a1" and changes[g].details["matched_by"] == "instance id"
    assert changes[e].details["agent"] == "a2"


def test_mac_then_address_and_hostname_and_one_machine_per_agent(store: Store) -> None:
    agent(store, "a1", macs=["02:00:00:00:00:01"])
    agent(store, "a2", ips=["10.0.0.7"], hostname="db")
    m1 = cloud_machine(store, "vm-1", macs=["02:00:00:00:00:01"])
    clone = cloud_machine(store, "vm-1-clone", macs=["02:00:00:00:00:01"])
    m3 = cloud_machine(store, "vm-3", private_ips=["10.0.0.7"], hostname="db")
    cloud_machine(store, "vm-4", private_ips=["10.0.0.7"], hostname="other")
    changes = link_agents(store, ORG, CLOUD)
    by_agent = {c.details["agent"]: (c.target_id, c.details["matched_by"]) for c in changes}
    assert len(changes) == 2  # one machine per agent, even when two claim its MAC
    assert by_agent["a1"][0] in (m1, clone) and by_agent["a1"][1] == "mac"
    assert by_agent["a2"] == (m3, "address and hostname")
