"""The hub's side of the store: its key pair and address (made once, the private key sealed),
its peers and routes in step with the tunnels stored, and the one way a gateway's key is
recorded (the hub gets the peer first, then the store, audited).

Never imports aiohttp. Coroutines that touch the hub block their caller for the interface's
calls (milliseconds; seconds when the hub first comes up) and raise TunnelsUnavailable."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from controller.events.model import SYSTEM, Actor
from controller.events.writer import Change, Writer
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load
from controller.timeutil import iso
from controller.tunnels.hub import Hub
from controller.tunnels.model import HUB, HUB_KEY, TUNNEL, tunnel_key
from tunnel import addressing, keys
from tunnel.backend import Peer, PeerStats


class HubPeers:
    """The hub and the tunnels' gateways as its peers. ``stats`` is the latest look at the
    peers (the health watcher refreshes it)."""

    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets_: SecretBox,
                 hub: Hub) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets_
        self.hub = hub
        self.stats: dict[str, PeerStats] = {}

    # ---- tunnels in the store (blocking: call from a thread in async code) ------------------
    def all(self) -> list[dict[str, Any]]:
        """Every tunnel of every organisation."""
        return [load(TUNNEL, v) for _, v in self.store.scan("tunnel/")]

    def by_id(self, tunnel_id: str) -> tuple[dict[str, Any], bytes] | None:
        """The tunnel ``tunnel_id`` of any organisation and its stored bytes, or None."""
        for _, v in self.store.scan("tunnel/"):
            d = load(TUNNEL, v)
            if d["id"] == tunnel_id:
                return d, v
        return None

    # ---- the hub's own key and addresses ---------------------------------------------------
    def hub_doc(self) -> dict[str, Any]:
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

    def twin_network(self) -> str:
        """The /96 of the hub's IPv6 twin (tunnel.addressing), "" before the hub has a key.
        No tunnel may route it. Writes nothing."""
        raw = self.store.get(HUB_KEY)
        return addressing.ipv6_twin_network(load(HUB, raw)["public_key"]) if raw is not None else ""

    def hub_endpoints(self) -> tuple[str, str]:
        """(controller URL, agents' gRPC host:port) at the hub address."""
        a = self.hub_address()
        host = f"[{a}]" if ":" in a else a
        return f"https://{host}:{self.settings.http_port}", f"{host}:{self.settings.agents_port}"

    # ---- peers -----------------------------------------------------------------------------
    @staticmethod
    def peer_of(doc: dict[str, Any]) -> tuple[Peer, list[str]]:
        """The hub's peer for a registered tunnel and the routes through it."""
        routes = addressing.allowed_ips(doc["cidrs"], doc["excluded"])
        gw = ipaddress.ip_interface(doc["address"]).ip
        return Peer(doc["public_key"], [f"{gw}/{gw.max_prefixlen}", *routes]), routes

    async def start(self, only_if_tunnels: bool = False) -> None:
        """Bring the hub up with every registered gateway's peer and routes. Nothing when it
        is up (or, with ``only_if_tunnels``, when there are no tunnels). Raises
        TunnelsUnavailable."""
        if self.hub.is_up:
            return
        docs = await asyncio.to_thread(self.all)
        if only_if_tunnels and not docs:
            return
        hub = await asyncio.to_thread(self.hub_doc)
        private = self.secrets.open(hub["_private"], aad=HUB_KEY).decode()
        prefix = addressing.parse_cidr(self.settings.tunnel_network).prefixlen
        twin = addressing.ipv6_twin(hub["address"], hub["public_key"])
        twin_cidr = f"{twin}/{addressing.TWIN_PREFIXLEN}" if twin != hub["address"] else ""
        await self.hub.up(private, f"{hub['address']}/{prefix}", twin_cidr)
        for doc in docs:
            if doc.get("public_key"):
                peer, routes = self.peer_of(doc)
                await self.hub.set_gateway(peer, routes)

    async def set_key(self, doc: dict[str, Any], raw: bytes, public_key: str, actor: Actor,
                      details: dict[str, Any], spent: str = "") -> list[str]:
        """Record ``public_key`` as the tunnel's gateway: the hub gets the peer FIRST, then
        the store (audited ``tunnel.register``); a previous key leaves the hub. ``spent`` is
        the hash key of the install script's token (the script takes over from an agent).
        Returns the tunnel's routes. Raises TunnelsUnavailable."""
        await self.start()
        org = doc["org"]
        old = doc.get("public_key") or ""
        new = dict(doc, public_key=public_key, registered=iso(), _token_hash="",
                   _token_expires_at=0, _token_rotate=False)
        if "gateway_error" in doc:
            new["gateway_error"] = ""
        if spent and doc.get("gateway_agent"):  # the install script takes over from the agent
            new.update(gateway_machine="", gateway_agent="")
        peer, routes = self.peer_of(new)
        # the new peer takes the routes and allowed IPs from the old one at once: from here
        # the tunnel is down until the gateway dials with its new key
        await self.hub.set_gateway(peer, routes)
        if old and old != public_key:
            await self.hub.remove_peer(old)
            self.stats.pop(old, None)
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
