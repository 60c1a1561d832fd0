"""Tunnel logic: create, list, show, edit, delete and rotate tunnels; register a gateway's
public key with a one-use token; keep the hub's peers and routes in step with the store; and
watch the gateways' handshakes (health, audited transitions).

Never imports aiohttp. Every change goes through the writer (audited, published). Methods
that touch the hub are coroutines and block their caller for the interface's calls
(milliseconds; seconds when the hub first comes up). Raises the controller's errors: Invalid
(a field), Conflict (overlaps, in use), NotFound (absent or another organisation's),
Unauthenticated (a refused gateway token, audited), TunnelsUnavailable (503: no WireGuard)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from controller.accounts.model import Principal
from controller.errors import Conflict, Invalid, NotFound, Unauthenticated
from controller.events.model import SYSTEM, Actor
from controller.events.writer import Change, Writer
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso
from controller.tunnels import install
from controller.tunnels.hub import Hub
from controller.tunnels.model import (
    HUB,
    HUB_KEY,
    KEEPALIVE,
    MAX_CIDRS,
    TOKEN_PREFIX,
    TOKEN_TTL,
    TUNNEL,
    hash_key,
    health,
    token_hash,
    tunnel_key,
)
from tunnel import addressing, keys
from tunnel.backend import Peer, PeerStats

if TYPE_CHECKING:
    from controller.exec.agentlink import AgentLink

log = logging.getLogger(__name__)


class TunnelService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets_: SecretBox,
                 hub: Hub, local: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets_
        self.hub = hub
        self.local = local  # the controller host's own networks (blocks: run in a thread)
        self.ca_fingerprint = ""  # set by the process that has the PKI
        self.own_ca = True  # False when the HTTPS certificate is the operator's (tls_cert)
        self._stats: dict[str, PeerStats] = {}
        self._states: dict[str, str] = {}  # tunnel id -> the last state seen by the watcher
        # how refusals anyone can cause (a public endpoint, bad tokens) are audited: bounded
        # per address (AccountService.commit_unauthenticated); set by build_services
        self.commit_refusal: Callable[[Actor, Change], object] = writer.commit
        self.agentlink: AgentLink | None = None  # set by attach_agents: agents as gateways

    def attach_agents(self, link: AgentLink) -> None:
        """Agents as gateways: TunnelUp/TunnelDown go down their streams through ``link``,
        and their TunnelStatus messages come here."""
        self.agentlink = link
        link.handlers["tunnel_status"] = self.gateway_status

    # ---- reading ---------------------------------------------------------------------------
    def _all(self) -> list[dict[str, Any]]:
        return [load(TUNNEL, v) for _, v in self.store.scan("tunnel/")]

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
        out["health"] = health(bool(doc.get("public_key")), self._stats.get(doc.get("public_key", "")))
        return out

    def list_tunnels(self, p: Principal) -> list[dict[str, Any]]:
        return [self.view(load(TUNNEL, v)) for _, v in self.store.scan(f"tunnel/{p.org_id}/")]

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        return self.view(self._load(p, ref)[0])

    # ---- checks ----------------------------------------------------------------------------
    def _check(self, org: str, tunnel_id: str, cidrs: Any, excluded: Any) -> tuple[list[str], list[str]]:
        """The CIDRs and exclusions in canonical form, refused when they are not CIDRs, overlap
        each other, the controller's own networks, the tunnel network, or another tunnel's
        (of any organisation: the controller has one routing table; another organisation's
        tunnel is never named). Blocks for ``ip`` (the own networks)."""
        for what, value in (("cidrs", cidrs), ("excluded", excluded)):
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise Invalid(f"{what} must be a list of CIDRs", field=what)
            if len(value) > MAX_CIDRS:
                raise Invalid(f"{what}: at most {MAX_CIDRS} CIDRs", field=what)
        try:
            nets = [str(n) for n in addressing.parse_cidrs(cidrs)]
        except ValueError as e:
            raise Invalid(str(e), field="cidrs") from None
        try:
            exc = [str(n) for n in addressing.parse_cidrs(excluded)]
        except ValueError as e:
            raise Invalid(str(e), field="excluded") from None
        mine = addressing.allowed_ips(nets, exc) if nets else []
        for other in self._all():
            if other["id"] == tunnel_id:
                continue
            for n in mine:
                for t in addressing.allowed_ips(other["cidrs"], other["excluded"]):
                    a, b = ipaddress.ip_network(n), ipaddress.ip_network(t)
                    if a.version == b.version and a.overlaps(b):
                        if other["org"] == org:
                            raise Conflict(f"{n} overlaps tunnel {other['name']!r} ({t})", {"field": "cidrs"})
                        raise Conflict(f"{n} overlaps the networks of another tunnel on this "
                                       "controller (each address can be routed through one "
                                       "tunnel only)", {"field": "cidrs"})
        own = [*self.local(), self.settings.tunnel_network]
        try:
            addressing.check_routes(nets, exc, local=own)
        except ValueError as e:
            raise Invalid(str(e).replace(f"network {self.settings.tunnel_network}",
                                         f"tunnel network {self.settings.tunnel_network}"),
                          field="cidrs") from None
        return nets, exc

    @staticmethod
    def _name(value: Any) -> str:
        name = str(value or "").strip()
        if not name or len(name) > 100:
            raise Invalid("name must have 1 to 100 characters", field="name")
        return name

    def _unique(self, org: str, name: str, except_id: str) -> None:
        for _, v in self.store.scan(f"tunnel/{org}/"):
            d = load(TUNNEL, v)
            if d["name"] == name and d["id"] != except_id:
                raise Conflict(f"a tunnel named {name!r} exists already", {"field": "name"})

    # ---- the hub ---------------------------------------------------------------------------
    def _hub_doc(self) -> dict[str, Any]:
        """The hub's key pair and address, made once (the private key sealed)."""
        raw = self.store.get(HUB_KEY)
        if raw is not None:
            return load(HUB, raw)
        private = keys.generate_private()
        doc = {"public_key": keys.public_of(private),
               "address": addressing.allocate(self.settings.tunnel_network, []),
               "_private": self.secrets.seal(private, aad=HUB_KEY), "created": iso()}
        change = Change("tunnel.hub", target_kind="tunnelhub", details={"public_key": doc["public_key"]})
        change.put(HUB_KEY, dump(HUB, doc)).expect(HUB_KEY, None)
        self.writer.commit(SYSTEM, change)
        return doc

    def hub_address(self) -> str:
        """The hub's tunnel address (no prefix): the stored one, else the one it will take
        (the first of tunnel_network). Writes nothing."""
        raw = self.store.get(HUB_KEY)
        if raw is not None:
            return str(load(HUB, raw)["address"])
        return addressing.allocate(self.settings.tunnel_network, [])

    def agent_endpoints(self, org: str, tunnel_id: str) -> tuple[str, str] | None:
        """(controller URL, agents' gRPC host:port) for hosts behind tunnel ``tunnel_id`` of
        ``org``: the controller's listeners on the hub address (controller/tunnels/
        listeners.py; always HTTPS there). None when there is no such tunnel."""
        if not tunnel_id or "/" in tunnel_id or self.store.get(tunnel_key(org, tunnel_id)) is None:
            return None
        return self.hub_endpoints()

    def hub_endpoints(self) -> tuple[str, str]:
        """(controller URL, agents' gRPC host:port) at the hub address."""
        a = self.hub_address()
        host = f"[{a}]" if ":" in a else a
        return f"https://{host}:{self.settings.http_port}", f"{host}:{self.settings.agents_port}"

    def _peer(self, doc: dict[str, Any]) -> tuple[Peer, list[str]]:
        routes = addressing.allowed_ips(doc["cidrs"], doc["excluded"])
        gw = ipaddress.ip_interface(doc["address"]).ip
        return Peer(doc["public_key"], [f"{gw}/{gw.max_prefixlen}", *routes]), routes

    async def start_hub(self, only_if_tunnels: bool = False) -> None:
        """Bring the hub up with every registered gateway's peer and routes. Nothing when it
        is up (or, with ``only_if_tunnels``, when there are no tunnels). Raises
        TunnelsUnavailable."""
        if self.hub.is_up:
            return
        docs = await asyncio.to_thread(self._all)
        if only_if_tunnels and not docs:
            return
        hub = await asyncio.to_thread(self._hub_doc)
        private = self.secrets.open(hub["_private"], aad=HUB_KEY).decode()
        prefix = addressing.parse_cidr(self.settings.tunnel_network).prefixlen
        await self.hub.up(private, f"{hub['address']}/{prefix}")
        for doc in docs:
            if doc.get("public_key"):
                peer, routes = self._peer(doc)
                await self.hub.set_gateway(peer, routes)

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
        return install.command(self.settings.public_url, secret, self.ca_fingerprint,
                               self.own_ca and not self.settings.tls_cert, rotate)

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
        gateway = self._gateway_agent(p.org_id, body["gateway_agent"]) if body.get("gateway_agent") else None
        tid = uuid.uuid4().hex
        cidrs, excluded = await asyncio.to_thread(self._check, p.org_id, tid, body.get("cidrs"),
                                                  body.get("excluded", []))
        await self.start_hub()
        hub = await asyncio.to_thread(self._hub_doc)
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
            await self._tell_up(doc)
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
            machine, agent = (self._gateway_agent(p.org_id, body["gateway_agent"])
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
            peer, routes = self._peer(new)
            await self.hub.set_gateway(peer, routes, drop=self._peer(doc)[1])
        if doc.get("public_key") and not new.get("public_key"):
            await self.hub.remove_gateway(doc["public_key"], self._peer(doc)[1])
        k = tunnel_key(p.org_id, doc["id"])
        change.put(k, dump(TUNNEL, new)).expect(k, raw)
        change.event("changed", "tunnel", doc["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        if old_agent and old_agent != new.get("gateway_agent"):
            await self._tell_down(old_agent, doc["id"])
        if new.get("gateway_agent") and (new["gateway_agent"] != old_agent or "cidrs" in change.details):
            await self._tell_up(new)
        return self.view(new)

    def in_use(self, org: str, doc: dict[str, Any]) -> list[str]:
        """Names of the organisation's machines with an address inside the tunnel's routes."""
        nets = [ipaddress.ip_network(n) for n in addressing.allowed_ips(doc["cidrs"], doc["excluded"])]
        found = []
        for _, v in self.store.scan(f"machine/{org}/"):
            m = load(MACHINE, v)
            for ip in [*m.get("public_ips", []), *m.get("private_ips", [])]:
                try:
                    a = ipaddress.ip_address(str(ip).split("/")[0])
                except ValueError:
                    continue
                if any(a in n for n in nets):
                    found.append(m.get("name") or m.get("id", ""))
                    break
        return found

    async def delete(self, p: Principal, actor: Actor, ref: str, force: bool) -> None:
        """Delete a tunnel: its peer and routes leave the hub. Conflict when machines of the
        organisation have addresses inside it, unless ``force``."""
        doc, raw = self._load(p, ref)
        users = await asyncio.to_thread(self.in_use, p.org_id, doc)
        if users and not force:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise Conflict(f"tunnel {doc['name']!r} is in use: machines {shown} are reached "
                           "through it; delete them first, or delete with force=true (they "
                           "become unreachable)", {"machines": users[:100]})
        peer_key = doc.get("public_key") or None
        await self.hub.remove_gateway(peer_key, addressing.allowed_ips(doc["cidrs"], doc["excluded"]))
        k = tunnel_key(p.org_id, doc["id"])
        change = Change("tunnel.delete", org=p.org_id, target_kind="tunnel", target_id=doc["id"],
                        details={"name": doc["name"], "cidrs": doc["cidrs"], "force": force,
                                 "machines": users[:100]})
        change.delete(k).expect(k, raw)
        if doc.get("_token_hash"):
            change.delete(f"tunnelhash/{doc['_token_hash']}")
        change.event("deleted", "tunnel", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)
        self._states.pop(doc["id"], None)
        if doc.get("gateway_agent"):
            await self._tell_down(doc["gateway_agent"], doc["id"])

    def rotate(self, p: Principal, actor: Actor, ref: str) -> dict[str, Any]:
        """A new one-use token whose install command (``--rotate``) makes the gateway a new
        key; the hub moves the tunnel to it when it registers. Raises NotFound."""
        doc, raw = self._load(p, ref)
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
        routes = await self._set_key(doc, raw, public_key, Actor(kind="anonymous", ip=ip, via="rest", org=org),
                                     {"ip": ip}, hash_key(secret))
        if doc.get("gateway_agent"):  # the install script took over from the agent
            await self._tell_down(doc["gateway_agent"], doc["id"])
        hub = await asyncio.to_thread(self._hub_doc)
        hub_ip = ipaddress.ip_address(hub["address"])
        return {"tunnel_id": doc["id"], "name": doc["name"], "address": doc["address"],
                "hub_public_key": hub["public_key"],
                "hub_endpoint": self.settings.tunnel_public_endpoint,
                "hub_address": str(hub_ip), "allowed_ips": f"{hub_ip}/{hub_ip.max_prefixlen}",
                "cidrs": " ".join(routes), "keepalive": str(KEEPALIVE)}

    async def _set_key(self, doc: dict[str, Any], raw: bytes, public_key: str, actor: Actor,
                       details: dict[str, Any], spent: str = "") -> list[str]:
        """Record ``public_key`` as the tunnel's gateway: the hub gets the peer FIRST, then
        the store (audited ``tunnel.register``); a previous key leaves the hub. Returns the
        tunnel's routes. Raises TunnelsUnavailable."""
        await self.start_hub()
        org = doc["org"]
        old = doc.get("public_key") or ""
        new = dict(doc, public_key=public_key, registered=iso(), _token_hash="",
                   _token_expires_at=0, _token_rotate=False)
        if "gateway_error" in doc:
            new["gateway_error"] = ""
        if spent and doc.get("gateway_agent"):  # the install script takes over from the agent
            new.update(gateway_machine="", gateway_agent="")
        peer, routes = self._peer(new)
        await self.hub.set_gateway(peer, routes)
        if old and old != public_key:
            await self.hub.remove_peer(old)
            self._stats.pop(old, None)
        k = tunnel_key(org, doc["id"])
        change = Change("tunnel.register", org=org, target_kind="tunnel", target_id=doc["id"],
                        details={"name": doc["name"], "public_key": public_key, **details,
                                 "rotated": bool(old)})
        change.put(k, dump(TUNNEL, new)).expect(k, raw)
        if spent:
            change.delete(spent)
        elif doc.get("_token_hash"):  # an agent took over: the install command's token goes
            change.delete(f"tunnelhash/{doc['_token_hash']}")
        change.event("changed", "tunnel", doc["id"], {"name": doc["name"], "registered": True})
        self.writer.commit(actor, change)
        return routes

    # ---- agents as gateways ----------------------------------------------------------------
    def _gateway_agent(self, org: str, ref: Any) -> tuple[str, str]:
        """(machine id, agent id) of machine ``ref`` (id or name) of ``org`` with an agent.
        NotFound when there is none (or it has no agent); Invalid (422) when its agent is
        not connected."""
        ref = str(ref)
        raw = self.store.get(machine_key(org, ref)) if ref and "/" not in ref else None
        m = load(MACHINE, raw) if raw is not None else None
        if m is None:
            for _, v in self.store.scan(f"machine/{org}/"):
                d = load(MACHINE, v)
                if d.get("name") == ref and d.get("agent"):
                    m = d
                    break
        if m is None or not m.get("agent"):
            raise NotFound("no machine with an Overcast agent of that id or name",
                           {"gateway_agent": ref[:100]})
        agent = str(m["agent"])
        if self.agentlink is None or not self.agentlink.connected(agent):
            raise Invalid(f"the agent of machine {m.get('name') or m['id']!r} is not connected: "
                          "it must be, to be told to bring the tunnel up", field="gateway_agent")
        return str(m["id"]), agent

    async def _tell_up(self, doc: dict[str, Any]) -> None:
        """Send the tunnel's TunnelUp to its gateway agent (it answers TunnelStatus)."""
        await self.start_hub()
        hub = await asyncio.to_thread(self._hub_doc)
        try:
            assert self.agentlink is not None
            await self.agentlink.tunnel_up(
                doc["gateway_agent"], tunnel_id=doc["id"], interface=f"oc-{doc['id'][:8]}",
                address=doc["address"], hub_public_key=hub["public_key"],
                hub_endpoint=self.settings.tunnel_public_endpoint,
                hub_address=str(hub["address"]),
                cidrs=addressing.allowed_ips(doc["cidrs"], doc["excluded"]), keepalive=KEEPALIVE)
        except Exception as exc:  # noqa: BLE001 - it is told again when it reports
            log.warning("tunnel %s: TunnelUp not sent to agent %s: %s", doc["id"],
                        doc["gateway_agent"], exc)

    async def _tell_down(self, agent_id: str, tunnel_id: str) -> None:
        """Send TunnelDown; an agent that is not connected hears it when it next reports
        the tunnel (gateway_status)."""
        if self.agentlink is None:
            return
        try:
            await self.agentlink.tunnel_down(agent_id, tunnel_id)
        except Exception as exc:  # noqa: BLE001
            log.info("tunnel %s: TunnelDown not sent to agent %s (%s): sent when it reports",
                     tunnel_id, agent_id, exc)

    def _by_id(self, tunnel_id: str) -> tuple[dict[str, Any], bytes] | None:
        for _, v in self.store.scan("tunnel/"):
            d = load(TUNNEL, v)
            if d["id"] == tunnel_id:
                return d, v
        return None

    async def gateway_status(self, agent_id: str, status: dict[str, Any]) -> None:
        """A TunnelStatus from agent ``agent_id`` (its fields: tunnel_id, public_key, error,
        up): its public key is registered (as the install script's would be, audited with
        the agent as actor), or its error kept for the tunnel's view; a tunnel it is not (or
        no longer) the gateway of is taken down."""
        st = SimpleNamespace(**status)
        found = await asyncio.to_thread(self._by_id, st.tunnel_id) if st.tunnel_id else None
        if found is None or found[0].get("gateway_agent") != agent_id:
            await self._tell_down(agent_id, st.tunnel_id)
            return
        doc, raw = found
        org = doc["org"]
        actor = Actor(kind="agent", id=agent_id, via="agent", org=org)
        if st.error:
            if doc.get("gateway_error") != st.error:
                k = tunnel_key(org, doc["id"])
                change = Change("tunnel.gateway", org=org, target_kind="tunnel",
                                target_id=doc["id"], outcome="failed",
                                details={"name": doc["name"], "agent": agent_id, "error": st.error})
                change.put(k, dump(TUNNEL, dict(doc, gateway_error=st.error))).expect(k, raw)
                change.event("changed", "tunnel", doc["id"], {"name": doc["name"]})
                self.writer.commit(actor, change)
            return
        if st.public_key and st.public_key != doc.get("public_key"):
            if not keys.is_key(st.public_key):
                log.warning("agent %s sent a bad public key for tunnel %s", agent_id, doc["id"])
                return
            await self._set_key(doc, raw, st.public_key, actor,
                                {"agent": agent_id, "machine": doc.get("gateway_machine", "")})

    # ---- health ----------------------------------------------------------------------------
    async def watch_once(self) -> None:
        """Read the hub's peers once; audit and publish each tunnel's change of state
        (``tunnel.up``, ``tunnel.down``). Raises what the interface raises."""
        self._stats = await self.hub.peers()
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
