"""Organisations, their members and invitations (the account service's part for orgs)."""

from __future__ import annotations

import json
import time
from typing import Any

from controller.accounts.base import AccountBase
from controller.accounts.model import (
    EMAIL_RE,
    INVITE,
    MEMBER,
    ORG,
    ORG_NAME_RE,
    ROLES,
    Principal,
)
from controller.errors import Conflict, Forbidden, Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change
from controller.store.docs import dump, load, public
from controller.timeutil import iso


class OrgService(AccountBase):
    # ---- organisations and members -----------------------------------------------------
    def _org_by_ref(self, org_ref: str) -> dict[str, Any] | None:
        org = self.get_org(org_ref)
        if org is None:
            oid = self.store.get(f"orgname/{org_ref.lower()}")
            org = self.get_org(oid.decode()) if oid else None
        return org

    def _org_for(self, p: Principal, org_ref: str) -> tuple[dict[str, Any], str]:
        """An organisation the caller belongs to (by id or name), with the caller's role;
        any other answers NotFound, whether it exists or not."""
        org = self._org_by_ref(org_ref)
        if org is None:
            raise NotFound("no such organisation")
        role = self._role(org["id"], p.user_id)
        if not role and not p.is_admin:
            raise NotFound("no such organisation")
        return org, role

    def org_view(self, org: dict[str, Any], role: str) -> dict[str, Any]:
        view = public(org)
        view["role"] = role
        view["members_count"] = self.store.count(f"member/{org['id']}/")
        view["machines_count"] = self.store.count(f"machine/{org['id']}/")
        return view

    def list_orgs(self, p: Principal, allorgs: bool = False) -> list[dict[str, Any]]:
        if allorgs and p.is_admin:
            orgs = [load(ORG, v) for _, v in self.store.scan("org/")]
            return [self.org_view(o, self._role(o["id"], p.user_id)) for o in orgs]
        out = []
        for oid in self.user_org_ids(p.user_id):
            org = self.get_org(oid)
            if org:
                out.append(self.org_view(org, self._role(oid, p.user_id)))
        return out

    def show_org(self, p: Principal, org_ref: str) -> dict[str, Any]:
        org, role = self._org_for(p, org_ref)
        return self.org_view(org, role)

    def create_org(self, p: Principal, actor: Actor, name: str, description: str = "") -> dict[str, Any]:
        change = Change("org.create", target_kind="org")
        org = self._new_org(change, str(name).strip(), p.user_id, description)
        change.org = org["id"]
        change.target_id = org["id"]
        change.details["name"] = org["name"]
        self._put_member(change, org["id"], p.user_id, "owner")
        self.writer.commit(actor, change)
        return self.org_view(org, "owner")

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
        return self.org_view(new, role)

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
        """A platform admin makes a user a member at once (owners invite: :meth:`invite_member`)."""
        org, _ = self._org_for(p, org_ref)
        if not p.is_admin:
            raise self.refuse(actor, "member.add", "only platform administrators add members "
                              "directly; owners invite them", org["id"], "org", org["id"])
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
        change.expect(f"member/{org['id']}/{user['id']}", None)
        if self.store.get(f"invite/{org['id']}/{user['id']}") is not None:  # now moot
            change.delete(f"invite/{org['id']}/{user['id']}").delete(f"userinvite/{user['id']}/{org['id']}")
        change.event("created", "member", user["id"], {"email": user["email"], "role": role})
        self.writer.commit(actor, change)
        m = self.membership(org["id"], user["id"])
        assert m is not None
        return self._member_view(user, m)

    # ---- invitations -------------------------------------------------------------------
    def invite_member(self, p: Principal, actor: Actor, org_ref: str, email: str, role: str) -> dict[str, Any]:
        """An owner invites a user by e-mail. The answer is the same whether an account has
        that e-mail or not; for an account a pending invitation is stored, which grants nothing
        until its user accepts it; for none, nothing is stored. Audited either way, naming the
        e-mail only when it is a user's. (The owner's list of pending invitations, and the
        org's own log, still show which invitations went to an account.)"""
        org, my_role = self._org_for(p, org_ref)
        if my_role != "owner" and not p.is_admin:
            raise self.refuse(actor, "member.add", "only owners can add members", org["id"], "org", org["id"])
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}", field="role")
        email_l = str(email).strip().lower()
        if not EMAIL_RE.match(email_l):
            raise Invalid("not a valid e-mail address", field="email")
        answer = {"email": email_l, "role": role, "status": "invited"}
        change = Change("invitation.create", org=org["id"], target_kind="user", details={"role": role})
        user = self.user_by_email(email_l)
        if user is not None:
            if self.membership(org["id"], user["id"]) is not None:
                raise Conflict("already a member", {"field": "email"})  # owners see members
            now = time.time()
            inv = {"org": org["id"], "user": user["id"], "role": role, "invited_by": p.user_id,
                   "invited_by_email": p.user["email"], "invited": iso(now), "_invited_at": now}
            change.target_id = user["id"]
            change.details["email"] = user["email"]
            change.put(f"invite/{org['id']}/{user['id']}", dump(INVITE, inv))
            change.put(f"userinvite/{user['id']}/{org['id']}", role.encode())
            change.event("created", "invitation", user["id"], {"email": user["email"], "role": role})
        self.writer.commit(actor, change)
        return answer

    def invitations_for(self, user_id: str) -> list[dict[str, Any]]:
        """The invitations waiting for a user's answer."""
        out = []
        for k, _ in self.store.scan(f"userinvite/{user_id}/", keys_only=True):
            oid = k.rsplit("/", 1)[1]
            inv, org = self._doc(INVITE, f"invite/{oid}/{user_id}"), self.get_org(oid)
            if inv and org:
                out.append({"org": {"id": org["id"], "name": org["name"]}, "role": inv["role"],
                            "invited_by": inv.get("invited_by_email", ""), "invited": inv["invited"]})
        return out

    def _my_invitation(self, p: Principal, org_ref: str) -> tuple[dict[str, Any], bytes]:
        org = self._org_by_ref(org_ref)
        raw = self.store.get(f"invite/{org['id']}/{p.user_id}") if org else None
        if org is None or raw is None:
            raise NotFound("no such invitation")
        return org, raw

    def accept_invitation(self, p: Principal, actor: Actor, org_ref: str) -> dict[str, Any]:
        """The caller accepts their invitation to ``org_ref``: now a member, in the role the
        invitation names. Their active organisation stays what it was."""
        org, raw = self._my_invitation(p, org_ref)
        inv = load(INVITE, raw)
        key = f"invite/{org['id']}/{p.user_id}"
        change = Change("invitation.accept", org=org["id"], target_kind="user", target_id=p.user_id,
                        details={"email": p.user["email"], "role": inv["role"],
                                 "invited_by": inv.get("invited_by_email", "")})
        change.delete(key).delete(f"userinvite/{p.user_id}/{org['id']}").expect(key, raw)
        role = self._role(org["id"], p.user_id)
        if not role:
            role = inv["role"]
            self._put_member(change, org["id"], p.user_id, role)
            change.expect(f"member/{org['id']}/{p.user_id}", None)
            change.event("created", "member", p.user_id, {"email": p.user["email"], "role": role})
        self.writer.commit(actor, change)
        return self.org_view(org, role)

    def decline_invitation(self, p: Principal, actor: Actor, org_ref: str) -> None:
        org, raw = self._my_invitation(p, org_ref)
        key = f"invite/{org['id']}/{p.user_id}"
        change = Change("invitation.decline", org=org["id"], target_kind="user", target_id=p.user_id,
                        details={"email": p.user["email"], "role": load(INVITE, raw)["role"]})
        change.delete(key).delete(f"userinvite/{p.user_id}/{org['id']}").expect(key, raw)
        change.event("deleted", "invitation", p.user_id, {"email": p.user["email"]})
        self.writer.commit(actor, change)

    def list_invitations(self, p: Principal, org_ref: str) -> list[dict[str, Any]]:
        """The organisation's pending invitations (owners and platform admins)."""
        org, role = self._org_for(p, org_ref)
        if role != "owner" and not p.is_admin:
            raise Forbidden("only owners see the organisation's invitations")
        out = []
        for _, raw in self.store.scan(f"invite/{org['id']}/"):
            inv = load(INVITE, raw)
            u = self.get_user(inv["user"])
            if u:
                out.append({"id": u["id"], "email": u["email"], "role": inv["role"],
                            "invited_by": inv.get("invited_by_email", ""), "invited": inv["invited"]})
        return out

    def cancel_invitation(self, p: Principal, actor: Actor, org_ref: str, member: str) -> None:
        """An owner withdraws a pending invitation (``member``: the user's id or e-mail)."""
        org, role = self._org_for(p, org_ref)
        if role != "owner" and not p.is_admin:
            raise self.refuse(actor, "invitation.cancel", "only owners can cancel invitations",
                              org["id"], "org", org["id"])
        user = self.get_user(member) or self.user_by_email(member)
        key = f"invite/{org['id']}/{user['id']}" if user else ""
        raw = self.store.get(key) if user else None
        if user is None or raw is None:
            raise NotFound("no such invitation")
        change = Change("invitation.cancel", org=org["id"], target_kind="user", target_id=user["id"],
                        details={"email": user["email"]})
        change.delete(key).delete(f"userinvite/{user['id']}/{org['id']}").expect(key, raw)
        change.event("deleted", "invitation", user["id"], {"email": user["email"]})
        self.writer.commit(actor, change)

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
