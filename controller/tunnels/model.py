"""Tunnel documents, the hub's key, gateway tokens, and a tunnel's health in words.

    tunnel/<org>/<id>      {id, org, name, cidrs, excluded, address (the gateway's tunnel
                            address), public_key (the gateway's; "" until it registers),
                            registered, created, created_by, _token_hash, _token_expires_at,
                            _token_rotate}
    tunnelhub              {public_key, address, _private (sealed), created}
    tunnelhash/<sha256>    "<org>/<id>": the one-use gateway token of a tunnel, hashed

The gateway token is one-use and short-lived (``TOKEN_TTL``): registering deletes its hash in
the same batch that records the gateway's key."""

from __future__ import annotations

import hashlib
import time

from controller.errors import ProviderUnavailable
from controller.store.docs import DocKind
from tunnel.config import PeerStats

TUNNEL = DocKind("tunnel")
HUB = DocKind("tunnelhub")
KINDS = (TUNNEL, HUB)

HUB_KEY = "tunnelhub"
TOKEN_PREFIX = "oct_"
TOKEN_TTL = 3600  # seconds a gateway token is good for
KEEPALIVE = 25  # seconds: the gateway's persistent keepalive (it dials out through NAT)
# WireGuard rekeys every 2 minutes while traffic (the keepalive) flows and gives up on a
# session after REJECT_AFTER_TIME (180 s): a handshake older than that means the gateway is gone
UP_WITHIN = 180.0
MAX_CIDRS = 64


class TunnelsUnavailable(ProviderUnavailable):
    """This controller cannot run WireGuard interfaces (not root, or no WireGuard)."""

    code = "tunnels_unavailable"


def tunnel_key(org: str, tunnel_id: str) -> str:
    return f"tunnel/{org}/{tunnel_id}"


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_key(secret: str) -> str:
    return f"tunnelhash/{token_hash(secret)}"


def health(registered: bool, stats: PeerStats | None, now: float | None = None) -> dict[str, object]:
    """``{state, last_handshake, rx_bytes, tx_bytes}`` of a tunnel: ``waiting`` until its
    gateway registered and completed a first handshake, ``up`` while the latest handshake is
    younger than ``UP_WITHIN`` seconds, ``down`` after."""
    now = time.time() if now is None else now
    if not registered or stats is None or stats.last_handshake is None:
        return {"state": "waiting", "last_handshake": None,
                "rx_bytes": stats.rx_bytes if stats else 0, "tx_bytes": stats.tx_bytes if stats else 0}
    state = "up" if now - stats.last_handshake <= UP_WITHIN else "down"
    return {"state": state, "last_handshake": stats.last_handshake,
            "rx_bytes": stats.rx_bytes, "tx_bytes": stats.tx_bytes}
