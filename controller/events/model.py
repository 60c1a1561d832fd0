"""Who acts, and what the live event stream carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Actor:
    """Who did something, from where. ``kind``: user, token, agent, system or anonymous."""

    kind: str
    id: str = ""
    email: str = ""
    org: str = ""
    ip: str = ""
    via: str = ""  # rest, grpc, ws, admin, system
    token_id: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


SYSTEM = Actor(kind="system", via="system")


@dataclass(frozen=True)
class Event:
    """A live event for one organisation (``org`` empty: platform-wide, admins only).

    ``type``: created, changed, deleted, progress or audit."""

    type: str
    kind: str
    id: str
    org: str
    time: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
