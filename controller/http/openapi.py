"""The controller's own OpenAPI document, generated from the route tables (so a route cannot
be missing from it)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from controller.http.api import Route

_PARAM_DOCS = {
    "search": "Filter: key:value, key!=value, free text, AND/OR, parentheses (see README)",
    "sort": "Comma-separated fields, '-' for descending",
    "start": "Offset, or the id of the first item",
    "limit": "How many items (1 to the endpoint's maximum, default 100)",
    "only": "Comma-separated fields to return",
    "deref": "Accepted for Mist compatibility (auto, none)",
    "allorgs": "Platform admins: every organisation",
    "since": "ISO 8601 time: entries at or after",
    "until": "ISO 8601 time: entries at or before",
    "after": "Entries with a sequence number above this, oldest first",
    "kinds": "Comma-separated resource kinds to stream",
}

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "object"}}}},
}


def build(routes: Iterable[Route], version: str, server_url: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        item = paths.setdefault(r.path, {})
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", r.path)
        ]
        params += [{"name": n, "in": "query", "required": False,
                    "description": _PARAM_DOCS.get(n, ""),
                    "schema": {"type": "integer" if n in ("limit", "after") else "string"}}
                   for n in r.params]
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": (
                {"$ref": "#/components/schemas/ListResponse"} if r.list_response or "limit" in r.params
                else {"type": "object"})}}},
            "default": {"description": "Error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        }
        if r.websocket:
            responses["101"] = {"description": "WebSocket upgrade: one JSON event per message"}
        op: dict[str, Any] = {
            "operationId": r.op, "summary": r.summary, "tags": [r.tag],
            "parameters": params, "responses": responses,
        }
        if not r.auth:
            op["security"] = []
        if r.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": r.body}}}
        item[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Overcast API", "version": version,
                 "description": "Mist v2 compatible REST API of the Overcast controller"},
        "servers": [{"url": server_url}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "Authorization",
                               "description": "'Bearer <token>' or the bare token"},
                "CookieAuth": {"type": "apiKey", "in": "cookie", "name": "session.id"},
            },
            "schemas": {
                "Error": ERROR,
                "ResponseMetadata": {"type": "object", "properties": {
                    "total": {"type": "integer"}, "returned": {"type": "integer"},
                    "sort": {"type": "string"}, "start": {"type": "integer"}}},
                "ListResponse": {"type": "object", "properties": {
                    "data": {"type": "array", "items": {"type": "object"}},
                    "meta": {"$ref": "#/components/schemas/ResponseMetadata"}}},
            },
        },
        "security": [{"ApiKeyAuth": []}, {"CookieAuth": []}],
    }
