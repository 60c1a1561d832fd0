"""The admin socket: ``<data_dir>/admin.sock`` (0600), through which admin commands reach a
running controller (RocksDB has one writer: ``overcast adduser`` cannot open the store while
the controller holds it). Whoever can open the socket file is the controller's own operator,
so it takes no other credentials; every change is audited with ``via: admin``.

:func:`call` is the client side: it talks to the socket when a controller answers there, and
returns None otherwise so the caller opens the store itself."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import OvercastError
from controller.events.model import Actor
from controller.http.errors import errors_middleware


def admin_actor(email: str = "") -> Actor:
    return Actor(kind="admin", email=email, via="admin")


async def _adduser(request: web.Request) -> web.Response:
    services = request.app[keys.SERVICES]
    b = await request.json()
    user, org = await services.accounts.create_user(
        admin_actor(), b["email"], b["password"], is_admin=bool(b.get("admin")), org_name=b.get("org"))
    return web.json_response({"user": user, "org": {"id": org["id"], "name": org["name"]}}, status=201)


async def _verify(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.SERVICES].audit.verify().to_dict())


async def _status(request: web.Request) -> web.Response:
    s = request.app[keys.SETTINGS]
    return web.json_response({"url": s.public_url, "data_dir": s.data_dir})


def build_admin_app(main: web.Application) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024)
    app[keys.SERVICES] = main[keys.SERVICES]
    app[keys.SETTINGS] = main[keys.SETTINGS]
    app.router.add_post("/admin/users", _adduser)
    app.router.add_get("/admin/audit/verify", _verify)
    app.router.add_get("/admin/status", _status)
    return app


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def call(sock_path: str, method: str, path: str, body: dict[str, Any] | None = None,
         timeout: float = 30.0) -> dict[str, Any] | None:
    """The running controller's answer, or None when none listens on ``sock_path``.
    An error answer raises OvercastError with the controller's message."""
    conn = _UnixConnection(sock_path, timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise OvercastError(f"no permission to use {sock_path}: run this as the user that runs "
                            "the controller (or root)") from None
    finally:
        conn.close()
    if resp.status >= 400:
        err = data.get("error", {})
        exc = OvercastError(err.get("message", f"admin call failed ({resp.status})"), err.get("details"))
        exc.status = resp.status
        exc.code = err.get("code", "error")
        raise exc
    return data if isinstance(data, dict) else {"data": data}
