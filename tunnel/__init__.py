"""WireGuard tunnels to private networks (the tunnels issue): keys, addresses, configuration
text, and the interfaces themselves behind one interface with two backends.

Used by the controller (the hub: one interface, one peer per tunnel's gateway, routes to
the tunnels' CIDRs) and by agents that act as gateways. Never imports gRPC or the
controller (tests/test_boundaries.py).

Modules (the contract the controller codes against):

- ``tunnel.keys``: ``generate_private() -> str`` (base64, as ``wg`` shows keys),
  ``public_of(private: str) -> str``, ``to_hex(key: str) -> str`` (the UAPI's form),
  ``is_key(text: str) -> bool``.
- ``tunnel.addressing``: ``parse_cidr(text)`` (ValueError in words), ``check_routes(cidrs,
  excluded=(), taken=None, local=())`` (ValueError naming the overlap: with another
  tunnel's CIDRs — ``taken`` maps tunnel names to theirs —, with the controller's own
  ``local`` networks; default routes, loopback, link-local and multicast refused; excluded
  CIDRs must lie inside), ``allowed_ips(cidrs, excluded) -> list[str]`` (the CIDRs minus the
  exclusions, as WireGuard allowed-ips), ``allocate(pool, used) -> str`` (the next free host
  address of ``pool`` not in ``used``; ValueError when full), ``ipv6_twin(address,
  hub_public_key)`` and ``ipv6_twin_network(hub_public_key)`` (the hub's IPv6 source for
  IPv6 CIDRs, derived by the hub and every gateway alike).
- ``tunnel.config``: ``Peer``, ``PeerStats``, ``TunnelError``, ``gateway_config(...) -> str``
  (wg-quick style text for a gateway, without its private key, which the gateway makes
  itself), the UAPI and ``wg`` renderings.
- ``tunnel.backend``: ``Interface`` (Protocol: ``up()``, ``configure(private_key,
  listen_port)``, ``set_address(*cidrs)``, ``set_peer(Peer)``, ``remove_peer(public_key)``,
  ``add_route``/``remove_route``, ``peers() -> dict[str, PeerStats]``, ``down()``; blocking,
  thread-safe; ``AsyncInterface`` wraps it for asyncio), ``choose(name, netns=None)``: the
  kernel backend (``tunnel.kernel``: ``ip link ... type wireguard`` and ``wg``, the private
  key on stdin) where the module is present, else wireguard-go (``tunnel.wggo``: driven
  through its UAPI socket, supervised by a thread that restarts it and re-applies the whole
  configuration).
"""
