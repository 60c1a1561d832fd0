"""Route declaration for the REST API: each route says its method, path, operation id,
whether it needs authentication, its body schema and its parameters; the same table builds
the aiohttp routes and the OpenAPI document, so they cannot drift apart.

A handler takes a :class:`Ctx` and returns what goes in the JSON response (or a
:class:`Reply`). It raises :mod:`controller.errors` for failures; it never builds an error
response itself."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from controller import keys
from controller.accounts.model import Principal
from controller.errors import BadRequest, Forbidden, TooLarge, Unauthenticated
from controller.events.model import Actor
from controller.events.writer import Change
from controller.http.errors import UnsupportedMedia
from controller.http.schema import Schema, validate
from controller.listing import Query, parse_query
from controller.services import Services

SESSION_COOKIE = "session.id"  # Mist's name for it
CSRF_COOKIE = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
_DEFAULT_PORTS = {"http": 80, "https": 443}

LIST_PARAMS = ("search", "sort", "start", "limit", "only", "deref")


@dataclass
class Reply:
    data: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    delete_cookies: tuple[str, ...] = ()


@dataclass
class Ctx:
    request: web.Request
    services: Services
    principal_: Principal | None
    body_schema: Schema | None = None
    _body: Any = None

    @property
    def principal(self) -> Principal:
        if self.principal_ is None:  # only on routes declared auth=False
            raise Unauthenticated("authentication is required")
        return self.principal_

    @property
    def ip(self) -> str:
        return client_ip(self.request)

    @property
    def actor(self) -> Actor:
        if self.principal_ is None:
            return Actor(kind="anonymous", ip=self.ip, via="rest")
        return self.principal_.actor(self.ip, "rest")

    @property
    def body(self) -> Any:
        return self._body

    def param(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def flag(self, name: str) -> bool:
        v = self.request.query.get(name, "").lower()
        if v in ("", "0", "false", "no"):
            return False
        if v in ("1", "true", "yes"):
            return True
        raise BadRequest(f"{name} must be true or false", field=name)

    def query(self, max_limit: int = 1000) -> Query:
        return parse_query(self.request.query, max_limit=max_limit)

    def match(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    op: str
    summary: str
    tag: str
    auth: bool = True
    body: Schema | None = None
    params: tuple[str, ...] = ()
    list_response: bool = False
    websocket: bool = False
    same_origin: bool = False  # a browser's Origin, when sent, must be the external URL's


class RouteTable:
    """Routes of one capability, declared with decorators in its ``routes`` module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def route(self, method: str, path: str, *, op: str, summary: str, auth: bool = True,
              body: Schema | None = None, params: tuple[str, ...] = (),
              list_response: bool = False, websocket: bool = False,
              same_origin: bool = False) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes.append(Route(method, path, fn, op, summary, self.tag, auth, body,
                                     params, list_response, websocket, same_origin))
            return fn
        return deco


def client_ip(request: web.Request) -> str:
    settings = request.app[keys.SETTINGS]
    if settings.behind_proxy:
        fwd = request.headers.get("X-Forwarded-For", "")
        if fwd:
            return fwd.split(",")[-1].strip()[:64]  # the proxy's own entry; the left is the client's word
    return request.remote or ""


def bearer(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <t>`` or Mist's bare ``Authorization: <t>``."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    header = header.strip()
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return header


def authenticate(request: web.Request, services: Services, *, via: str = "rest") -> Principal:
    """The caller from the Authorization header, else the session cookie. A refused
    credential is audited. For cookie sessions, unsafe methods need the CSRF header."""
    token = bearer(request)
    ip = client_ip(request)
    if token is not None:
        try:
            return services.accounts.resolve_token(token)
        except Unauthenticated as exc:
            services.accounts.audit_refused(ip, via, exc, "token")
            raise
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthenticated("authentication is required: sign in, or send an API token "
                              "as 'Authorization: Bearer <token>'")
    try:
        p = services.accounts.resolve_session(cookie)
    except Unauthenticated as exc:
        services.accounts.audit_refused(ip, via, exc, "session")
        raise
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent.encode(), p.csrf.encode()):
            services.writer.commit(p.actor(ip, via), _csrf_change(request))
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header (cookie sessions need it "
                            "on every change)")
    return p


def same_origin(origin: str, url: str) -> bool:
    """Whether the browser origin ``origin`` (scheme://host[:port]) is the one of ``url``:
    same scheme, host and port (a default port written or not)."""
    o, u = urlsplit(origin.strip()), urlsplit(url)
    try:
        o_port, u_port = o.port, u.port
    except ValueError:
        return False
    if not o.scheme or not o.hostname or o.path not in ("", "/") or o.query or o.fragment:
        return False  # "null" (sandboxed pages, file: URLs) and anything else that is no origin
    scheme = o.scheme.lower()
    return (scheme, o.hostname.lower(), o_port or _DEFAULT_PORTS.get(scheme)) == (
        u.scheme.lower(), (u.hostname or "").lower(), u_port or _DEFAULT_PORTS.get(u.scheme.lower()))


def check_origin(request: web.Request) -> None:
    """A request a browser sends with an ``Origin`` must come from our own pages (the external
    URL's scheme, host and port): another site's page cannot, say, sign a visitor in as
    someone else (login CSRF). Clients that are no browsers send no Origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if not same_origin(origin, request.app[keys.SETTINGS].public_url):
        raise Forbidden(f"requests from origin {origin[:200]} are refused: use this "
                        "controller's own address")


def _csrf_change(request: web.Request) -> Change:
    return Change("auth.csrf", outcome="denied", target_kind="request",
                  details={"method": request.method, "path": request.path})


async def read_json(request: web.Request, schema: Schema | None) -> Any:
    max_size = request.app[keys.SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > max_size:
        raise TooLarge(f"the body is larger than {max_size} bytes", {"limit": max_size})
    raw = await request.read()  # aiohttp enforces client_max_size while reading
    if raw.strip() and request.content_type != JSON_TYPE:
        # a page elsewhere can make a browser send text/plain or a form without asking (no
        # CORS preflight); application/json it cannot
        raise UnsupportedMedia(f"the body must be JSON, sent as Content-Type: {JSON_TYPE} "
                               f"(not {request.content_type})",
                               {"content_type": request.content_type[:100]})
    if schema is None:
        if raw.strip():
            raise BadRequest("this endpoint takes no body")
        return None
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
            json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") cannot be stored
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("the body is not valid JSON: nested too deeply") from None
    return validate(data, schema)


def wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        services = request.app[keys.SERVICES]
        if route.same_origin:
            check_origin(request)
        principal = authenticate(request, services) if route.auth else None
        if principal is None and not route.auth:
            principal = _optional_principal(request, services)
        ctx = Ctx(request, services, principal, route.body)
        if not route.websocket:
            ctx._body = (await read_json(request, route.body)
                         if request.method in ("POST", "PUT", "PATCH") or route.body is not None
                         else None)
        result = await route.handler(ctx)
        if isinstance(result, web.StreamResponse):
            return result
        reply = result if isinstance(result, Reply) else Reply(result)
        if reply.status == 204:
            resp: web.Response = web.Response(status=204)
        else:
            resp = web.json_response(reply.data, status=reply.status, dumps=_dumps)
        for k, v in reply.headers.items():
            resp.headers[k] = v
        for name, (value, opts) in reply.cookies.items():
            resp.set_cookie(name, value, **opts)
        for name in reply.delete_cookies:
            resp.del_cookie(name, path="/")
        return resp

    handler.__name__ = route.op
    return handler


def _optional_principal(request: web.Request, services: Services) -> Principal | None:
    """For public routes that say more to a signed-in caller; never raises, never audits."""
    token = bearer(request)
    try:
        if token is not None:
            return services.accounts.resolve_token(token)
        cookie = request.cookies.get(SESSION_COOKIE)
        return services.accounts.resolve_session(cookie) if cookie else None
    except Unauthenticated:
        return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def envelope(data: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    return {"data": data, "meta": meta}


def one(data: Any) -> dict[str, Any]:
    return {"data": data}
