"""Accounts, the part every account service shares: settings, store, writer, password
hashing, the reads of users, organisations and memberships, and refusals."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

from argon2 import PasswordHasher

from controller.accounts.model import (
    EMAIL_RE,
    MEMBER,
    ORG,
    ORG_NAME_RE,
    USER,
)
from controller.accounts.throttle import LoginThrottle
from controller.audit.limit import AuditLimiter
from controller.errors import Conflict, Forbidden, Invalid
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load
from controller.timeutil import iso, parse_iso

TOKEN_PREFIX = "oc_"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_LAST_USED_EVERY = 60.0  # seconds between last_used writes for one credential
MAX_TTL = 10 * 365 * 24 * 3600  # 315360000 s: no token lives longer (nor can its expiry be written)
NOT_AN_EMAIL = "(not an e-mail address)"
# audit entries of refused credentials and throttled logins, per (action, org, address)
AUDIT_UNAUTHENTICATED_PER_MINUTE = 20


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


def loggable_email(value: str) -> str:
    """What the audit log may keep of a login's e-mail field: the address when it is one, a
    placeholder otherwise (a password typed into the wrong field must not be kept in clear)."""
    v = value.strip().lower()
    return v if len(v) <= 254 and EMAIL_RE.match(v) else NOT_AN_EMAIL


def _added_at(m: dict[str, Any]) -> float:
    """When a membership began, as precisely as it was recorded."""
    if "_added_at" in m:
        return float(m["_added_at"])
    try:
        return parse_iso(str(m.get("added", "")))
    except ValueError:
        return 0.0


class AccountBase:
    def __init__(self, settings: Settings, store: Store, writer: Writer) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.hasher = PasswordHasher()
        self.throttle = LoginThrottle(settings.login_max_failures, settings.login_lockout)
        self.audit_limit = AuditLimiter(AUDIT_UNAUTHENTICATED_PER_MINUTE, 60.0)
        self._last_used: dict[str, float] = {}
        # a fixed hash to verify against for unknown e-mails, so timing does not tell
        self._dummy_hash = self.hasher.hash(secrets.token_hex(16))

    # ---- reads -------------------------------------------------------------------------
    def _doc(self, kind: Any, key: str) -> dict[str, Any] | None:
        raw = self.store.get(key)
        return None if raw is None else load(kind, raw)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        return self._doc(USER, f"user/{user_id}")

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        uid = self.store.get(f"useremail/{email.strip().lower()}")
        return None if uid is None else self.get_user(uid.decode())

    def get_org(self, org_id: str) -> dict[str, Any] | None:
        return self._doc(ORG, f"org/{org_id}")

    def membership(self, org_id: str, user_id: str) -> dict[str, Any] | None:
        return self._doc(MEMBER, f"member/{org_id}/{user_id}")

    def user_org_ids(self, user_id: str) -> list[str]:
        return [k.rsplit("/", 1)[1] for k, _ in self.store.scan(f"usermember/{user_id}/", keys_only=True)]

    def _new_org(self, change: Change, name: str, creator: str, description: str = "") -> dict[str, Any]:
        if not ORG_NAME_RE.match(name):
            raise Invalid("organisation names are 1-63 letters, digits, spaces or .@'_-", field="name")
        org = {"id": new_id(), "name": name, "description": description,
               "created": iso(), "created_by": creator}
        key = f"orgname/{name.lower()}"
        change.put(f"org/{org['id']}", dump(ORG, org)).put(key, org["id"].encode()).expect(key, None)
        if self.store.get(key) is not None:
            raise Conflict("an organisation with that name exists", {"field": "name"})
        change.event("created", "org", org["id"], {"name": name})
        return org

    def _put_member(self, change: Change, org_id: str, user_id: str, role: str) -> None:
        now = time.time()
        m = {"org": org_id, "user": user_id, "role": role, "added": iso(now), "_added_at": now}
        change.put(f"member/{org_id}/{user_id}", dump(MEMBER, m))
        change.put(f"usermember/{user_id}/{org_id}", role.encode())

    def _role(self, org_id: str, user_id: str) -> str:
        raw = self.store.get(f"usermember/{user_id}/{org_id}")
        return raw.decode() if raw else ""


    def refuse(self, actor: Actor, action: str, message: str, org: str = "", target_kind: str = "",
               target_id: str = "") -> Forbidden:
        """A change refused for the caller's role is an audit entry; returns the error to raise."""
        self.writer.commit(actor, Change(action, org=org, outcome="denied", target_kind=target_kind,
                                         target_id=target_id, details={"reason": message}))
        return Forbidden(message)

