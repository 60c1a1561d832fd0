"""Overcast agents as tunnel gateways: which machine's agent a tunnel names, TunnelUp and
TunnelDown down its stream (through ``AgentLink``), its TunnelStatus answers (the key it made
registered as the install script's would be, its error kept for the tunnel's view), and key
rotation over the stream.

Rotation is two steps, so that the tunnel is lost for about one handshake: TunnelUp with
``rotate`` makes the agent a new key pair (the old private key is forgotten) and report the
public half while its interface still runs the old one; the hub swaps the peer's key
(``HubPeers.set_key``), and a TunnelUp without ``rotate`` then tells the agent to switch and
dial. A status with the registered key but not up (the second message was lost, or bringing
the tunnel up again failed) is answered with TunnelUp again.

Never imports aiohttp. Coroutines block their caller for the stream writes (bounded by
AgentLink's write timeout) and the hub's calls. Raises NotFound, Invalid, ProviderUnavailable
as documented per method."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from controller.errors import Invalid, NotFound, ProviderUnavailable
from controller.events.model import Actor
from controller.events.writer import Change
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.store.docs import dump, load
from controller.tunnels.model import KEEPALIVE, TUNNEL, tunnel_key
from controller.tunnels.peers import HubPeers
from tunnel import addressing, keys

if TYPE_CHECKING:
    from controller.exec.agentlink import AgentLink

log = logging.getLogger(__name__)


class AgentGateways:
    """Agents as the gateways of tunnels, over ``link`` once ``attach`` gave it."""

    def __init__(self, peers: HubPeers) -> None:
        self.peers = peers
        self.store = peers.store
        self.writer = peers.writer
        self.link: AgentLink | None = None
        # tunnels whose TunnelUp could not be sent: sent again when their agent next reports
        self._untold: set[str] = set()

    def attach(self, link: AgentLink) -> None:
        """TunnelUp/TunnelDown go down the agents' streams through ``link``, and their
        TunnelStatus messages come to ``status``."""
        self.link = link
        link.handlers["tunnel_status"] = self.status

    def connected(self, agent_id: str) -> bool:
        return self.link is not None and self.link.connected(agent_id)

    def resolve(self, org: str, ref: Any) -> tuple[str, str]:
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
        if not self.connected(agent):
            raise Invalid(f"the agent of machine {m.get('name') or m['id']!r} is not connected: "
                          "it must be, to be told to bring the tunnel up", field="gateway_agent")
        return str(m["id"]), agent

    # ---- telling the agent -----------------------------------------------------------------
    async def _send_up(self, doc: dict[str, Any], rotate: bool) -> None:
        """TunnelUp for ``doc`` to its agent. Raises what AgentLink.write raises."""
        await self.peers.start()
        hub = await asyncio.to_thread(self.peers.hub_doc)
        fields: dict[str, Any] = dict(
            tunnel_id=doc["id"], interface=f"oc-{doc['id'][:8]}", address=doc["address"],
            hub_public_key=hub["public_key"], hub_endpoint=self.peers.settings.tunnel_public_endpoint,
            hub_address=str(hub["address"]),
            cidrs=addressing.allowed_ips(doc["cidrs"], doc["excluded"]), keepalive=KEEPALIVE)
        assert self.link is not None
        await self.link.tunnel_up(doc["gateway_agent"], **fields, rotate=rotate)

    async def tell_up(self, doc: dict[str, Any]) -> None:
        """Send the tunnel's TunnelUp to its gateway agent (it answers TunnelStatus); when
        that fails it is sent again when the agent next reports (logged)."""
        try:
            await self._send_up(doc, rotate=False)
            self._untold.discard(doc["id"])
        except Exception as exc:  # noqa: BLE001 - it is told again when it reports
            self._untold.add(doc["id"])
            log.warning("tunnel %s: TunnelUp not sent to agent %s: %s", doc["id"],
                        doc["gateway_agent"], exc)

    async def tell_down(self, agent_id: str, tunnel_id: str) -> None:
        """Send TunnelDown; an agent that is not connected hears it when it next reports
        the tunnel (``status``)."""
        self._untold.discard(tunnel_id)
        if self.link is None:
            return
        try:
            await self.link.tunnel_down(agent_id, tunnel_id)
        except Exception as exc:  # noqa: BLE001
            log.info("tunnel %s: TunnelDown not sent to agent %s (%s): sent when it reports",
                     tunnel_id, agent_id, exc)

    async def rotate(self, actor: Actor, doc: dict[str, Any]) -> None:
        """Ask the tunnel's agent for a new key (TunnelUp with rotate), audited
        ``tunnel.rotate``; the hub moves to the key when it arrives (``status``). Invalid
        (422) when the agent is not connected; ProviderUnavailable when its stream fails
        (audited as failed)."""
        agent = doc["gateway_agent"]
        if not self.connected(agent):
            raise Invalid(f"the agent of machine {doc.get('gateway_machine') or agent!r} is not "
                          "connected: it makes the new key, so it must be; try again when it is",
                          field="gateway_agent")
        change = Change("tunnel.rotate", org=doc["org"], target_kind="tunnel", target_id=doc["id"],
                        details={"name": doc["name"], "agent": agent,
                                 "machine": doc.get("gateway_machine", "")})
        try:
            await self._send_up(doc, rotate=True)
        except Exception as exc:  # noqa: BLE001 - said in the answer and the audit
            change.outcome = "failed"
            change.details["error"] = str(exc) or type(exc).__name__
            self.writer.commit(actor, change)
            raise ProviderUnavailable(f"the agent of machine {doc.get('gateway_machine') or agent!r} "
                                      f"could not be asked for a new key: {exc}") from None
        change.event("changed", "tunnel", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)

    # ---- what the agent answers ------------------------------------------------------------
    async def status(self, agent_id: str, status: dict[str, Any]) -> None:
        """A TunnelStatus from agent ``agent_id`` (its fields: tunnel_id, public_key, error,
        up): a new public key is registered (as the install script's would be, audited with
        the agent as actor) and, when it replaces a key and the agent does not use it yet (a
        rotation), the agent is told to switch to it; an error is kept for the tunnel's view;
        a tunnel it is not (or no longer) the gateway of is taken down."""
        st = SimpleNamespace(**status)
        found = await asyncio.to_thread(self.peers.by_id, st.tunnel_id) if st.tunnel_id else None
        if found is None or found[0].get("gateway_agent") != agent_id:
            await self.tell_down(agent_id, st.tunnel_id)
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
            await self.peers.set_key(doc, raw, st.public_key, actor,
                                     {"agent": agent_id, "machine": doc.get("gateway_machine", "")})
            if doc.get("public_key") and not st.up:
                log.info("tunnel %s: the hub has agent %s's new key; telling it to switch",
                         doc["id"], agent_id)
                await self.tell_up(doc)
            elif doc["id"] in self._untold:
                await self.tell_up(doc)
            return
        if (st.public_key and not st.up) or doc["id"] in self._untold:
            # it runs the tunnel with another key than the hub's (the word to switch was
            # lost), or not at all, or it missed a change: tell it again
            await self.tell_up(doc)
