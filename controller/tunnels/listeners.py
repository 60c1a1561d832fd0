"""Listeners on the tunnel hub's address, so that hosts behind a tunnel reach the controller
through it: the HTTPS API (agents enrol there) and the agents' mTLS gRPC listener, both on
their usual ports at the hub address (e.g. https://100.96.0.1:7080 and 100.96.0.1:7444).

They present a certificate of the controller's own CA naming the hub address (``pki.
ensure_hub_cert``), whatever the main listeners present: agents pin that CA, and the main
certificate (and the running gRPC server's credentials, which grpc cannot reload) stay as
they are, so existing agents see no change. They start when the hub comes up (at start when
tunnels exist, else when the first gateway registers) and stop before it goes down. A
listener whose main address is a wildcard (0.0.0.0, ::) already covers the hub address and
is not duplicated (the main certificate then names the hub address: ``app.serve``).

The HTTP one needs the app's runner, which exists only once the app has started: the hub
may come up before that (at start), so the site waits for ``attach(runner)``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from aiohttp import web

from controller.pki import Pki, ensure_hub_cert
from controller.settings import Settings

log = logging.getLogger(__name__)

WILDCARD = ("0.0.0.0", "::", "")


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HubListeners:
    def __init__(self, settings: Settings, services: Any, pki: Pki | None) -> None:
        self.settings = settings
        self.services = services
        self.pki = pki
        self.address = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc: grpc.aio.Server | None = None
        self._hub_pki: Pki | None = None
        self._lock = asyncio.Lock()

    def wants_http(self, address: str) -> bool:
        return self.settings.http_host not in WILDCARD and self.settings.http_host != address

    def wants_agents(self, address: str) -> bool:
        return self.settings.agents_host not in WILDCARD and self.settings.agents_host != address

    async def up(self, address: str) -> None:
        """The hub is up at ``address``: listen there (HTTP once a runner is attached)."""
        if self.pki is None:
            return
        async with self._lock:
            self.address = address
            self._hub_pki = await asyncio.to_thread(ensure_hub_cert, self.pki, [address])
            if self._grpc is None and self.wants_agents(address):
                await self._start_agents(address, self._hub_pki)
            await self._start_http()

    async def attach(self, runner: web.AppRunner) -> None:
        """The app's runner, once it serves: the HTTP listener can start."""
        async with self._lock:
            self._runner = runner
            await self._start_http()

    async def down(self) -> None:
        """Stop both listeners (the hub goes down). Idempotent."""
        async with self._lock:
            self.address = ""
            site, self._site = self._site, None
            server, self._grpc = self._grpc, None
            if site is not None and self._runner is not None and site in self._runner.sites:
                with contextlib.suppress(Exception):
                    await site.stop()
            if server is not None:  # its agents' streams end with it (they reconnect)
                await server.stop(grace=2)

    async def _start_agents(self, address: str, hub_pki: Pki) -> None:
        from controller.agents.server import KEEPALIVE_OPTIONS, MEMORY_OPTIONS
        from controller.agents.servicer import add_to_server

        server = grpc.aio.server(options=KEEPALIVE_OPTIONS + MEMORY_OPTIONS)
        add_to_server(server, self.services)
        creds = grpc.ssl_server_credentials(
            [(hub_pki.server_key.read_bytes(), hub_pki.server_cert.read_bytes())],
            root_certificates=hub_pki.ca_pem, require_client_auth=True)
        addr = hostport(address, self.settings.agents_port)
        try:
            port = server.add_secure_port(addr, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            log.error("cannot listen for agents on the hub address %s", addr)
            return
        await server.start()
        self._grpc = server
        log.info("agents behind tunnels connect to %s (mTLS)", addr)

    async def _start_http(self) -> None:
        if (self._runner is None or self._site is not None or not self.address
                or self._hub_pki is None or not self.wants_http(self.address)):
            return
        site = web.TCPSite(self._runner, self.address, self.settings.http_port,
                           ssl_context=self._hub_pki.server_ssl_context(), reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen for HTTPS on the hub address %s: %s",
                      hostport(self.address, self.settings.http_port), exc.strerror or exc)
            return
        self._site = site
        log.info("HTTPS for hosts behind tunnels on https://%s",
                 hostport(self.address, self.settings.http_port))


LISTENERS = web.AppKey("tunnel_listeners", HubListeners)
