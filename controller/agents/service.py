"""Agent logic: join tokens, enrolment (CSR signed by the controller's CA), identity from the
certificate, connection state, inventory, renewal and revocation. Never imports grpc or
aiohttp; every state change goes through the writer (audited, published)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from typing import Any

from controller.accounts.model import Principal
from controller.agents.model import (
    AGENT,
    CLOUD,
    JOIN_PREFIX,
    JOIN_TOKEN,
    PROTOCOL_VERSION,
    agent_key,
    machine_facts,
    older,
)
from controller.clouds.model import agents_cloud_id
from controller.errors import Forbidden, Invalid, NotFound, OvercastError, Unauthenticated
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.install import script as install_script
from controller.install.package import agent_version
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.pki import CsrError, Pki, cert_serial, sign_agent_csr
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso

TAG_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")
# A connected agent's machine gets its last_seen written this often (as a cloud's unchanged
# machines, every 5 minutes): each write rewrites the machine's document, ~6.5 KiB of JSON
# with the agent's facts; once a minute that was ~1.4 % of a core with 10,000 agents.
# Whether an agent is there right now is its state (running / unreachable), set at once.
_TOUCH_EVERY = 300.0


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_tags(text: str) -> dict[str, str]:
    """``k=v,k2=v2,flag`` as the CLI and the API take them."""
    tags: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        k = k.strip()
        if not k or not set(k) <= TAG_KEY_CHARS or len(k) > 64 or len(v) > 256:
            raise Invalid(f"bad tag {part!r}: keys are letters, digits and _.-/", field="tags")
        tags[k] = v.strip()
    return tags


class AgentError(Unauthenticated):
    """An agent's credential or claim was refused (audited by the caller's edge)."""


class AgentService:
    def __init__(self, settings: Settings, store: Store, writer: Writer) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.pki: Pki | None = None  # set by the process that serves agents
        self._touched: dict[str, float] = {}

    # ---- join tokens ---------------------------------------------------------------------
    def create_join_token(self, p: Principal, actor: Actor, ttl: int | None, uses: int,
                          tags: dict[str, str], name: str = "", tunnel: str = "",
                          url: str = "") -> tuple[str, dict[str, Any]]:
        """A join token; with ``tunnel`` (a tunnel's id), for hosts behind that tunnel: its
        command names ``url`` (the controller at the hub address) and enrolment answers the
        hub's agents endpoint."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        ttl = self.settings.join_token_ttl if ttl is None else ttl
        if not 1 <= ttl <= self.settings.join_token_max_ttl:
            raise Invalid(f"ttl must be 1 to {self.settings.join_token_max_ttl} seconds", field="ttl")
        if not 1 <= uses <= 100_000:
            raise Invalid("uses must be 1 to 100000", field="uses")
        secret = JOIN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        tok = {"id": uuid.uuid4().hex[:16], "org": p.org_id, "name": name, "created": iso(now),
               "created_by": p.user.get("email", ""), "expires": iso(now + ttl),
               "_expires_at": now + ttl, "uses": uses, "used": 0, "tags": tags, "agents": []}
        details: dict[str, Any] = {"ttl": ttl, "uses": uses, "tags": tags}
        if tunnel:
            tok["tunnel"] = details["tunnel"] = tunnel
        change = Change("jointoken.create", org=p.org_id, target_kind="jointoken",
                        target_id=tok["id"], details=details)
        change.put(f"jointoken/{p.org_id}/{tok['id']}", dump(JOIN_TOKEN, tok))
        change.put(f"joinhash/{_hash(secret)}", f"{p.org_id}/{tok['id']}".encode())
        change.event("created", "jointoken", tok["id"], {"uses": uses})
        self.writer.commit(actor, change)
        return secret, self._token_view(tok, secret, url)

    def join_command(self, secret: str, url: str = "") -> str:
        """The agent's own command (for a host where the agent is installed already)."""
        fp = self.pki.ca_fingerprint if self.pki else "<ca-fingerprint>"
        return (f"overcast agent --controller {url or self.settings.public_url} --token {secret} "
                f"--ca-fingerprint sha256:{fp}")

    def install_command(self, secret: str, url: str = "") -> str:
        """The one-liner that installs the agent on a server and enrols it (install/agent.sh).
        The HTTPS certificate is the own CA's unless the operator gave one (tls_cert) or a
        reverse proxy terminates TLS (behind_proxy: the proxy's certificate, from a CA the
        host trusts, not from the own CA); the tunnel hub's listeners (``url``) always have
        the own CA's. Either way the script itself checks the CA against the fingerprint."""
        fp = self.pki.ca_fingerprint if self.pki else "<ca-fingerprint>"
        public = self.settings.public_url
        operator_cert = bool(self.settings.tls_cert) or self.settings.behind_proxy
        own_ca = not operator_cert or bool(url and url != public)
        return install_script.command(url or public, secret, fp, own_ca, public)

    def _token_view(self, tok: dict[str, Any], secret: str | None = None,
                    url: str = "") -> dict[str, Any]:
        v = public(tok)
        v["expired"] = tok["_expires_at"] < time.time()
        v["exhausted"] = tok["used"] >= tok["uses"]
        if secret:
            v["token"] = secret
            v["command"] = self.install_command(secret, url)
            v["agent_command"] = self.join_command(secret, url)
        return v

    def list_join_tokens(self, p: Principal) -> list[dict[str, Any]]:
        return [self._token_view(load(JOIN_TOKEN, v)) for _, v in self.store.scan(f"jointoken/{p.org_id}/")]

    def delete_join_token(self, p: Principal, actor: Actor, token_id: str) -> None:
        key = f"jointoken/{p.org_id}/{token_id}"
        raw = self.store.get(key) if "/" not in token_id else None
        if raw is None:
            raise NotFound("no such join token")
        change = Change("jointoken.delete", org=p.org_id, target_kind="jointoken", target_id=token_id)
        change.delete(key)
        for k, v in self.store.scan("joinhash/"):
            if v.decode() == f"{p.org_id}/{token_id}":
                change.delete(k)
        change.event("deleted", "jointoken", token_id)
        self.writer.commit(actor, change)

    # ---- enrolment -----------------------------------------------------------------------
    def _refuse(self, ip: str, reason: str, org: str = "", target: str = "", kind: str = "jointoken",
                action: str = "agent.enroll") -> AgentError:
        self.writer.commit(Actor(kind="agent" if kind == "agent" else "anonymous", id=target if kind == "agent" else "",
                                 ip=ip, via="agent", org=org),
                           Change(action, org=org, outcome="denied", target_kind=kind,
                                  target_id=target, details={"reason": reason}))
        return AgentError(reason)

    def enroll(self, ip: str, secret: str, csr_pem: bytes, hostname: str, agent_version: str,
               protocol_version: int) -> dict[str, Any]:
        """Check the join token, sign the CSR, create the agent and its machine."""
        if self.pki is None:
            raise OvercastError("this controller does not serve agents")
        if protocol_version and protocol_version > PROTOCOL_VERSION:
            raise Invalid(f"agent protocol {protocol_version} is newer than this controller's "
                          f"{PROTOCOL_VERSION}: upgrade the controller", field="protocol_version")
        ref = self.store.get(f"joinhash/{_hash(secret)}") if secret else None
        raw = self.store.get(f"jointoken/{ref.decode()}") if ref else None
        if raw is None:
            raise self._refuse(ip, "the join token is not valid")
        tok = load(JOIN_TOKEN, raw)
        org = tok["org"]
        if tok["_expires_at"] < time.time():
            raise self._refuse(ip, "the join token has expired", org, tok["id"])
        if tok["used"] >= tok["uses"]:
            raise self._refuse(ip, "the join token has been used up", org, tok["id"])
        hostname = (hostname or "agent").strip()[:253]
        agent_id = uuid.uuid4().hex
        try:
            cert, not_after, serial = sign_agent_csr(self.pki, csr_pem, agent_id,
                                                     self.settings.agent_cert_ttl)
        except CsrError as exc:
            self._refuse(ip, str(exc), org, tok["id"])
            raise Invalid(str(exc), field="csr_pem") from None
        now = time.time()
        cloud_id = self._agents_cloud(org)
        agent = {"id": agent_id, "org": org, "name": hostname, "created": iso(now),
                 "join_token": tok["id"], "tags": tok["tags"], "cert_serial": str(serial),
                 "prev_serial": "", "cert_not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "revoked": False, "version": agent_version, "address": ip}
        machine = {"id": agent_id, "org": org, "name": hostname, "hostname": hostname,
                   "cloud": cloud_id, "provider": "other", "state": "pending", "tags": tok["tags"],
                   "created": iso(now), "created_by": tok.get("created_by", ""),
                   "owned_by": tok.get("created_by", ""), "agent": agent_id, "monitoring": True}
        tok2 = dict(tok, used=tok["used"] + 1, agents=[*tok.get("agents", [])[-99:], agent_id])
        change = Change("agent.enroll", org=org, target_kind="agent", target_id=agent_id,
                        details={"hostname": hostname, "join_token": tok["id"], "ip": ip})
        change.put(f"jointoken/{org}/{tok['id']}", dump(JOIN_TOKEN, tok2)).expect(
            f"jointoken/{org}/{tok['id']}", raw)
        change.put(agent_key(org, agent_id), dump(AGENT, agent))
        change.put(f"agentid/{agent_id}", org.encode())
        change.put(machine_key(org, agent_id), dump(MACHINE, machine))
        if self.store.get(f"cloud/{org}/{cloud_id}") is None:
            change.put(f"cloud/{org}/{cloud_id}", dump(CLOUD, {
                "id": cloud_id, "org": org, "name": "Agents", "provider": "other", "agents": True,
                "created": iso(now), "enabled": True, "tags": {}, "_user_tags": {},
                "created_by": "", "owned_by": "",
                "description": "Hosts that run the Overcast agent"}))
        change.event("created", "agent", agent_id, {"name": hostname})
        change.event("created", "machine", agent_id, {"name": hostname, "state": "pending"})
        self.writer.commit(Actor(kind="agent", id=agent_id, ip=ip, via="agent", org=org), change)
        return {"agent_id": agent_id, "certificate_pem": cert, "ca_pem": self.pki.ca_pem,
                "not_after": not_after, "org": org, "tunnel": tok.get("tunnel", "")}

    @staticmethod
    def _agents_cloud(org: str) -> str:
        # one "Agents" cloud per organisation, with an id derived from it (stable, no lookup)
        return agents_cloud_id(org)

    # ---- identity and connection state -----------------------------------------------------
    def identify(self, agent_id: str, serial: int, ip: str) -> dict[str, Any]:
        """The agent whose certificate (id, serial) connects; refused when unknown or revoked."""
        org_raw = self.store.get(f"agentid/{agent_id}") if agent_id and "/" not in agent_id else None
        raw = self.store.get(agent_key(org_raw.decode(), agent_id)) if org_raw else None
        if raw is None:
            raise self._refuse(ip, "unknown agent certificate", target=agent_id, kind="agent",
                               action="agent.connect")
        agent = load(AGENT, raw)
        if agent.get("revoked"):
            raise self._refuse(ip, "the agent was revoked", agent["org"], agent_id, "agent",
                               "agent.connect")
        if str(serial) not in (agent["cert_serial"], agent.get("prev_serial")):
            raise self._refuse(ip, "the certificate was replaced by a newer one", agent["org"],
                               agent_id, "agent", "agent.connect")
        return agent

    def refuse_claim(self, agent: dict[str, Any], claimed: str, ip: str) -> AgentError:
        """A message that claims another agent's id: refused and audited."""
        return self._refuse(ip, f"message claims agent id {claimed[:64]!r}", agent["org"],
                            agent["id"], "agent", "agent.impersonation")

    def _machine(self, agent: dict[str, Any]) -> tuple[str, bytes | None, dict[str, Any]]:
        """The machine the agent reports on: its own in the Agents cloud, or the cloud machine
        it was linked to (the same host seen through a cloud: see clouds.links). A link whose
        machine is gone (its cloud was removed) falls back to the agent's own machine."""
        linked = agent.get("machine") or agent["id"]
        key = machine_key(agent["org"], linked)
        raw = self.store.get(key)
        if raw is None and linked != agent["id"]:
            key = machine_key(agent["org"], agent["id"])
            raw = self.store.get(key)
        if raw is None:
            return key, None, {"id": agent["id"], "org": agent["org"], "name": agent.get("name", ""),
                               "cloud": self._agents_cloud(agent["org"]), "provider": "other",
                               "agent": agent["id"], "monitoring": True, "tags": agent.get("tags", {}),
                               "created": agent.get("created", "")}
        return key, raw, load(MACHINE, raw)

    @staticmethod
    def _report(m: dict[str, Any], agent: dict[str, Any], facts: dict[str, Any] | None,
                state: str, now: float) -> None:
        """What the agent says about its host, into the machine document. On a cloud machine
        the cloud keeps the power state and addresses; the agent adds its view beside them."""
        if m.get("id") == agent["id"]:
            if facts is not None:
                m.update(facts)
            if state == "running":
                m.update(state="running", last_seen=iso(now), unreachable_since="")
            elif m.get("state") != "unreachable":
                m.update(state="unreachable", unreachable_since=iso(now), last_seen=iso(now))
            return
        if facts is not None:
            m["agent_facts"] = facts
            for k in ("hostname", "os_type", "cores"):
                if not m.get(k) and facts.get(k):
                    m[k] = facts[k]
        m.update(agent_state="connected" if state == "running" else "unreachable",
                 agent_last_seen=iso(now))

    def connected(self, agent: dict[str, Any], ip: str, inventory: dict[str, Any],
                  version: str, protocol_version: int) -> None:
        key, raw, m = self._machine(agent)
        now = time.time()
        self._report(m, agent, machine_facts(inventory), "running", now)
        a = dict(agent, version=version, protocol_version=protocol_version, address=ip,
                 connected=True, connected_since=iso(now), last_seen=iso(now))
        change = Change("agent.connect", org=agent["org"], target_kind="agent", target_id=agent["id"],
                        details={"ip": ip, "version": version})
        change.put(key, dump(MACHINE, m)).put(agent_key(agent["org"], agent["id"]), dump(AGENT, a))
        change.event("changed", "machine", m["id"], {"state": m.get("state", ""), "agent": "connected"})
        change.event("changed", "agent", agent["id"], {"connected": True})
        self.writer.commit(Actor(kind="agent", id=agent["id"], ip=ip, via="agent", org=agent["org"]), change)
        self._touched[agent["id"]] = now

    def disconnected(self, agent_id: str, reason: str) -> None:
        org_raw = self.store.get(f"agentid/{agent_id}")
        if org_raw is None:
            return
        org = org_raw.decode()
        raw = self.store.get(agent_key(org, agent_id))
        if raw is None:
            return
        agent = load(AGENT, raw)
        key, mraw, m = self._machine(agent)
        now = time.time()
        change = Change("agent.disconnect", org=org, target_kind="agent", target_id=agent_id,
                        details={"reason": reason})
        change.put(agent_key(org, agent_id), dump(AGENT, dict(agent, connected=False, last_seen=iso(now))))
        if mraw is not None and m.get("state" if m["id"] == agent_id else "agent_state") != "unreachable":
            self._report(m, agent, None, "unreachable", now)
            change.put(key, dump(MACHINE, m))
            change.event("changed", "machine", m["id"], {"state": m.get("state", ""),
                                                         "agent": "unreachable"})
        change.event("changed", "agent", agent_id, {"connected": False})
        self.writer.commit(Actor(kind="agent", id=agent_id, via="agent", org=org), change)
        self._touched.pop(agent_id, None)

    def mark_stale_unreachable(self, connected_ids: set[str]) -> int:
        """After a restart: agents that were connected and did not come back within the grace
        time are unreachable. Returns how many."""
        n = 0
        for _, raw in self.store.scan("agent/"):
            a = json.loads(raw)
            if a.get("connected") and a["id"] not in connected_ids:
                self.disconnected(a["id"], "not reconnected after a controller restart")
                n += 1
        return n

    def _fresh(self, agent: dict[str, Any]) -> dict[str, Any]:
        """The agent's stored document: a stream keeps only its id and organisation (a
        controller holds thousands), and a link to a cloud machine may have come meanwhile."""
        raw = self.store.get(agent_key(agent["org"], agent["id"]))
        return load(AGENT, raw) if raw is not None else agent

    def update_inventory(self, agent: dict[str, Any], inventory: dict[str, Any]) -> None:
        agent = self._fresh(agent)
        key, raw, m = self._machine(agent)
        self._report(m, agent, machine_facts(inventory), "running", time.time())
        change = Change("machine.inventory", org=agent["org"], target_kind="machine",
                        target_id=m["id"], details={"source": "agent", "agent": agent["id"]})
        change.put(key, dump(MACHINE, m))
        change.event("changed", "machine", m["id"], {"inventory": True})
        self.writer.commit(Actor(kind="agent", id=agent["id"], via="agent", org=agent["org"]), change)

    def touch(self, agent: dict[str, Any]) -> None:
        """last_seen bookkeeping (not an audited change), at most every _TOUCH_EVERY s per
        agent."""
        now = time.time()
        if now - self._touched.get(agent["id"], 0.0) < _TOUCH_EVERY:
            return
        self._touched[agent["id"]] = now
        key, raw, m = self._machine(self._fresh(agent))
        if raw is not None:
            field = "last_seen" if m.get("id") == agent["id"] else "agent_last_seen"
            self.store.put(key, dump(MACHINE, dict(m, **{field: iso(now)})))

    def renew(self, agent: dict[str, Any], csr_pem: bytes, ip: str) -> tuple[bytes, Any]:
        assert self.pki is not None
        try:
            cert, not_after, serial = sign_agent_csr(self.pki, csr_pem, agent["id"],
                                                     self.settings.agent_cert_ttl, expect_cn=agent["id"])
        except CsrError as exc:
            raise self._refuse(ip, str(exc), agent["org"], agent["id"], "agent", "agent.renew") from None
        raw = self.store.get(agent_key(agent["org"], agent["id"]))
        cur = load(AGENT, raw) if raw else agent
        new = dict(cur, prev_serial=cur["cert_serial"], cert_serial=str(serial),
                   cert_not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
        change = Change("agent.renew", org=agent["org"], target_kind="agent", target_id=agent["id"],
                        details={"not_after": new["cert_not_after"]})
        change.put(agent_key(agent["org"], agent["id"]), dump(AGENT, new))
        self.writer.commit(Actor(kind="agent", id=agent["id"], ip=ip, via="agent", org=agent["org"]), change)
        return cert, not_after

    # ---- users' views and actions --------------------------------------------------------
    def _view(self, a: dict[str, Any]) -> dict[str, Any]:
        v = {k: a.get(k) for k in ("id", "name", "org", "created", "tags", "version",
                                    "protocol_version", "address", "cert_not_after", "revoked",
                                    "connected", "connected_since", "last_seen")}
        v["machine"] = a.get("machine") or a["id"]
        latest = agent_version()
        v["latest_version"] = latest
        v["outdated"] = (bool(a.get("protocol_version")) and a["protocol_version"] < PROTOCOL_VERSION) \
            or older(str(a.get("version") or ""), latest)
        return v

    def list(self, p: Principal) -> list[dict[str, Any]]:
        return [self._view(load(AGENT, v)) for _, v in self.store.scan(f"agent/{p.org_id}/")]

    def get(self, p: Principal, agent_id: str) -> dict[str, Any]:
        raw = self.store.get(agent_key(p.org_id, agent_id)) if p.org_id and "/" not in agent_id else None
        if raw is None:
            raise NotFound("no such agent", {"id": agent_id})
        return self._view(load(AGENT, raw))

    def revoke(self, p: Principal, actor: Actor, agent_id: str) -> dict[str, Any]:
        if p.role != "owner" and not p.is_admin:
            raise Forbidden("only owners revoke agents")
        raw = self.store.get(agent_key(p.org_id, agent_id)) if p.org_id and "/" not in agent_id else None
        if raw is None:
            raise NotFound("no such agent", {"id": agent_id})
        agent = load(AGENT, raw)
        if agent.get("revoked"):
            return self._view(agent)
        now = time.time()
        agent = dict(agent, revoked=True, revoked_at=iso(now), connected=False)
        change = Change("agent.revoke", org=p.org_id, target_kind="agent", target_id=agent_id)
        change.put(agent_key(p.org_id, agent_id), dump(AGENT, agent)).expect(agent_key(p.org_id, agent_id), raw)
        key, mraw, m = self._machine(agent)
        if mraw is not None:
            self._report(m, agent, None, "unreachable", now)
            change.put(key, dump(MACHINE, m))
            change.event("changed", "machine", m["id"], {"state": m.get("state", ""),
                                                         "agent": "unreachable"})
        change.event("changed", "agent", agent_id, {"revoked": True})
        self.writer.commit(actor, change)
        return self._view(agent)

    def acked_seq(self, agent_id: str) -> int:
        raw = self.store.get(f"agentseq/{agent_id}")
        return int(raw) if raw else 0


def serial_of(cert_pem: bytes) -> int:
    return cert_serial(cert_pem)
