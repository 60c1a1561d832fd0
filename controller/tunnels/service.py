"""Tunnel logic: create, list, show, edit, delete and rotate tunnels; register a gateway's
public key with a one-use token; and watch the gateways' handshakes (health, audited
transitions). The hub's side (its key, peers and routes in step with the store) is
``controller.tunnels.peers``; agents as gateways are ``controller.tunnels.gateways``; the
rules a tunnel's name and CIDRs follow are ``controller.tunnels.checks``.

Never imports aiohttp. Every change goes through the writer (audited, published). Methods
that touch the hub are coroutines and block their caller for the interface's calls
(milliseconds; seconds when the hub first comes up). Raises the controller's errors: Invalid
(a field), Conflict (overlaps, in use), NotFound (absent or another organisation's),
Unauthenticated (a refused gateway token, audited), TunnelsUnavailable (503: no WireGuard),
ProviderUnavailable (an agent gateway's stream failed)."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.accounts.model import Principal
from controller.clouds.model import CLOUD
from controller.errors import Conflict, Invalid, NotFound, Unauthenticated
from controller.events.model import SYSTEM, Actor
from controller.events.writer import Change, Writer
from controller.machines.model import MACHINE
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso
from controller.tunnels import checks, install
from controller.tunnels.gateways import AgentGateways
from controller.tunnels.hub import Hub
from controller.tunnels.model import (
    KEEPALIVE,
    TOKEN_PREFIX,
    TOKEN_TTL,
    TUNNEL,
    hash_key,
    health,
    token_hash,
    tunnel_key,
)
from controller.tunnels.peers import HubPeers
from tunnel import addressing, keys

if TYPE_CHECKING:
    from controller.exec.agentlink import AgentLink


class TunnelService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets_: SecretBox,
                 hub: Hub, local: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.hub = hub
        self.local = local  # the controller host's own networks (blocks: run in a thread)
        self.ca_fingerprint = ""  # set by the process that has the PKI
        self.own_ca = True  # False when the HTTPS certificate is the operator's (tls_cert)
        self.peers = HubPeers(settings, store, writer, secrets_, hub)
        self.gateways = AgentGateways(self.peers)  # agents as gateways, once attach_agents
        self._states: dict[str, str] = {}  # tunnel id -> the last state seen by the watcher
        # how refusals anyone can cause (a public endpoint, bad tokens) are audited: bounded
        # per address (AccountService.commit_unauthenticated); set by build_services
        self.commit_refusal: Callable[[Actor, Change], object] = writer.commit

    def attach_agents(self, link: AgentLink) -> None:
        """Agents as gateways: TunnelUp/TunnelDown go down their streams through ``link``,
        and their TunnelStatus messages come to the gateways."""
        self.gateways.attach(link)

    # ---- reading ---------------------------------------------------------------------------
    def _all(self) -> list[dict[str, Any]]:
        return self.peers.all()

    def _load(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        """Tunnel ``ref`` (id or name) of the caller's organisation; NotFound otherwise."""
        raw = self.store.get(tunnel_key(p.org_id, ref)) if p.org_id and ref and "/" not in ref else None
        if raw is None:
            for _, v in self.store.scan(f"tunnel/{p.org_id}/") if p.org_id else ():
                if load(TUNNEL, v).get("name") == ref:
                    return load(TUNNEL, v), v
            raise NotFound("no such tunnel", {"id": ref})
        return load(TUNNEL, raw), raw

    def view(self, doc: dict[str, Any]) -> dict[str, Any]:
        out = public(doc)
        out.pop("org", None)
        out["allowed_ips"] = addressing.allowed_ips(doc["cidrs"], doc["excluded"])
        out["health"] = health(bool(doc.get("public_key")), self.peers.stats.get(doc.get("public_key", "")))
        return out

    def list_tunnels(self, p: Principal) -> list[dict[str, Any]]:
        return [self.view(load(TUNNEL, v)) for _, v in self.store.scan(f"tunnel/{p.org_id}/")]

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        return self.view(self._load(p, ref)[0])

    # ---- checks ----------------------------------------------------------------------------
    def _check(self, org: str, tunnel_id: str, cidrs: Any, excluded: Any) -> tuple[list[str], list[str]]:
        """checks.cidrs against every tunnel and the controller host's own networks (with
        the tunnel network and the hub's IPv6 twin's). Blocks for ``ip``."""
        own = [*self.local(), self.settings.tunnel_network]
        if twin := self.peers.twin_network():
            own.append(twin)
        return checks.cidrs(self._all(), org, tunnel_id, cidrs, excluded, own,
                            self.settings.tunnel_network)

    def _name(self, value: Any) -> str:
        return checks.name_of(value)

    def _unique(self, org: str, name: str, except_id: str) -> None:
        checks.unique((load(TUNNEL, v) for _, v in self.store.scan(f"tunnel/{org}/")), name, except_id)

    # ---- the hub ---------------------------------------------------------------------------
    def hub_address(self) -> str:
        """The hub's tunnel address (no prefix). Writes nothing."""
        return self.peers.hub_address()

    def agent_endpoints(self, org: str, tunnel_id: str) -> tuple[str, str] | None:
        """(controller URL, agents' gRPC host:port) for hosts behind tunnel ``tunnel_id`` of
        ``org``: the controller's listeners on the hub address (controller/tunnels/
        listeners.py; always HTTPS there). None when there is no such tunnel."""
        if not tunnel_id or "/" in tunnel_id or self.store.get(tunnel_key(org, tunnel_id)) is None:
            return None
        return self.hub_endpoints()

    def hub_endpoints(self) -> tuple[str, str]:
        """(controller URL, agents' gRPC host:port) at the hub address."""
        return self.peers.hub_endpoints()

    async def start_hub(self, only_if_tunnels: bool = False) -> None:
        """Bring the hub up with every registered gateway's peer and routes (HubPeers.start).
        Raises TunnelsUnavailable."""
        await self.peers.start(only_if_tunnels)

    # ---- changes ---------------------------------------------------------------------------
    def _token(self, change: Change, org: str, tunnel_id: str, doc: dict[str, Any], rotate: bool) -> str:
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        if doc.get("_token_hash"):
            change.delete(f"tunnelhash/{doc['_token_hash']}")
        doc.update(_token_hash=token_hash(secret), _token_expires_at=time.time() + TOKEN_TTL,
                   _token_rotate=rotate)
        change.put(hash_key(secret), f"{org}/{tunnel_id}".encode())
        return secret

    def install_command(self, secret: str, rotate: bool = False) -> str:
        # the HTTPS certificate is the own CA's unless the operator gave one, or a reverse
        # proxy in front serves its own (the script still pins the CA by fingerprint)
        operator_cert = bool(self.settings.tls_cert) or self.settings.behind_proxy
        return install.command(self.settings.public_url, secret, self.ca_fingerprint,
                               self.own_ca and not operator_cert, rotate)

    def _with_token(self, doc: dict[str, Any], secret: str, rotate: bool) -> dict[str, Any]:
        out = self.view(doc)
        out["token"] = secret
        out["token_expires"] = iso(doc["_token_expires_at"])
        out["install_command"] = self.install_command(secret, rotate)
        return out

    async def create(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """A tunnel, its gateway's address and a one-use gateway token (in the answer only).
        Brings the hub up when it is not. Raises Invalid, Conflict, TunnelsUnavailable."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        name = self._name(body.get("name"))
        self._unique(p.org_id, name, "")
        gateway = self.gateways.resolve(p.org_id, body["gateway_agent"]) if body.get("gateway_agent") else None
        tid = uuid.uuid4().hex
        cidrs, excluded = await asyncio.to_thread(self._check, p.org_id, tid, body.get("cidrs"),
                                                  body.get("excluded", []))
        await self.start_hub()
        hub = await asyncio.to_thread(self.peers.hub_doc)
        prefix = addressing.parse_cidr(self.settings.tunnel_network).max_prefixlen
        try:
            address = addressing.allocate(self.settings.tunnel_network,
                                          [hub["address"], *(d["address"] for d in self._all())])
        except ValueError as e:
            raise Conflict(str(e)) from None
        email = p.user.get("email", "")
        doc: dict[str, Any] = {"id": tid, "org": p.org_id, "name": name, "cidrs": cidrs,
                               "excluded": excluded, "address": f"{address}/{prefix}",
                               "public_key": "", "registered": None, "created": iso(),
                               "created_by": email, "gateway_machine": "", "gateway_agent": "",
                               "gateway_error": ""}
        change = Change("tunnel.create", org=p.org_id, target_kind="tunnel", target_id=tid,
                        details={"name": name, "cidrs": cidrs, "excluded": excluded,
                                 "address": doc["address"]})
        if gateway is not None:
            doc["gateway_machine"], doc["gateway_agent"] = gateway
            change.details["gateway_machine"] = doc["gateway_machine"]
            change.put(tunnel_key(p.org_id, tid), dump(TUNNEL, doc)).expect(tunnel_key(p.org_id, tid), None)
            change.event("created", "tunnel", tid, {"name": name})
            self.writer.commit(actor, change)
            await self.gateways.tell_up(doc)
            return self.view(doc)
        secret = self._token(change, p.org_id, tid, doc, rotate=False)
        change.put(tunnel_key(p.org_id, tid), dump(TUNNEL, doc)).expect(tunnel_key(p.org_id, tid), None)
        change.event("created", "tunnel", tid, {"name": name})
        self.writer.commit(actor, change)
        return self._with_token(doc, secret, rotate=False)

    async def edit(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """Rename a tunnel or change its CIDRs (checked again; the hub's peer and routes
        follow). Raises NotFound, Invalid, Conflict, TunnelsUnavailable."""
        doc, raw = self._load(p, ref)
        new = dict(doc)
        change = Change("tunnel.edit", org=p.org_id, target_kind="tunnel", target_id=doc["id"])
        if body.get("name") is not None and self._name(body["name"]) != doc["name"]:
            new["name"] = self._name(body["name"])
            self._unique(p.org_id, new["name"], doc["id"])
            change.details["name"] = {"from": doc["name"], "to": new["name"]}
        if body.get("cidrs") is not None or body.get("excluded") is not None:
            cidrs, excluded = await asyncio.to_thread(
                self._check, p.org_id, doc["id"], body.get("cidrs", doc["cidrs"]),
                body.get("excluded", doc["excluded"]))
            if (cidrs, excluded) != (doc["cidrs"], doc["excluded"]):
                new.update(cidrs=cidrs, excluded=excluded)
                change.details["cidrs"] = {"from": doc["cidrs"], "to": cidrs}
                change.details["excluded"] = {"from": doc["excluded"], "to": excluded}
        old_agent = doc.get("gateway_agent", "")
        if body.get("gateway_agent") is not None:
            machine, agent = (self.gateways.resolve(p.org_id, body["gateway_agent"])
                              if body["gateway_agent"] else ("", ""))
            if agent != old_agent:
                new.update(gateway_machine=machine, gateway_agent=agent, gateway_error="")
                change.details["gateway_machine"] = {"from": doc.get("gateway_machine", ""),
                                                     "to": machine}
                if old_agent and not agent:
                    # back to a gateway with the install script: its key comes with a token
                    # (rotate); the agent's key leaves the hub
                    new["public_key"] = ""
        if not change.details:
            return self.view(doc)
        if new.get("public_key") and "cidrs" in change.details:
            await self.start_hub()
            peer, routes = self.peers.peer_of(new)
            await self.hub.set_gateway(peer, routes, drop=self.peers.peer_of(doc)[1])
        if doc.get("public_key") and not new.get("public_key"):
            await self.hub.remove_gateway(doc["public_key"], self.peers.peer_of(doc)[1])
        k = tunnel_key(p.org_id, doc["id"])
        change.put(k, dump(TUNNEL, new)).expect(k, raw)
        change.event("changed", "tunnel", doc["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        if old_agent and old_agent != new.get("gateway_agent"):
            await self.gateways.tell_down(old_agent, doc["id"])
        if new.get("gateway_agent") and (new["gateway_agent"] != old_agent or "cidrs" in change.details):
            await self.gateways.tell_up(new)
        return self.view(new)

    def in_use(self, org: str, doc: dict[str, Any]) -> dict[str, list[str]]:
        """Names of the organisation's machines with an address inside the tunnel's routes,
        and of its clouds whose configuration names such an address (an endpoint: private
        clouds' APIs go through the tunnel; names are not resolved). Blocks on the store."""
        nets = [ipaddress.ip_network(n) for n in addressing.allowed_ips(doc["cidrs"], doc["excluded"])]
        found: dict[str, list[str]] = {"machines": [], "clouds": []}
        for _, v in self.store.scan(f"machine/{org}/"):
            m = load(MACHINE, v)
            for ip in [*m.get("public_ips", []), *m.get("private_ips", [])]:
                try:
                    a = ipaddress.ip_address(str(ip).split("/")[0])
                except ValueError:
                    continue
                if any(a in n for n in nets):
                    found["machines"].append(m.get("name") or m.get("id", ""))
                    break
        for _, v in self.store.scan(f"cloud/{org}/"):
            c = load(CLOUD, v)
            if any(a in n for a in checks.literal_addresses(c.get("config") or {}) for n in nets):
                found["clouds"].append(c.get("name") or c.get("id", ""))
        return found

    async def delete(self, p: Principal, actor: Actor, ref: str, force: bool) -> None:
        """Delete a tunnel: its peer and routes leave the hub. Conflict when machines of the
        organisation have addresses inside it, or its clouds endpoints there, unless
        ``force``."""
        doc, raw = self._load(p, ref)
        users = await asyncio.to_thread(self.in_use, p.org_id, doc)
        if (users["machines"] or users["clouds"]) and not force:
            said = []
            for what, names in users.items():
                if names:
                    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                    said.append(f"{what} {', '.join(names[:5])}{more}")
            raise Conflict(f"tunnel {doc['name']!r} is in use: {' and '.join(said)} are reached "
                           "through it; delete them first, or delete with force=true (they "
                           "become unreachable)", {k: v[:100] for k, v in users.items()})
        peer_key = doc.get("public_key") or None
        await self.hub.remove_gateway(peer_key, addressing.allowed_ips(doc["cidrs"], doc["excluded"]))
        k = tunnel_key(p.org_id, doc["id"])
        change = Change("tunnel.delete", org=p.org_id, target_kind="tunnel", target_id=doc["id"],
                        details={"name": doc["name"], "cidrs": doc["cidrs"], "force": force,
                                 **{k: v[:100] for k, v in users.items()}})
        change.delete(k).expect(k, raw)
        if doc.get("_token_hash"):
            change.delete(f"tunnelhash/{doc['_token_hash']}")
        change.event("deleted", "tunnel", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)
        self._states.pop(doc["id"], None)
        if doc.get("gateway_agent"):
            await self.gateways.tell_down(doc["gateway_agent"], doc["id"])

    async def rotate(self, p: Principal, actor: Actor, ref: str) -> dict[str, Any]:
        """Rotate the gateway's key. An install-script gateway: a new one-use token whose
        install command (``--rotate``) makes the gateway a new key; the hub moves the tunnel
        to it when it registers. An agent gateway: it is asked over its stream (no token);
        its new key arrives as a TunnelStatus. Raises NotFound; for an agent gateway Invalid
        (its agent is not connected), ProviderUnavailable (its stream failed)."""
        doc, raw = self._load(p, ref)
        if doc.get("gateway_agent"):
            await self.gateways.rotate(actor, doc)
            return self.view(doc)
        new = dict(doc)
        change = Change("tunnel.rotate", org=p.org_id, target_kind="tunnel", target_id=doc["id"],
                        details={"name": doc["name"]})
        secret = self._token(change, p.org_id, doc["id"], new, rotate=True)
        k = tunnel_key(p.org_id, doc["id"])
        change.put(k, dump(TUNNEL, new)).expect(k, raw)
        change.event("changed", "tunnel", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)
        return self._with_token(new, secret, rotate=True)

    # ---- gateways --------------------------------------------------------------------------
    def _refuse(self, ip: str, reason: str, org: str = "", target: str = "") -> Unauthenticated:
        self.commit_refusal(Actor(kind="anonymous", ip=ip, via="rest", org=org),
                            Change("tunnel.register", org=org, outcome="denied",
                                   target_kind="tunnel", target_id=target,
                                   details={"reason": reason}))
        return Unauthenticated(reason)

    async def register(self, ip: str, secret: str, public_key: str) -> dict[str, str]:
        """Record a gateway's public key with its one-use token: the hub gets the peer FIRST
        (the gateway's first handshake must find it), then the token is spent and the answer
        tells the gateway its address and the hub. A rotation replaces the old peer.
        Raises Unauthenticated (audited), Invalid, TunnelsUnavailable."""
        if not keys.is_key(public_key):
            raise Invalid("public_key is not a WireGuard public key (44 characters of base64)",
                          field="public_key")
        ref = self.store.get(hash_key(secret)) if secret.startswith(TOKEN_PREFIX) else None
        raw = self.store.get(f"tunnel/{ref.decode()}") if ref else None
        if raw is None or ref is None:
            raise self._refuse(ip, "the tunnel token is not valid (wrong, or used already)")
        doc = load(TUNNEL, raw)
        org = doc["org"]
        if doc.get("_token_hash") != token_hash(secret):
            raise self._refuse(ip, "the tunnel token is not valid (wrong, or used already)", org, doc["id"])
        if doc["_token_expires_at"] < time.time():
            raise self._refuse(ip, "the tunnel token has expired: make a new one with rotate", org, doc["id"])
        actor = Actor(kind="anonymous", ip=ip, via="rest", org=org)
        routes = await self.peers.set_key(doc, raw, public_key, actor, {"ip": ip}, hash_key(secret))
        if doc.get("gateway_agent"):  # the install script took over from the agent
            await self.gateways.tell_down(doc["gateway_agent"], doc["id"])
        hub = await asyncio.to_thread(self.peers.hub_doc)
        hub_ip = ipaddress.ip_address(hub["address"])
        allowed = [f"{hub_ip}/{hub_ip.max_prefixlen}"]
        # IPv6 CIDRs: the hub sends from its IPv6 twin, which the gateway lets in, routes
        # back and masquerades from (hub_address6); "" when the tunnel routes none
        twin = ""
        if hub_ip.version == 4 and any(":" in r for r in routes):
            twin = addressing.ipv6_twin(str(hub_ip), hub["public_key"])
            allowed.append(f"{twin}/128")
        return {"tunnel_id": doc["id"], "name": doc["name"], "address": doc["address"],
                "hub_public_key": hub["public_key"],
                "hub_endpoint": self.settings.tunnel_public_endpoint,
                "hub_address": str(hub_ip), "hub_address6": twin, "allowed_ips": ",".join(allowed),
                "cidrs": " ".join(routes), "keepalive": str(KEEPALIVE)}

    # ---- health ----------------------------------------------------------------------------
    async def watch_once(self) -> None:
        """Read the hub's peers once; audit and publish each tunnel's change of state
        (``tunnel.up``, ``tunnel.down``). Raises what the interface raises."""
        self.peers.stats = await self.hub.peers()
        for doc in await asyncio.to_thread(self._all):
            state = str(self.view(doc)["health"]["state"])
            before = self._states.get(doc["id"])
            self._states[doc["id"]] = state
            if state == before or state == "waiting" or (before is None and state == "down"):
                continue
            h = self.view(doc)["health"]
            change = Change(f"tunnel.{state}", org=doc["org"], target_kind="tunnel",
                            target_id=doc["id"], details={"name": doc["name"], **h})
            change.event("changed", "tunnel", doc["id"], {"name": doc["name"], "health": h})
            self.writer.commit(SYSTEM, change)
