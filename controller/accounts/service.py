"""Account logic: users and passwords, organisations and members, sessions, API tokens.

Never imports aiohttp or grpc. Blocking work (argon2) runs in a thread. Every change goes
through :class:`controller.events.writer.Writer`, so it is audited and published."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import defaultdict, deque
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from controller.accounts.model import (
    EMAIL_RE,
    MEMBER,
    ORG,
    ORG_NAME_RE,
    ROLES,
    SESSION,
    TOKEN,
    USER,
    Principal,
)
from controller.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, Unauthenticated
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import dump, load, public
from controller.timeutil import iso

TOKEN_PREFIX = "oc_"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_LAST_USED_EVERY = 60.0  # seconds between last_used writes for one credential


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


class LoginThrottle:
    """Failed logins per e-mail and per address within ``window`` seconds; past ``limit``,
    further attempts are refused until the oldest failure leaves the window."""

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = defaultdict(deque)

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            q = self._fails.get(key)
            if not q:
                continue
            while q and now - q[0] > self.window:
                q.popleft()
            if len(q) >= self.limit:
                retry = int(self.window - (now - q[0])) + 1
                raise RateLimited(f"too many failed logins; try again in {retry} s", retry)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._fails[key].append(now)
        if len(self._fails) > 100_000:  # bound memory under a spray of addresses
            for k in [k for k, q in self._fails.items() if not q or now - q[-1] > self.window]:
                del self._fails[k]

    def succeed(self, key: str) -> None:
        self._fails.pop(key, None)


class AccountService:
    def __init__(self, settings: Settings, store: Store, writer: Writer) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.hasher = PasswordHasher()
        self.throttle = LoginThrottle(settings.login_max_failures, settings.login_lockout)
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

    # ---- users -------------------------------------------------------------------------
    def _check_password(self, password: str) -> None:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise Invalid(f"password must have at least {MIN_PASSWORD} characters", field="password")
        if len(password) > MAX_PASSWORD:
            raise Invalid(f"password must have at most {MAX_PASSWORD} characters", field="password")

    async def create_user(
        self,
        actor: Actor,
        email: str,
        password: str,
        *,
        is_admin: bool = False,
        org_name: str | None = None,
        first_name: str = "",
        last_name: str = "",
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Create a user and make them owner of ``org_name`` (created when new; default: a
        personal organisation named after the e-mail). Returns (user, org)."""
        email = email.strip().lower()
        if not EMAIL_RE.match(email):
            raise Invalid("not a valid e-mail address", field="email")
        self._check_password(password)
        if self.store.get(f"useremail/{email}") is not None:
            raise Conflict("a user with that e-mail exists", {"field": "email"})
        pw_hash = await asyncio.to_thread(self.hasher.hash, password)
        user: dict[str, Any] = {
            "id": new_id(), "email": email, "username": email.split("@")[0],
            "first_name": first_name, "last_name": last_name, "is_admin": bool(is_admin),
            "registration_date": iso(), "last_login": "", "_pw": pw_hash,
        }
        change = Change("user.create", target_kind="user", target_id=user["id"],
                        details={"email": email, "is_admin": bool(is_admin)})
        change.put(f"user/{user['id']}", dump(USER, user))
        change.put(f"useremail/{email}", user["id"].encode()).expect(f"useremail/{email}", None)
        name = (org_name or email.split("@")[0]).strip()
        org_id = self.store.get(f"orgname/{name.lower()}")
        if org_id is not None:
            org = self.get_org(org_id.decode())
            assert org is not None
            role = "member"
        else:
            org = self._new_org(change, name, user["id"])
            role = "owner"
        change.org = org["id"]
        change.details["org"] = org["name"]
        self._put_member(change, org["id"], user["id"], role)
        change.event("created", "user", user["id"], {"email": email})
        self.writer.commit(actor, change)
        return public(user), org

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
        m = {"org": org_id, "user": user_id, "role": role, "added": iso()}
        change.put(f"member/{org_id}/{user_id}", dump(MEMBER, m))
        change.put(f"usermember/{user_id}/{org_id}", role.encode())

    def list_users(self, p: Principal) -> list[dict[str, Any]]:
        if not p.is_admin:
            return [self._user_view(p.user)]
        return [self._user_view(load(USER, v)) for _, v in self.store.scan("user/")]

    @staticmethod
    def _user_view(user: dict[str, Any]) -> dict[str, Any]:
        return public(user)

    # ---- passwords and sessions --------------------------------------------------------
    async def login(self, ip: str, email: str, password: str, org: str | None = None,
                    user_agent: str = "", via: str = "rest") -> tuple[str, Principal]:
        """Check the password and open a session; returns (cookie secret, principal).
        Failures are audited and throttled per e-mail and per address."""
        email_l = str(email).strip().lower()
        anon = Actor(kind="anonymous", email=email_l[:254], ip=ip, via=via)
        try:
            self.throttle.check("e:" + email_l, "ip:" + ip)
        except RateLimited:
            self.writer.commit(anon, Change("session.create", outcome="denied", target_kind="user",
                                            details={"reason": "too many failed logins"}))
            raise
        user = self.user_by_email(email_l)
        ok = await asyncio.to_thread(self._verify, user["_pw"] if user else None, password)
        if not ok or user is None or user.get("disabled"):
            self.throttle.fail("e:" + email_l, "ip:" + ip)
            self.writer.commit(anon, Change("session.create", outcome="denied",
                                            target_kind="user", target_id=user["id"] if user else "",
                                            details={"reason": "wrong e-mail or password"}))
            raise Unauthenticated("wrong e-mail or password")
        self.throttle.succeed("e:" + email_l)
        org_doc, role = self._pick_org(user, org)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        sess = {
            "id": new_id()[:16], "user": user["id"], "org": org_doc["id"] if org_doc else "",
            "csrf": secrets.token_urlsafe(24), "created": iso(now), "last_active": iso(now),
            "expires": iso(now + self.settings.session_ttl), "_expires_at": now + self.settings.session_ttl,
            "ip": ip, "user_agent": user_agent[:200],
        }
        user = dict(user, last_login=iso(now))
        h = _hash(secret)
        change = Change("session.create", org=sess["org"], target_kind="session", target_id=sess["id"])
        change.put(f"session/{h}", dump(SESSION, sess)).put(f"usersession/{user['id']}/{sess['id']}", h.encode())
        change.put(f"user/{user['id']}", dump(USER, user))
        actor = Actor(kind="user", id=user["id"], email=user["email"], org=sess["org"], ip=ip, via=via)
        self.writer.commit(actor, change)
        return secret, Principal(public(user), org_doc, role, "session", sess["id"], sess["csrf"])

    def _verify(self, pw_hash: str | None, password: str) -> bool:
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        try:
            return bool(self.hasher.verify(pw_hash or self._dummy_hash, password)) and pw_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    def _pick_org(self, user: dict[str, Any], wanted: str | None) -> tuple[dict[str, Any] | None, str]:
        org_ids = self.user_org_ids(user["id"])
        if wanted:
            for oid in org_ids:
                o = self.get_org(oid)
                if o and (o["id"] == wanted or o["name"].lower() == wanted.lower()):
                    return o, self._role(oid, user["id"])
            raise NotFound("no such organisation among yours", {"field": "org"})
        orgs = sorted((o for o in map(self.get_org, org_ids) if o), key=lambda o: o["name"].lower())
        if not orgs:
            return None, ""
        return orgs[0], self._role(orgs[0]["id"], user["id"])

    def _role(self, org_id: str, user_id: str) -> str:
        raw = self.store.get(f"usermember/{user_id}/{org_id}")
        return raw.decode() if raw else ""

    def resolve_session(self, secret: str) -> Principal:
        """The principal of a session cookie. Raises Unauthenticated."""
        sess = self._doc(SESSION, f"session/{_hash(secret)}") if secret else None
        if sess is None or sess["_expires_at"] < time.time():
            raise Unauthenticated("your session has ended; sign in again")
        return self._principal(sess["user"], sess["org"], "session", sess["id"], sess["csrf"])

    def _principal(self, user_id: str, org_id: str, auth: str, cred: str, csrf: str = "") -> Principal:
        user = self.get_user(user_id)
        if user is None or user.get("disabled"):
            raise Unauthenticated("the account no longer exists")
        org = self.get_org(org_id) if org_id else None
        role = self._role(org_id, user_id) if org else ""
        if org is not None and not role:
            raise Unauthenticated("you are no longer a member of this organisation")
        return Principal(public(user), org, role, auth, cred, csrf)

    def logout(self, p: Principal, actor: Actor, session_id: str | None = None) -> None:
        sid = session_id or p.credential_id
        raw = self.store.get(f"usersession/{p.user_id}/{sid}")
        if raw is None:
            raise NotFound("no such session")
        change = Change("session.delete", org=p.org_id, target_kind="session", target_id=sid)
        change.delete(f"session/{raw.decode()}").delete(f"usersession/{p.user_id}/{sid}")
        self.writer.commit(actor, change)

    def list_sessions(self, p: Principal) -> list[dict[str, Any]]:
        keys = [f"session/{v.decode()}" for _, v in self.store.scan(f"usersession/{p.user_id}/")]
        out = []
        now = time.time()
        for raw in self.store.get_many(keys):
            if raw is None:
                continue
            s = load(SESSION, raw)
            if s["_expires_at"] < now:
                continue
            view = {k: v for k, v in public(s).items() if k != "csrf"}
            view["current"] = p.auth == "session" and s["id"] == p.credential_id
            out.append(view)
        return out

    # ---- API tokens --------------------------------------------------------------------
    def create_token(self, p: Principal, actor: Actor, name: str, ttl: int | None) -> tuple[str, dict[str, Any]]:
        if not p.org:
            raise Invalid("you belong to no organisation; tokens act within one", field="org")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise Invalid("name must have 1 to 100 characters", field="name")
        max_ttl = self.settings.token_max_ttl
        if ttl is None:
            ttl = self.settings.token_ttl
        if ttl < 0 or (ttl == 0 and max_ttl > 0) or (max_ttl and ttl > max_ttl):
            raise Invalid(f"ttl must be 1 to {max_ttl} seconds", field="ttl")
        for _, raw in self.store.scan(f"token/{p.org_id}/"):
            t = load(TOKEN, raw)
            if t["user"] == p.user_id and t["name"] == name.strip() and not t.get("revoked"):
                raise Conflict("you have a token with that name", {"field": "name"})
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        tok = {
            "id": new_id()[:16], "name": name.strip(), "user": p.user_id, "org": p.org_id,
            "created": iso(now), "created_by": p.user["email"], "ttl": ttl,
            "expires": iso(now + ttl) if ttl else "", "_expires_at": now + ttl if ttl else 0,
            "last_used": "", "revoked": False, "prefix": secret[:7],
        }
        change = Change("token.create", org=p.org_id, target_kind="token", target_id=tok["id"],
                        details={"token_name": tok["name"], "ttl": ttl})
        change.put(f"token/{p.org_id}/{tok['id']}", dump(TOKEN, tok))
        change.put(f"tokenhash/{_hash(secret)}", f"{p.org_id}/{tok['id']}".encode())
        change.event("created", "token", tok["id"], {"name": tok["name"]})
        self.writer.commit(actor, change)
        return secret, public(tok)

    def resolve_token(self, secret: str) -> Principal:
        """The principal of an API token. Raises Unauthenticated with the reason."""
        ref = self.store.get(f"tokenhash/{_hash(secret)}") if secret else None
        if ref is None:
            raise Unauthenticated("the token is not valid")
        tok = self._doc(TOKEN, f"token/{ref.decode()}")
        if tok is None:
            raise Unauthenticated("the token was revoked")
        now = time.time()
        if tok.get("revoked") or (tok["_expires_at"] and tok["_expires_at"] < now):
            exc = Unauthenticated("the token was revoked" if tok.get("revoked") else "the token has expired")
            # kept off the response, for the audit entry: the token's organisation sees it
            exc.org, exc.credential_id, exc.user_id = tok["org"], tok["id"], tok["user"]  # type: ignore[attr-defined]
            raise exc
        p = self._principal(tok["user"], tok["org"], "token", tok["id"])
        last = self._last_used.get(tok["id"], 0.0)
        if now - last > _LAST_USED_EVERY:
            # not an audited change: bookkeeping, at most once a minute per token
            self._last_used[tok["id"]] = now
            self.store.put(f"token/{ref.decode()}", dump(TOKEN, dict(tok, last_used=iso(now))))
        return p

    def list_tokens(self, p: Principal) -> list[dict[str, Any]]:
        out = []
        for _, raw in self.store.scan(f"token/{p.org_id}/"):
            t = load(TOKEN, raw)
            if t["user"] == p.user_id or p.role == "owner":
                view = public(t)
                view["expired"] = bool(t["_expires_at"] and t["_expires_at"] < time.time())
                out.append(view)
        return out

    def revoke_token(self, p: Principal, actor: Actor, token_id: str) -> dict[str, Any]:
        key = f"token/{p.org_id}/{token_id}"
        raw = self.store.get(key)
        if raw is None:
            raise NotFound("no such token")
        tok = load(TOKEN, raw)
        if tok["user"] != p.user_id and p.role != "owner":
            raise NotFound("no such token")
        if tok.get("revoked"):
            return public(tok)
        tok = dict(tok, revoked=True, revoked_at=iso())
        change = Change("token.revoke", org=p.org_id, target_kind="token", target_id=token_id,
                        details={"token_name": tok["name"]})
        change.put(key, dump(TOKEN, tok)).expect(key, raw)
        change.event("changed", "token", token_id, {"revoked": True})
        self.writer.commit(actor, change)
        return public(tok)

    def refuse(self, actor: Actor, action: str, message: str, org: str = "", target_kind: str = "",
               target_id: str = "") -> Forbidden:
        """A change refused for the caller's role is an audit entry; returns the error to raise."""
        self.writer.commit(actor, Change(action, org=org, outcome="denied", target_kind=target_kind,
                                         target_id=target_id, details={"reason": message}))
        return Forbidden(message)

    def audit_refused(self, ip: str, via: str, exc: Unauthenticated, kind: str) -> None:
        """A refused credential is an audit entry (no state change); one that is known but
        revoked or expired is entered in its organisation's log, naming it."""
        org = getattr(exc, "org", "")
        self.writer.commit(Actor(kind="anonymous", ip=ip, via=via, org=org,
                                 id=getattr(exc, "user_id", "")),
                           Change("auth.refused", org=org, outcome="denied", target_kind=kind,
                                  target_id=getattr(exc, "credential_id", ""),
                                  details={"reason": exc.message}))

    # ---- organisations and members -----------------------------------------------------
    def _org_for(self, p: Principal, org_ref: str) -> tuple[dict[str, Any], str]:
        """An organisation the caller belongs to (by id or name), with the caller's role;
        any other answers NotFound, whether it exists or not."""
        org = self.get_org(org_ref)
        if org is None:
            oid = self.store.get(f"orgname/{org_ref.lower()}")
            org = self.get_org(oid.decode()) if oid else None
        if org is None:
            raise NotFound("no such organisation")
        role = self._role(org["id"], p.user_id)
        if not role and not p.is_admin:
            raise NotFound("no such organisation")
        return org, role

    def _org_view(self, org: dict[str, Any], role: str) -> dict[str, Any]:
        view = public(org)
        view["role"] = role
        view["members_count"] = self.store.count(f"member/{org['id']}/")
        view["machines_count"] = self.store.count(f"machine/{org['id']}/")
        return view

    def list_orgs(self, p: Principal, allorgs: bool = False) -> list[dict[str, Any]]:
        if allorgs and p.is_admin:
            return [self._org_view(load(ORG, v), self._role(load(ORG, v)["id"], p.user_id))
                    for _, v in self.store.scan("org/")]
        out = []
        for oid in self.user_org_ids(p.user_id):
            org = self.get_org(oid)
            if org:
                out.append(self._org_view(org, self._role(oid, p.user_id)))
        return out

    def show_org(self, p: Principal, org_ref: str) -> dict[str, Any]:
        org, role = self._org_for(p, org_ref)
        return self._org_view(org, role)

    def create_org(self, p: Principal, actor: Actor, name: str, description: str = "") -> dict[str, Any]:
        change = Change("org.create", target_kind="org")
        org = self._new_org(change, str(name).strip(), p.user_id, description)
        change.org = org["id"]
        change.target_id = org["id"]
        change.details["name"] = org["name"]
        self._put_member(change, org["id"], p.user_id, "owner")
        self.writer.commit(actor, change)
        return self._org_view(org, "owner")

    def update_org(self, p: Principal, actor: Actor, org_ref: str, fields: dict[str, Any]) -> dict[str, Any]:
        org, role = self._org_for(p, org_ref)
        if role != "owner" and not p.is_admin:
            raise self.refuse(actor, "org.update", "only owners can change the organisation",
                              org["id"], "org", org["id"])
        change = Change("org.update", org=org["id"], target_kind="org", target_id=org["id"],
                        details=dict(fields))
        new = dict(org)
        if "name" in fields and fields["name"].strip() != org["name"]:
            name = fields["name"].strip()
            if not ORG_NAME_RE.match(name):
                raise Invalid("organisation names are 1-63 letters, digits, spaces or .@'_-", field="name")
            key = f"orgname/{name.lower()}"
            if self.store.get(key) is not None and name.lower() != org["name"].lower():
                raise Conflict("an organisation with that name exists", {"field": "name"})
            change.delete(f"orgname/{org['name'].lower()}").put(key, org["id"].encode())
            new["name"] = name
        if "description" in fields:
            new["description"] = fields["description"]
        change.put(f"org/{org['id']}", dump(ORG, new))
        change.event("changed", "org", org["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        return self._org_view(new, role)

    def list_members(self, p: Principal, org_ref: str) -> list[dict[str, Any]]:
        org, _ = self._org_for(p, org_ref)
        out = []
        for _, raw in self.store.scan(f"member/{org['id']}/"):
            m = load(MEMBER, raw)
            u = self.get_user(m["user"])
            if u:
                out.append(self._member_view(u, m))
        return out

    @staticmethod
    def _member_view(user: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], "email": user["email"], "first_name": user.get("first_name", ""),
                "last_name": user.get("last_name", ""), "role": m["role"], "added": m["added"],
                "last_login": user.get("last_login", ""),
                "registration_date": user.get("registration_date", "")}

    def get_member(self, p: Principal, org_ref: str, member: str) -> dict[str, Any]:
        org, _ = self._org_for(p, org_ref)
        user = self.get_user(member) or self.user_by_email(member)
        m = self.membership(org["id"], user["id"]) if user else None
        if user is None or m is None:
            raise NotFound("no such member")
        return self._member_view(user, m)

    def add_member(self, p: Principal, actor: Actor, org_ref: str, email: str, role: str) -> dict[str, Any]:
        org, my_role = self._org_for(p, org_ref)
        if my_role != "owner" and not p.is_admin:
            raise self.refuse(actor, "member.add", "only owners can add members", org["id"], "org", org["id"])
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}", field="role")
        user = self.user_by_email(str(email))
        if user is None:
            raise Invalid("no user has that e-mail; an administrator creates users first", field="email")
        if self.membership(org["id"], user["id"]) is not None:
            raise Conflict("already a member", {"field": "email"})
        change = Change("member.add", org=org["id"], target_kind="user", target_id=user["id"],
                        details={"email": user["email"], "role": role})
        self._put_member(change, org["id"], user["id"], role)
        change.event("created", "member", user["id"], {"email": user["email"], "role": role})
        self.writer.commit(actor, change)
        m = self.membership(org["id"], user["id"])
        assert m is not None
        return self._member_view(user, m)

    def remove_member(self, p: Principal, actor: Actor, org_ref: str, member: str) -> None:
        org, my_role = self._org_for(p, org_ref)
        user = self.get_user(member) or self.user_by_email(member)
        m = self.membership(org["id"], user["id"]) if user else None
        if user is None or m is None:
            raise NotFound("no such member")
        if my_role != "owner" and not p.is_admin and user["id"] != p.user_id:
            raise self.refuse(actor, "member.remove", "only owners can remove other members",
                              org["id"], "user", user["id"])
        if m["role"] == "owner":
            owners = [1 for _, r in self.store.scan(f"member/{org['id']}/") if json.loads(r)["role"] == "owner"]
            if len(owners) <= 1:
                raise Conflict("an organisation keeps at least one owner")
        change = Change("member.remove", org=org["id"], target_kind="user", target_id=user["id"],
                        details={"email": user["email"]})
        change.delete(f"member/{org['id']}/{user['id']}").delete(f"usermember/{user['id']}/{org['id']}")
        change.event("deleted", "member", user["id"], {"email": user["email"]})
        self.writer.commit(actor, change)


def constant_time_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
