"""GET /api/v2/openapi.json is public and documents every route the controller serves: the
routes are taken from the live aiohttp router of an app built like the controller's (and from
``all_routes()``), compared with the document the app builds and the one the running
controller serves; and every documented operation answers on the running controller."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller import keys
from controller.app import all_routes, build_app
from controller.services import build_services
from controller.settings import Settings
from controller.store import open_store
from tests.support.controller import Controller, Http

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PUBLIC = {("GET", "/api/v2/health"), ("GET", "/api/v2/openapi.json"), ("GET", "/ca.pem"),
          ("POST", "/api/v2/auth/sessions"), ("GET", "/api/v2/agents/bootstrap"),
          # the one-use ticket in its query is the credential
          ("GET", "/api/v2/shells/{shell}/ws"),
          ("POST", "/api/v2/agents/enroll"),
          # the gateway's one-use token in the body is the credential; the script is public
          ("POST", "/api/v2/tunnels/register"), ("GET", "/install/tunnel.sh"),
          # the agent's install script, its package and the dependency wheels
          ("GET", "/install/agent.sh"), ("GET", "/install/agent.json"),
          ("GET", "/install/packages/{file}"), ("GET", "/install/wheels/"),
          ("GET", "/install/wheels/{file}")}


def served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app's router serves."""
    out = set()
    for route in app.router.routes():
        assert route.resource is not None
        out.add((route.method.upper(), route.resource.canonical))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def undocumented(routes: set[tuple[str, str]], doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Served routes the document lacks (HEAD counts as documented with its GET)."""
    docs = documented(doc)
    return sorted((m, p) for m, p in routes
                  if (m, p) not in docs and not (m == "HEAD" and ("GET", p) in docs))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[web.Application]:
    """The controller's app with test settings and services over a temporary store."""
    tmp: Path = tmp_path_factory.mktemp("openapi")
    settings = Settings(data_dir=str(tmp), http="127.0.0.1:7080", grpc="127.0.0.1:7443")
    store = open_store(tmp / "store")
    try:
        yield build_app(settings, build_services(settings, store), None)
    finally:
        store.close()


@pytest.fixture(scope="module")
def served_doc(controller: Controller) -> dict[str, Any]:
    r = controller.http().get("/api/v2/openapi.json")  # no credentials: it is public
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("application/json")
    return r.body  # type: ignore[no-any-return]


async def nothing(request: web.Request) -> web.Response:
    return web.Response()


def test_the_checker_notices_an_undocumented_route(app: web.Application) -> None:
    doc = app[keys.OPENAPI]
    extra = web.Application()
    for r in app.router.routes():
        extra.router.add_route(r.method, r.resource.canonical, r.handler)  # type: ignore[union-attr]
    extra.router.add_get("/api/v2/hidden", nothing)  # with its HEAD
    extra.router.add_route("DELETE", "/api/v2/orgs/{org}", nothing)
    extra.router.add_route("*", "/api/v2/any", nothing)
    assert undocumented(served(extra), doc) == [
        ("*", "/api/v2/any"), ("DELETE", "/api/v2/orgs/{org}"),
        ("GET", "/api/v2/hidden"), ("HEAD", "/api/v2/hidden")]


def test_every_route_the_app_serves_is_in_its_document(app: web.Application) -> None:
    routes = served(app)
    assert len(routes) >= 20
    assert undocumented(routes, app[keys.OPENAPI]) == []
    # and the route table is what is served, nothing more, nothing less
    assert {(r.method, r.path) for r in all_routes()} == routes


def test_every_route_is_in_the_served_document(app: web.Application,
                                               served_doc: dict[str, Any]) -> None:
    assert undocumented(served(app), served_doc) == []
    assert undocumented({(r.method, r.path) for r in all_routes()}, served_doc) == []
    # it documents nothing that is not served either
    assert documented(served_doc) == served(app)
    assert served_doc["paths"] == app[keys.OPENAPI]["paths"]


def test_document_is_openapi_with_unique_operations_and_public_routes_marked(
        served_doc: dict[str, Any]) -> None:
    assert served_doc["openapi"].startswith("3.")
    assert served_doc["info"]["title"] and served_doc["info"]["version"]
    ops = [(m.upper(), p, op) for p, item in served_doc["paths"].items()
           for m, op in item.items() if m in METHODS]
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids)), sorted(ids)
    for method, path, op in ops:
        assert op.get("summary"), (method, path)
        public = op.get("security") == []
        assert public == ((method, path) in PUBLIC), (method, path)
        for name in (seg[1:-1] for seg in path.split("/") if seg.startswith("{")):
            assert {"name": name, "in": "path", "required": True,
                    "schema": {"type": "string"}} in op["parameters"], (path, name)
    schemes = served_doc["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"]["name"] == "Authorization"
    assert schemes["CookieAuth"] == {"type": "apiKey", "in": "cookie", "name": "session.id"}


def test_every_documented_operation_answers(controller: Controller,
                                            served_doc: dict[str, Any]) -> None:
    token = controller.token(name="openapi-answers")
    org = Http(controller.url, token).get("/api/v2/auth").body["data"]["org"]["id"]
    for (method, path) in sorted(documented(served_doc)):
        names = collections.defaultdict(lambda: "none", org=org, member="nobody@example.com")
        concrete = path.format_map(names)
        op = served_doc["paths"][path][method.lower()]
        for h in (controller.http(), controller.http(token)):
            body: dict[str, Any] | None = {} if "requestBody" in op else None
            r = h.request(method, concrete, body)
            assert r.status not in (405, 500), (method, concrete, r.status, r.body)
            if r.status == 404:  # a missing resource, never a missing endpoint
                assert "no such endpoint" not in r.body["error"]["message"], (method, path)
            if (method, path) not in PUBLIC and h.token is None:
                assert r.status == 401, (method, path, r.status)


def test_documented_body_schemas_are_the_ones_enforced(controller: Controller,
                                                       served_doc: dict[str, Any]) -> None:
    h = Http(controller.url, controller.token(name="openapi-bodies"))
    org = h.get("/api/v2/auth").body["data"]["org"]["id"]
    bodies = 0
    for path, item in served_doc["paths"].items():
        for method, op in item.items():
            if "requestBody" not in op:
                continue
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["type"] == "object" and schema["additionalProperties"] is False
            concrete = path.format_map(collections.defaultdict(lambda: "none", org=org))
            required = {k: "x" for k in schema.get("required", [])}
            r = h.request(method.upper(), concrete, dict(required, zz_not_documented=1))
            assert r.status == 422, (method, path, r.body)
            assert r.body["error"]["details"]["field"] == "zz_not_documented"
            for name in schema.get("required", []):
                body = {k: "x" for k in schema["required"] if k != name}
                r = h.request(method.upper(), concrete, body)
                assert r.status == 422 and r.body["error"]["details"]["field"] == name, (path, r.body)
            bodies += 1
    assert bodies >= 6


def test_list_endpoints_are_documented_and_answer_the_envelope(
        controller: Controller, served_doc: dict[str, Any]) -> None:
    h = Http(controller.url, controller.token(name="openapi-lists"))
    org = h.get("/api/v2/auth").body["data"]["org"]["id"]
    lists = 0
    for path, item in served_doc["paths"].items():
        op = item.get("get")
        if op is None or not any(p["name"] == "limit" for p in op["parameters"]):
            continue
        params = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        if "{" in path.replace("{org}", ""):
            continue  # lists under another resource (a zone's records): their own tests
        lists += 1
        assert {"search", "sort", "start", "limit", "only"} <= params, path
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ListResponse"}
        r = h.get(path.format(org=org) + "?limit=1")
        assert r.status == 200 and set(r.body) == {"data", "meta"}, (path, r.body)
        assert r.body["meta"]["returned"] == len(r.body["data"]) <= 1
        r = h.get(path.format(org=org) + "?limit=0")
        assert r.status == 400 and r.body["error"]["details"]["field"] == "limit", path
    assert lists >= 6
