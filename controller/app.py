"""The controller process: one asyncio loop serving HTTP (REST + WebSocket, aiohttp), gRPC
(grpc.aio) and the admin socket; clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from controller import keys
from controller.accounts import routes as account_routes
from controller.admin import build_admin_app, prepare_socket_dir, remove_socket
from controller.agents import routes as agent_routes
from controller.agents.server import agents_server
from controller.agents.upgrade import Upgrades
from controller.audit import routes as audit_routes
from controller.clouds import routes as cloud_routes
from controller.errors import Invalid, OvercastError
from controller.events import routes as event_routes
from controller.exec import routes as exec_routes
from controller.grpcapi.servicer import add_to_server
from controller.http import openapi, system
from controller.http.api import Route, wrap
from controller.http.errors import errors_middleware
from controller.install import routes as install_routes
from controller.jobs import routes as job_routes
from controller.log import AccessLogger
from controller.machines import routes as machine_routes
from controller.monitor import routes as monitor_routes
from controller.monitoring import routes as monitoring_routes
from controller.notify import routes as notify_routes
from controller.pki import Pki, ensure_pki
from controller.rules import routes as rule_routes
from controller.schedules import routes as schedule_routes
from controller.scripts import routes as script_routes
from controller.services import Services, build_services
from controller.settings import Settings
from controller.shells import routes as shell_routes
from controller.sshkeys import routes as key_routes
from controller.store import StoreLocked, open_store, set_memory
from controller.threads import named_pool
from controller.tunnels import routes as tunnel_routes
from controller.tunnels.listeners import LISTENERS, WILDCARD, HubListeners
from controller.tunnels.model import TunnelsUnavailable
from overcast import __version__

log = logging.getLogger(__name__)


def all_routes() -> list[Route]:
    tables = (system.routes, account_routes.routes, account_routes.org_routes,
              account_routes.user_routes, machine_routes.routes, audit_routes.routes,
              event_routes.routes, agent_routes.routes, monitor_routes.routes,
              monitor_routes.metrics_routes,
              cloud_routes.routes, cloud_routes.inventory, job_routes.routes, key_routes.routes,
              exec_routes.routes, script_routes.routes, shell_routes.routes,
              tunnel_routes.routes, install_routes.routes, schedule_routes.routes,
              rule_routes.routes, rule_routes.incident_routes, notify_routes.routes,
              monitoring_routes.routes)
    return [r for t in tables for r in t.routes]


def _add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    for r in routes:
        app.router.add_route(r.method, r.path, wrap(r))


def build_app(settings: Settings, services: Services, pki: Pki | None) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.SERVICES] = services
    if pki is not None:
        app[keys.PKI] = pki
    app[keys.INSTANCE] = uuid.uuid4().hex
    sockets: set[Any] = set()
    app[keys.WEBSOCKETS] = sockets
    install_routes.setup(app)  # the agent's package, built on first use
    app[agent_routes.UPGRADES] = Upgrades(services.agents, services.agentlink, services.registry,
                                          services.jobs, services.writer)
    routes = all_routes()
    _add_routes(app, routes)
    app[keys.OPENAPI] = openapi.build(routes, __version__, settings.public_url)
    app.on_startup.append(_bind_bus)
    app.on_shutdown.append(_close_websockets)
    app.cleanup_ctx.append(_grpc_server(pki))
    app.cleanup_ctx.append(_maintenance)
    app.cleanup_ctx.append(_clouds)
    app.cleanup_ctx.append(shell_routes.lifecycle)
    app.cleanup_ctx.append(schedule_routes.lifecycle)
    app.cleanup_ctx.append(rule_routes.lifecycle)
    app.cleanup_ctx.append(monitoring_routes.lifecycle)
    app.cleanup_ctx.append(monitor_routes.lifecycle)  # the TSDB's compaction, /metrics
    listeners = HubListeners(settings, services, pki)
    app[LISTENERS] = listeners
    services.tunnels.hub.on_up.append(listeners.up)
    services.tunnels.hub.on_down.append(listeners.down)
    app.cleanup_ctx.append(_tunnels(pki))
    if pki is not None:
        app.cleanup_ctx.append(agents_server(pki))
    return app


async def _maintenance(app: web.Application) -> AsyncIterator[None]:
    """Bookkeeping on a timer: write the pending "N refusals left out" audit summaries every
    minute, and delete expired sessions every hour."""
    services = app[keys.SERVICES]

    async def loop() -> None:
        minute = 0
        while True:
            await asyncio.sleep(60)
            minute += 1
            try:
                services.accounts.flush_suppressed()
                if minute % 60 == 1:
                    n = await asyncio.to_thread(services.accounts.sweep_expired)
                    if n:
                        log.info("deleted %d expired sessions", n)
            except Exception:
                log.exception("maintenance run failed")

    task = asyncio.create_task(loop(), name="maintenance")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _clouds(app: web.Application) -> AsyncIterator[None]:
    """The cloud pollers and the jobs: jobs a stopped controller left running are failed,
    every cloud gets its poller; on the way out, running jobs and pollers are cancelled and
    the provider connections closed."""
    services = app[keys.SERVICES]
    n = await asyncio.to_thread(services.jobs.fail_interrupted)
    if n:
        log.warning("%d job(s) were interrupted by the last stop: marked failed", n)
    services.pollers.start()
    yield
    await services.pollers.stop()
    await services.jobs.cancel_all()
    services.clouds.runner.close()


def _tunnels(pki: Pki | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        """The tunnel hub: up at start when tunnels exist (a host that cannot run WireGuard
        logs why, and tunnel endpoints answer 503 while the rest runs), its gateways' health
        read every tunnel_health_interval, and the interface removed on the way out."""
        tunnels = app[keys.SERVICES].tunnels
        if pki is not None:
            tunnels.ca_fingerprint = pki.ca_fingerprint
        try:
            await tunnels.start_hub(only_if_tunnels=True)
        except TunnelsUnavailable as exc:
            log.warning("%s", exc.message)

        async def loop() -> None:
            while True:
                await asyncio.sleep(app[keys.SETTINGS].tunnel_health_interval)
                if not tunnels.hub.is_up:
                    continue
                try:
                    await tunnels.watch_once()
                except Exception:
                    log.exception("reading the tunnels' health failed")

        task = asyncio.create_task(loop(), name="tunnel health")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await tunnels.hub.close()

    return ctx


async def _bind_bus(app: web.Application) -> None:
    app[keys.SERVICES].bus.bind(asyncio.get_running_loop())


async def _close_websockets(app: web.Application) -> None:
    sockets: set[Any] = app[keys.WEBSOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server shutting down")


def _grpc_server(pki: Pki | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_to_server(server, app[keys.SERVICES])
        host = settings.grpc_host
        addr = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        tls = settings.grpc_tls_enabled
        if tls and pki is None:  # never plaintext where TLS was asked for
            raise OvercastError(f"gRPC on {addr} needs TLS, but there is no certificate")
        if tls and pki is not None:
            creds = grpc.ssl_server_credentials(
                [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())])
            add = functools.partial(server.add_secure_port, addr, creds)
        else:
            add = functools.partial(server.add_insecure_port, addr)
        try:
            port = add()
        except RuntimeError:  # grpc raises this (not a 0 port) when the address is taken
            port = 0
        if port == 0:
            raise OvercastError(f"cannot listen for gRPC on {addr}")
        await server.start()
        log.info("gRPC listening on %s%s", addr, " (TLS)" if tls else "")
        yield
        app[keys.SERVICES].bus.close()  # end WatchEvents streams, else they hold the stop up
        await server.stop(grace=2)

    return ctx


def open_data_dir(settings: Settings) -> Services:
    """The data directory (made 0700) and the store in it; OvercastError saying what is wrong
    with the directory rather than a traceback."""
    d = Path(settings.data_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not d.is_dir():
            raise NotADirectoryError(20, "not a directory", str(d))
        os.chmod(d, 0o700)
        if not os.access(d, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(13, "no permission to read and write it", str(d))
    except FileExistsError:
        raise OvercastError(f"data directory {d} is not a directory (setting: data_dir)") from None
    except OSError as exc:
        what = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(d) else ""
        raise OvercastError(f"data directory {d}: {what}{where} (setting: data_dir)") from None
    set_memory(settings.store_cache_mib << 20, settings.store_write_buffer_mib << 20)
    try:
        store = open_store(d / "store")
    except StoreLocked:
        raise OvercastError(f"another controller is running on {d} (its store is locked)") from None
    except OvercastError:
        raise
    except Exception as exc:  # rocksdict raises plain Exception (and OSError) with RocksDB's text
        what = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise OvercastError(f"cannot open the store in {d / 'store'}: {what}") from None
    return build_services(settings, store)


def _check_external_url(settings: Settings, instance: str, pki: Pki | None) -> None:
    """Fetch <external_url>/api/v2/health and insist that this very process answers."""
    url = settings.public_url + "/api/v2/health"
    ctx = None
    if url.startswith("https"):
        # the system's trust store (a certificate of the operator's, or a proxy's public one)
        # and this controller's own CA (the certificate it makes for itself)
        ctx = ssl.create_default_context()
        if pki is not None:
            ctx.load_verify_locations(cafile=str(pki.ca_cert))
    hint = ("set external_url (OVERCAST_EXTERNAL_URL) to the address users and agents reach, "
            "or check_external_url = false if this host cannot reach itself that way")
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Invalid(f"external_url check: {url} did not answer ({reason}); {hint}",
                      field="external_url") from None
    if body.get("instance") != instance:
        raise Invalid(f"external_url check: {url} is answered by another server, not this "
                      f"controller; {hint}", field="external_url")


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    settings.validate()
    services = open_data_dir(settings)
    hosts = [h for h in {urlsplit(settings.public_url).hostname or "", settings.http_host,
                         settings.grpc_host} if h and h not in ("0.0.0.0", "::")]
    if settings.http_host in WILDCARD or settings.agents_host in WILDCARD:
        # a wildcard listener answers on the tunnel hub's address too (hosts behind tunnels
        # reach it there): its certificate names that address
        hosts.append(services.tunnels.hub_address())
    try:
        try:
            pki = ensure_pki(settings.data_dir, hosts, settings.tls_cert, settings.tls_key)
        except (OSError, ValueError) as exc:
            raise OvercastError(f"cannot set up the certificates in {settings.data_dir}/pki: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        try:  # load the certificate and its key now: a malformed pair names the setting
            pki.server_ssl_context()
        except (OSError, ValueError) as exc:
            if settings.tls_cert:
                raise Invalid(f"tls_cert {settings.tls_cert} and tls_key {settings.tls_key} are "
                              f"not a usable PEM certificate and matching key ({exc})",
                              field="tls_cert") from None
            raise OvercastError(f"the server certificate in {settings.data_dir}/pki does not "
                                f"load ({exc}); remove server.crt and server.key to make new "
                                "ones") from None
        prepare_socket_dir(settings)
    except BaseException:
        services.store.close()
        raise
    app = build_app(settings, services, pki)
    admin = build_admin_app(app)
    runner = web.AppRunner(app, access_log=logging.getLogger("overcast.access"),
                           access_log_class=AccessLogger,
                           handle_signals=False, shutdown_timeout=5)
    admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # the pool behind asyncio.to_thread (ingest's synced writes, blocking reads) with OS
    # thread names, so that top -H tells it from RocksDB's and grpc's threads
    loop.set_default_executor(named_pool("oc-io"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        await admin_runner.setup()
        ssl_ctx = pki.server_ssl_context() if settings.tls_enabled else None
        site = web.TCPSite(runner, settings.http_host, settings.http_port, ssl_context=ssl_ctx,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise OvercastError(f"cannot listen for HTTP on {settings.http}: "
                                f"{exc.strerror or exc}") from None
        await app[LISTENERS].attach(runner)  # HTTPS on the tunnel hub's address, when up
        sock = settings.admin_socket
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)  # left by a controller that was killed
        old = os.umask(0o177)
        try:
            await web.UnixSite(admin_runner, sock).start()
        finally:
            os.umask(old)
        if settings.check_external_url:
            await asyncio.to_thread(_check_external_url, settings, app[keys.INSTANCE], pki)
        log.info("Overcast %s serving %s (HTTP on %s, gRPC on %s)", __version__,
                 settings.public_url, settings.http, settings.grpc)
        print(f"overcast controller ready: {settings.public_url} (gRPC {settings.grpc}; "
              f"CA fingerprint sha256:{pki.ca_fingerprint})", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()
        remove_socket(settings)
        services.store.close()
