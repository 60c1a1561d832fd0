"""REST routes of accounts: /api/v2/auth, sessions, tokens, orgs, members, users."""

from __future__ import annotations

from typing import Any

from controller.accounts.service import MAX_TTL
from controller.http.api import (
    CSRF_COOKIE,
    LIST_PARAMS,
    SESSION_COOKIE,
    Ctx,
    Reply,
    RouteTable,
    envelope,
    one,
)
from controller.http.schema import BOOLEAN, integer, obj, string
from controller.listing import apply

routes = RouteTable("auth")
org_routes = RouteTable("orgs")
user_routes = RouteTable("users")


def _auth_info(ctx: Ctx) -> dict[str, Any]:
    p = ctx.principal
    svc = ctx.services.accounts
    return {
        "user": p.user,
        "org": svc.org_view(p.org, p.role) if p.org else None,
        "orgs": svc.list_orgs(p),
        "auth": p.auth,
        "role": p.role,
        "invitations": svc.invitations_for(p.user_id),
    }


@routes.route("GET", "/api/v2/auth", op="describe_auth",
              summary="Who am I: user, active org, orgs, pending invitations")
async def describe_auth(ctx: Ctx) -> Any:
    return one(_auth_info(ctx))


LOGIN = obj(("email", "password"), email=string(3, 254), password=string(1, 1024),
            org=string(1, 100))


@routes.route("POST", "/api/v2/auth/sessions", op="login", summary="Sign in (sets the session cookie)",
              auth=False, body=LOGIN, same_origin=True)
async def login(ctx: Ctx) -> Any:
    b = ctx.body
    secret, p = await ctx.services.accounts.login(
        ctx.ip, b["email"], b["password"], b.get("org"),
        ctx.request.headers.get("User-Agent", ""))
    settings = ctx.services.settings
    secure = settings.public_url.startswith("https")
    opts = {"httponly": True, "samesite": "Lax", "secure": secure, "path": "/",
            "max_age": settings.session_ttl}
    ctx.principal_ = p
    info = _auth_info(ctx)
    info["csrf_token"] = p.csrf
    return Reply(one(info), cookies={
        SESSION_COOKIE: (secret, opts),
        CSRF_COOKIE: (p.csrf, dict(opts, httponly=False)),
    })


@routes.route("GET", "/api/v2/auth/sessions", op="list_sessions", summary="List your sessions",
              params=LIST_PARAMS)
async def list_sessions(ctx: Ctx) -> Any:
    return envelope(*apply(ctx.services.accounts.list_sessions(ctx.principal), ctx.query()))


@routes.route("DELETE", "/api/v2/auth/sessions", op="logout", summary="Sign out (ends this session)")
async def logout(ctx: Ctx) -> Any:
    p = ctx.principal
    if p.auth != "session":
        from controller.errors import Invalid

        raise Invalid("this request is not signed in with a session; revoke a token with "
                      "DELETE /api/v2/auth/tokens/{id}", field="session")
    ctx.services.accounts.logout(p, ctx.actor)
    return Reply(status=204, delete_cookies=(SESSION_COOKIE, CSRF_COOKIE))


@routes.route("DELETE", "/api/v2/auth/sessions/{session}", op="delete_session",
              summary="End one of your sessions")
async def delete_session(ctx: Ctx) -> Any:
    ctx.services.accounts.logout(ctx.principal, ctx.actor, ctx.match("session"))
    return Reply(status=204)


@routes.route("GET", "/api/v2/auth/tokens", op="list_tokens", summary="List API tokens",
              params=LIST_PARAMS)
async def list_tokens(ctx: Ctx) -> Any:
    return envelope(*apply(ctx.services.accounts.list_tokens(ctx.principal), ctx.query()))


TOKEN_BODY = obj(("name",), name=string(1, 100),
                 ttl=integer(0, MAX_TTL, description="seconds until it expires (at most 10 years; "
                             "0: never, where token_max_ttl = 0); default: the token_ttl setting"))


@routes.route("POST", "/api/v2/auth/tokens", op="create_token",
              summary="Create an API token (its secret is shown once)", body=TOKEN_BODY)
async def create_token(ctx: Ctx) -> Any:
    secret, tok = ctx.services.accounts.create_token(
        ctx.principal, ctx.actor, ctx.body["name"], ctx.body.get("ttl"))
    return Reply(dict(tok, token=secret), status=201)


@routes.route("DELETE", "/api/v2/auth/tokens/{token}", op="revoke_token", summary="Revoke an API token")
async def revoke_token(ctx: Ctx) -> Any:
    return ctx.services.accounts.revoke_token(ctx.principal, ctx.actor, ctx.match("token"))


# ---- orgs -------------------------------------------------------------------------------

@org_routes.route("GET", "/api/v2/orgs", op="list_orgs", summary="List your organisations",
                  params=(*LIST_PARAMS, "allorgs"))
async def list_orgs(ctx: Ctx) -> Any:
    orgs = ctx.services.accounts.list_orgs(ctx.principal, ctx.flag("allorgs"))
    return envelope(*apply(orgs, ctx.query(100)))


ORG_BODY = obj(("name",), name=string(1, 63), description=string(0, 1000))


@org_routes.route("POST", "/api/v2/orgs", op="create_org", summary="Create an organisation",
                  body=ORG_BODY)
async def create_org(ctx: Ctx) -> Any:
    b = ctx.body
    return Reply(ctx.services.accounts.create_org(ctx.principal, ctx.actor, b["name"],
                                                  b.get("description", "")), status=201)


@org_routes.route("GET", "/api/v2/orgs/{org}", op="get_org", summary="Show an organisation",
                  params=("only",))
async def get_org(ctx: Ctx) -> Any:
    return one(ctx.services.accounts.show_org(ctx.principal, ctx.match("org")))


@org_routes.route("PATCH", "/api/v2/orgs/{org}", op="update_org", summary="Rename or describe an organisation",
                  body=obj((), name=string(1, 63), description=string(0, 1000)))
async def update_org(ctx: Ctx) -> Any:
    return one(ctx.services.accounts.update_org(ctx.principal, ctx.actor, ctx.match("org"), ctx.body))


@org_routes.route("GET", "/api/v2/orgs/{org}/members", op="list_org_members",
                  summary="List members", params=LIST_PARAMS)
async def list_members(ctx: Ctx) -> Any:
    members = ctx.services.accounts.list_members(ctx.principal, ctx.match("org"))
    return envelope(*apply(members, ctx.query(), text_fields=("email", "id")))


@org_routes.route("POST", "/api/v2/orgs/{org}/members", op="add_org_member",
                  summary="Invite a user to the organisation (owners: 202, the user accepts); "
                          "platform admins add them at once (201)",
                  body=obj(("email",), email=string(3, 254), role=string(enum=["owner", "member"])))
async def add_member(ctx: Ctx) -> Any:
    b = ctx.body
    svc, p = ctx.services.accounts, ctx.principal
    role = b.get("role", "member")
    if p.is_admin:
        return Reply(svc.add_member(p, ctx.actor, ctx.match("org"), b["email"], role), status=201)
    return Reply(svc.invite_member(p, ctx.actor, ctx.match("org"), b["email"], role), status=202)


@org_routes.route("GET", "/api/v2/orgs/{org}/members/{member}", op="get_member",
                  summary="Show a member", params=("only",))
async def get_member(ctx: Ctx) -> Any:
    return one(ctx.services.accounts.get_member(ctx.principal, ctx.match("org"), ctx.match("member")))


@org_routes.route("DELETE", "/api/v2/orgs/{org}/members/{member}", op="remove_org_member",
                  summary="Remove a member")
async def remove_member(ctx: Ctx) -> Any:
    ctx.services.accounts.remove_member(ctx.principal, ctx.actor, ctx.match("org"), ctx.match("member"))
    return Reply(status=204)


# ---- invitations ------------------------------------------------------------------------

@org_routes.route("GET", "/api/v2/orgs/{org}/invitations", op="list_org_invitations",
                  summary="List pending invitations (owners)", params=LIST_PARAMS)
async def list_invitations(ctx: Ctx) -> Any:
    invitations = ctx.services.accounts.list_invitations(ctx.principal, ctx.match("org"))
    return envelope(*apply(invitations, ctx.query(), text_fields=("email", "id")))


@org_routes.route("POST", "/api/v2/orgs/{org}/invitations/accept", op="accept_org_invitation",
                  summary="Accept your invitation to the organisation")
async def accept_invitation(ctx: Ctx) -> Any:
    return ctx.services.accounts.accept_invitation(ctx.principal, ctx.actor, ctx.match("org"))


@org_routes.route("DELETE", "/api/v2/orgs/{org}/invitations", op="decline_org_invitation",
                  summary="Decline your invitation to the organisation")
async def decline_invitation(ctx: Ctx) -> Any:
    ctx.services.accounts.decline_invitation(ctx.principal, ctx.actor, ctx.match("org"))
    return Reply(status=204)


@org_routes.route("DELETE", "/api/v2/orgs/{org}/invitations/{member}", op="cancel_org_invitation",
                  summary="Cancel a pending invitation (owners)")
async def cancel_invitation(ctx: Ctx) -> Any:
    ctx.services.accounts.cancel_invitation(ctx.principal, ctx.actor, ctx.match("org"),
                                            ctx.match("member"))
    return Reply(status=204)


# ---- users ------------------------------------------------------------------------------

@user_routes.route("GET", "/api/v2/users", op="list_users",
                   summary="You; every user for platform admins", params=LIST_PARAMS)
async def list_users(ctx: Ctx) -> Any:
    users = ctx.services.accounts.list_users(ctx.principal)
    return envelope(*apply(users, ctx.query(), text_fields=("email", "id")))


USER_BODY = obj(("email", "password"), email=string(3, 254), password=string(1, 1024),
                admin=BOOLEAN, org=string(1, 63), first_name=string(0, 100), last_name=string(0, 100))


@user_routes.route("POST", "/api/v2/users", op="create_user",
                   summary="Create a user (platform admins)", body=USER_BODY)
async def create_user(ctx: Ctx) -> Any:
    p = ctx.principal
    if not p.is_admin:
        raise ctx.services.accounts.refuse(ctx.actor, "user.create",
                                           "only platform administrators create users",
                                           target_kind="user")
    b = ctx.body
    user, org = await ctx.services.accounts.create_user(
        ctx.actor, b["email"], b["password"], is_admin=b.get("admin", False), org_name=b.get("org"),
        first_name=b.get("first_name", ""), last_name=b.get("last_name", ""))
    return Reply(dict(user, org={"id": org["id"], "name": org["name"]}), status=201)
