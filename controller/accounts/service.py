"""Account logic: users and passwords, sessions, API tokens, refused credentials (organisations
and members: :mod:`controller.accounts.orgs`; shared reads: :mod:`controller.accounts.base`).

Never imports aiohttp or grpc. Blocking work (argon2) runs in a thread. Every change goes
through :class:`controller.events.writer.Writer`, so it is audited and published."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError

from controller.accounts.base import (
    _LAST_USED_EVERY,
    MAX_PASSWORD,
    MAX_TTL,
    MIN_PASSWORD,
    TOKEN_PREFIX,
    _added_at,
    _hash,
    loggable_email,
    new_id,
)
from controller.accounts.model import (
    EMAIL_RE,
    SESSION,
    TOKEN,
    USER,
    Principal,
)
from controller.accounts.orgs import OrgService
from controller.errors import Conflict, Invalid, NotFound, RateLimited, Unauthenticated
from controller.events.model import Actor
from controller.events.writer import Change
from controller.store.base import Batch
from controller.store.docs import dump, load, public
from controller.timeutil import iso


class AccountService(OrgService):
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
        Failures are audited and throttled per e-mail and per address: the attempt is counted
        before the password check is awaited, and given back when the password is right."""
        email_l = str(email).strip().lower()
        anon = Actor(kind="anonymous", email=loggable_email(email_l), ip=ip, via=via)
        e_key, ip_key = "e:" + email_l, "ip:" + ip
        try:
            stamp = self.throttle.attempt(e_key, ip_key)
        except RateLimited:
            self._commit_unauthenticated(anon, Change(
                "session.create", outcome="denied", target_kind="user",
                details={"reason": "too many failed logins"}))
            raise
        user = self.user_by_email(email_l)
        ok = await asyncio.to_thread(self._verify, user["_pw"] if user else None, password)
        # the user as stored now: the check took a while, and a new password or a disabled
        # account meanwhile must win over what was read before it
        fresh = self._reread_user(user) if ok and user is not None else None
        if fresh is None:
            raise self._wrong_password(anon, user)
        user, raw = fresh
        # the password was right: no failure (the address keeps no count of it either)
        self.throttle.release(stamp, ip_key)
        self.throttle.succeed(e_key)
        actor = Actor(kind="user", id=user["id"], email=user["email"], ip=ip, via=via)
        try:
            org_doc, role = self._pick_org(user, org)
        except NotFound as exc:
            self.writer.commit(actor, Change(
                "session.create", outcome="denied", target_kind="user", target_id=user["id"],
                details={"reason": exc.message, "org": str(org)[:100]}))
            raise
        secret = secrets.token_urlsafe(32)
        now = time.time()
        sess = {
            "id": new_id()[:16], "user": user["id"], "org": org_doc["id"] if org_doc else "",
            "csrf": secrets.token_urlsafe(24), "created": iso(now), "last_active": iso(now),
            "expires": iso(now + self.settings.session_ttl), "_expires_at": now + self.settings.session_ttl,
            "ip": ip, "user_agent": user_agent[:200],
        }
        h = _hash(secret)
        actor = Actor(kind="user", id=user["id"], email=user["email"], org=sess["org"], ip=ip, via=via)
        user_key = f"user/{user['id']}"
        for retry in (False, True):
            if retry:  # the user changed between the read and the write: read again, once
                fresh = self._reread_user(user)
                if fresh is None:
                    raise self._wrong_password(anon, user)
                user, raw = fresh
            user = dict(user, last_login=iso(now))
            change = Change("session.create", org=sess["org"], target_kind="session", target_id=sess["id"])
            change.put(f"session/{h}", dump(SESSION, sess)).put(f"usersession/{user['id']}/{sess['id']}", h.encode())
            change.put(user_key, dump(USER, user)).expect(user_key, raw)
            try:
                self.writer.commit(actor, change)
                break
            except Conflict:
                if retry:
                    raise
        return secret, Principal(public(user), org_doc, role, "session", sess["id"], sess["csrf"])

    def _reread_user(self, seen: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        """The user ``seen`` as stored now, with its stored bytes (for compare-and-set); None
        when it is gone, disabled, or its password changed since ``seen`` was read."""
        raw = self.store.get(f"user/{seen['id']}")
        if raw is None:
            return None
        user = load(USER, raw)
        if user.get("disabled") or user.get("_pw") != seen.get("_pw"):
            return None
        return user, raw

    def _wrong_password(self, anon: Actor, user: dict[str, Any] | None) -> Unauthenticated:
        """Audit a refused login (its attempt stays counted); returns the error to raise."""
        self.writer.commit(anon, Change("session.create", outcome="denied",
                                        target_kind="user", target_id=user["id"] if user else "",
                                        details={"reason": "wrong e-mail or password"}))
        return Unauthenticated("wrong e-mail or password")

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
        # by default the oldest membership: joining another organisation later (say, by
        # accepting an invitation) never moves where one signs in
        found: list[tuple[float, str, dict[str, Any]]] = []
        for oid in org_ids:
            o, m = self.get_org(oid), self.membership(oid, user["id"])
            if o and m:
                found.append((_added_at(m), o["name"].lower(), o))
        if not found:
            return None, ""
        found.sort(key=lambda t: (t[0], t[1]))
        first = found[0][2]
        return first, self._role(first["id"], user["id"])

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
        upper = min(max_ttl, MAX_TTL) if max_ttl > 0 else MAX_TTL
        if ttl < 0 or (ttl == 0 and max_ttl > 0) or ttl > upper:
            never = "" if max_ttl > 0 else ", or 0 (never expires)"
            raise Invalid(f"ttl must be 1 to {upper} seconds{never}", field="ttl")
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

    def audit_refused(self, ip: str, via: str, exc: Unauthenticated, kind: str) -> None:
        """A refused credential is an audit entry (no state change); one that is known but
        revoked or expired is entered in its organisation's log, naming it. At most
        AUDIT_UNAUTHENTICATED_PER_MINUTE a minute per address (see
        :meth:`_commit_unauthenticated`)."""
        org = getattr(exc, "org", "")
        self._commit_unauthenticated(
            Actor(kind="anonymous", ip=ip, via=via, org=org, id=getattr(exc, "user_id", "")),
            Change("auth.refused", org=org, outcome="denied", target_kind=kind,
                   target_id=getattr(exc, "credential_id", ""), details={"reason": exc.message}))

    def commit_unauthenticated(self, actor: Actor, change: Change) -> None:
        """For other services' refusals that anybody can cause (see below)."""
        self._commit_unauthenticated(actor, change)

    def _commit_unauthenticated(self, actor: Actor, change: Change) -> None:
        """Commit an entry that anybody can cause at will, without credentials (a refused
        token, a throttled login): at most AUDIT_UNAUTHENTICATED_PER_MINUTE a minute per
        (action, organisation, address), so the log cannot be flooded. Past that the entries
        are counted, and the next one written for the same key says in ``details.suppressed``
        how many were left out before it."""
        n = self.audit_limit.admit((change.action, change.org, actor.ip))
        if n is None:
            return
        if n:
            change.details["suppressed"] = n
        self.writer.commit(actor, change)

    def flush_suppressed(self) -> int:
        """Write one entry for each (action, organisation, address) whose entries were left
        out in a minute that has ended and not yet reported (when that address went quiet);
        for a periodic task. Returns how many entries it wrote."""
        n = 0
        for key, suppressed in self.audit_limit.flush():
            action, org, ip = key[0], key[1], key[2]
            self.writer.commit(
                Actor(kind="anonymous", ip=ip, via="system", org=org),
                Change(action, org=org, outcome="denied", details={
                    "reason": "similar entries from this address were left out of the log",
                    "suppressed": suppressed}))
            n += 1
        return n

    # ---- bookkeeping -------------------------------------------------------------------
    def sweep_expired(self, batch_size: int = 500, now: float | None = None) -> int:
        """Delete expired sessions and their ``usersession/`` index, ``batch_size`` sessions
        per store write; returns how many. Bookkeeping, not audited (an expired session is
        already refused). Meant for a periodic task (hourly)."""
        now = time.time() if now is None else now
        n = 0
        batch = Batch()
        for key, raw in self.store.scan("session/"):
            try:
                sess = load(SESSION, raw)
                expired = float(sess["_expires_at"]) < now
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge
            if not expired:
                continue
            batch.delete(key)
            batch.delete(f"usersession/{sess['user']}/{sess['id']}")
            n += 1
            if n % batch_size == 0:
                self.store.write(batch)
                batch = Batch()
        if batch:
            self.store.write(batch)
        return n

