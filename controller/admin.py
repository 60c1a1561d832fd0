"""The admin socket: ``<data_dir>/admin.sock`` (0600), through which admin commands reach a
running controller (RocksDB has one writer: ``overcast adduser`` cannot open the store while
the controller holds it). Whoever can open the socket file is the controller's own operator,
so it takes no other credentials; every change is audited with ``via: admin``.

When ``<data_dir>/admin.sock`` would exceed the Unix path limit, the socket lives in a private
directory ``/tmp/overcast-<uid>-<hash>`` instead (``Settings.admin_socket``):
:func:`prepare_socket_dir` makes it 0700 and refuses one somebody else made.

:func:`call` is the client side: it talks to the socket when a controller answers there, and
returns None otherwise so the caller opens the store itself. It first checks that the socket
and its directory belong to the data directory's owner (or root): a password is never sent to
a listener somebody else planted."""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import OvercastError
from controller.events.model import Actor
from controller.http.errors import errors_middleware
from controller.ops.routes import add_routes as add_ops_routes
from controller.settings import Settings


class AdminSocketError(OvercastError):
    """The admin socket cannot be used safely (somebody else's, not a socket, no permission):
    refused on this side, before anything is sent (the CLI exits 1)."""

    status = 400
    code = "admin_socket"


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
    add_ops_routes(app, main)  # backup, doctor, init
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


def prepare_socket_dir(settings: Settings) -> None:
    """Make the fallback socket directory (0700, ours) when the socket lives there; refuse to
    use one that exists but is not this user's own private directory."""
    sock = settings.admin_socket
    if Path(sock).parent == Path(settings.data_dir):
        return  # <data_dir> itself: made 0700 by the controller
    d = Path(sock).parent
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OvercastError(f"cannot make the admin socket directory {d}: "
                            f"{exc.strerror or exc}") from None
    st = os.lstat(d)
    problem = ""
    if not stat.S_ISDIR(st.st_mode):
        problem = "it is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif stat.S_IMODE(st.st_mode) & 0o077:
        problem = f"it is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise OvercastError(f"refusing to put the admin socket in {d}: {problem}; somebody else "
                            "may have made it to listen in: remove it (or check who did)")


def remove_socket(settings: Settings) -> None:
    """Remove the admin socket, and its fallback directory when it has one."""
    sock = Path(settings.admin_socket)
    try:
        sock.unlink()
    except OSError:
        pass
    if sock.parent != Path(settings.data_dir):
        try:
            sock.parent.rmdir()
        except OSError:
            pass


def _check_owner(sock_path: str, owner: int) -> bool:
    """True when the socket exists and it and its directory belong to ``owner`` or root; False
    when there is no socket; AdminSocketError when either belongs to somebody else."""
    try:
        sock_st = os.lstat(sock_path)
    except FileNotFoundError:
        return False
    d = os.path.dirname(sock_path)
    dir_st = os.lstat(d)
    for path, kind, st in ((d, "directory", dir_st), (sock_path, "socket", sock_st)):
        if st.st_uid not in (owner, 0):
            raise AdminSocketError(
                f"refusing to use the admin socket {sock_path}: its {kind} {path} is owned by "
                f"uid {st.st_uid}, not by the data directory's owner (uid {owner}) or root; "
                "somebody else may be listening there")
    if not stat.S_ISDIR(dir_st.st_mode) or dir_st.st_mode & 0o022:
        raise AdminSocketError(f"refusing to use the admin socket {sock_path}: {d} is not a "
                               "directory only its owner can write to")
    if not stat.S_ISSOCK(sock_st.st_mode):
        raise AdminSocketError(f"{sock_path} is not a socket: remove it (the controller makes "
                               "it at start)")
    return True


def _os_error(exc: OSError, path: str) -> AdminSocketError:
    if isinstance(exc, PermissionError):
        return AdminSocketError(f"no permission to use {exc.filename or path}: run this as the "
                                "user that runs the controller (or root)")
    if exc.errno == errno.ENOTDIR:
        return AdminSocketError(f"{exc.filename or path}: a part of this path is not a "
                                "directory (check --data-dir / data_dir)")
    return AdminSocketError(f"cannot use the admin socket {path}: {exc.strerror or exc}")


def call(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None,
         timeout: float = 30.0) -> dict[str, Any] | None:
    """The running controller's answer, or None when none listens on the admin socket of
    ``settings.data_dir``. An error answer raises OvercastError with the controller's message;
    so does a socket (or its directory) that is not the data directory owner's or root's."""
    sock_path = settings.admin_socket
    try:
        st = os.stat(settings.data_dir)
    except FileNotFoundError:
        return None  # no data directory: no controller, and no socket worth trusting
    except OSError as exc:
        raise _os_error(exc, settings.data_dir) from None
    if not stat.S_ISDIR(st.st_mode):
        raise AdminSocketError(f"the data directory {settings.data_dir} is not a directory")
    try:
        if not _check_owner(sock_path, st.st_uid):
            return None
    except OSError as exc:
        raise _os_error(exc, sock_path) from None
    conn = _UnixConnection(sock_path, timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as exc:
        raise _os_error(exc, sock_path) from None
    except (ValueError, http.client.HTTPException) as exc:
        raise OvercastError(f"the admin socket {sock_path} gave an answer that is not the "
                            f"controller's ({exc.__class__.__name__})") from None
    finally:
        conn.close()
    if resp.status >= 400:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        refused = OvercastError(err.get("message", f"admin call failed ({resp.status})"),
                                err.get("details"))
        refused.status = resp.status
        refused.code = err.get("code", "error")
        raise refused
    return data if isinstance(data, dict) else {"data": data}
