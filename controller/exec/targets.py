"""Which machines a run or a shell is for, and how each is reached: through its agent's
stream when the agent is connected, else over SSH with a key associated with the machine (the
most recently used first), else, for an "other server" machine, with the key its cloud holds.

Reads the store and opens sealed keys: blocking but quick (no network); callers on the event
loop may call it directly for one machine, in a thread for many. Raises NotFound for a
machine that is not the caller's organisation's (never another's), Invalid for a selector
that selects nothing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from controller.accounts.model import Principal
from controller.clouds.providers.other import parse_hosts
from controller.clouds.service import CloudService
from controller.errors import Invalid, NotFound
from controller.exec.agentlink import AgentLink
from controller.exec.model import SshTarget
from controller.machines.model import MACHINE, view
from controller.machines.model import key as machine_key
from controller.sshkeys.service import KeyService
from controller.store.base import Store

MAX_TARGETS = 20_000
_TAG = re.compile(r"^tag:([^=]+)(?:=(.*))?$")


def assoc_prefix(org: str, machine_id: str) -> str:
    return f"keyassoc/{org}/{machine_id}/"


def assoc_key(org: str, machine_id: str, key_id: str) -> str:
    return f"keyassoc/{org}/{machine_id}/{key_id}"


@dataclass
class Route:
    """How to reach one machine. Exactly one of ``agent_id`` and ``ssh`` is set, or neither
    and ``why`` says why the machine cannot be reached."""

    machine: dict[str, Any]
    agent_id: str = ""
    ssh: SshTarget | None = None
    key_id: str = ""        # the associated key used for ``ssh`` ("" = the cloud's own key)
    why: str = ""

    @property
    def via(self) -> str:
        return "agent" if self.agent_id else "ssh" if self.ssh is not None else ""

    @property
    def name(self) -> str:
        return str(self.machine.get("name") or self.machine["id"])


def address(machine: dict[str, Any]) -> str:
    """Where to reach a machine over SSH: a public address, else a private one, else its
    host name."""
    for field in ("public_ips", "private_ips"):
        for ip in machine.get(field) or []:
            if ip and not str(ip).startswith("fe80"):
                return str(ip).split("/")[0]
    return str(machine.get("hostname") or "")


class Targets:
    def __init__(self, store: Store, clouds: CloudService, keys: KeyService,
                 link: AgentLink) -> None:
        self.store = store
        self.clouds = clouds
        self.keys = keys
        self.link = link

    # ---- selecting ----------------------------------------------------------------------
    def _doc(self, org: str, machine_id: str) -> dict[str, Any] | None:
        raw = self.store.get(machine_key(org, machine_id)) if "/" not in machine_id else None
        if raw is None:
            return None
        doc, _ = MACHINE.upgrade(json.loads(raw))
        return dict(view(doc), org=org)

    def machine(self, p: Principal, ref: str) -> dict[str, Any]:
        """One machine of the caller's organisation by id (or, as Mist allows, by name)."""
        if not p.org_id or not ref:
            raise NotFound("no such machine", {"id": ref})
        doc = self._doc(p.org_id, ref)
        if doc is None:
            named = [d for d in self._all(p.org_id) if d.get("name") == ref]
            if len(named) > 1:
                raise Invalid(f"{len(named)} machines are named {ref!r}: give the id",
                              field="machine")
            if not named:
                raise NotFound("no such machine", {"id": ref})
            doc = named[0]
        if doc.get("missing_since"):
            raise NotFound("the machine is gone from its cloud", {"id": doc["id"]})
        return doc

    def _all(self, org: str) -> list[dict[str, Any]]:
        out = []
        for _, raw in self.store.scan(f"machine/{org}/"):
            doc, _ = MACHINE.upgrade(json.loads(raw))
            out.append(dict(view(doc), org=org))
        return out

    def select(self, p: Principal, refs: list[str]) -> list[dict[str, Any]]:
        """Machines by id, name or ``tag:key[=value]`` (several: their union), each once, in
        the order given. A selector that matches nothing is an error."""
        out: dict[str, dict[str, Any]] = {}
        everything: list[dict[str, Any]] | None = None
        for ref in refs:
            ref = ref.strip()
            m = _TAG.match(ref)
            if m is None:
                doc = self.machine(p, ref)
                out.setdefault(doc["id"], doc)
                continue
            if everything is None:
                everything = [d for d in self._all(p.org_id) if not d.get("missing_since")]
            k, v = m.group(1).strip(), m.group(2)
            hits = [d for d in everything if k in (d.get("tags") or {})
                    and (v is None or str(d["tags"][k]) == v.strip())]
            if not hits:
                raise Invalid(f"no machine has the tag {ref[4:]!r}", field="machines")
            for d in hits:
                out.setdefault(d["id"], d)
        if not out:
            raise Invalid("select at least one machine", field="machines")
        if len(out) > MAX_TARGETS:
            raise Invalid(f"at most {MAX_TARGETS} machines at once", field="machines")
        return list(out.values())

    # ---- reaching -----------------------------------------------------------------------
    def associations(self, org: str, machine_id: str) -> list[dict[str, Any]]:
        """The machine's key associations, most recently used first."""
        docs = [json.loads(raw) for _, raw in self.store.scan(assoc_prefix(org, machine_id))]
        return sorted(docs, key=lambda a: (a.get("last_used") or 0, a.get("created") or ""),
                      reverse=True)

    def route(self, machine: dict[str, Any], ssh_only: bool = False) -> Route:
        """How to reach ``machine`` now (see the module's docstring)."""
        org = machine["org"]
        agent = str(machine.get("agent") or "")
        if agent and not ssh_only and self.link.connected(agent):
            return Route(machine, agent_id=agent)
        ssh = self.ssh_route(machine)
        if ssh is not None:
            return ssh
        if agent and not ssh_only:
            since = machine.get("unreachable_since") or machine.get("last_seen") or ""
            return Route(machine, why="its agent is not connected" +
                         (f" (unreachable since {since})" if since else "") +
                         " and no SSH key is associated with it")
        del org
        return Route(machine, why="it has no agent and no SSH key is associated with it "
                                  "(associate one: PUT /api/v2/machines/{machine}/actions/"
                                  "associate-key)")

    def ssh_route(self, machine: dict[str, Any], exclude_key: str = "") -> Route | None:
        org = machine["org"]
        host = address(machine)
        if host:
            for a in self.associations(org, machine["id"]):
                if a["key"] == exclude_key:
                    continue
                try:
                    private = self.keys.private_text(org, a["key"])
                except NotFound:
                    continue  # the key was deleted: the association is stale
                return Route(machine, key_id=a["key"], ssh=SshTarget(
                    host=host, port=int(a.get("port") or 22), user=str(a.get("user") or "root"),
                    private_key=private, host_key=str(a.get("host_key") or "")))
        return self.cloud_route(machine)

    def cloud_route(self, machine: dict[str, Any]) -> Route | None:
        """An "other server" machine: its cloud's host entry holds a working key."""
        cloud_id = str(machine.get("cloud") or "")
        doc = self.clouds.load_any(machine["org"], cloud_id) if cloud_id else None
        if not doc or doc.get("provider") != "other":
            return None
        try:
            entries = parse_hosts(dict(doc.get("config") or {}),
                                  self.clouds._open(dict(doc, org=machine["org"])))
        except Exception:  # noqa: BLE001 - a cloud that cannot be read gives no route
            return None
        for e in entries:
            if e.external_id == machine.get("external_id"):
                return Route(machine, ssh=SshTarget(host=e.host, port=e.port, user=e.user,
                                                    private_key=e.key, host_key=e.host_key))
        return None
