"""Account documents as the service hands them around."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from controller.events.model import Actor
from controller.store.docs import DocKind

USER = DocKind("user")
ORG = DocKind("org")
MEMBER = DocKind("member")
SESSION = DocKind("session")
TOKEN = DocKind("token")
# a pending invitation to an organisation (``invite/<org>/<user>``): grants nothing until the
# invited user accepts it
INVITE = DocKind("invite")
KINDS = (USER, ORG, MEMBER, SESSION, TOKEN, INVITE)

ROLES = ("owner", "member")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{1,63}$|^[^@\s]{1,64}@localhost$")
ORG_NAME_RE = re.compile(r"^[\w][\w .@'-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller in its active organisation."""

    user: dict[str, Any]
    org: dict[str, Any] | None
    role: str  # the role in ``org``: owner or member ("" without an org)
    auth: str  # session or token
    credential_id: str  # the session's or token's id
    csrf: str = ""  # sessions only

    @property
    def user_id(self) -> str:
        return str(self.user["id"])

    @property
    def org_id(self) -> str:
        return str(self.org["id"]) if self.org else ""

    @property
    def is_admin(self) -> bool:
        return bool(self.user.get("is_admin"))

    def actor(self, ip: str = "", via: str = "") -> Actor:
        return Actor(
            kind="token" if self.auth == "token" else "user",
            id=self.user_id,
            email=str(self.user.get("email", "")),
            org=self.org_id,
            ip=ip,
            via=via,
            token_id=self.credential_id if self.auth == "token" else "",
        )
