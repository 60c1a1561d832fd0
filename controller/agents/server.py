"""The agents' gRPC listener (mutual TLS: client certificates from our CA) and the background
work that goes with it: metric ingest, and marking agents that did not come back after a
restart unreachable. One aiohttp cleanup context owns all of it. (The TSDB's rollups and
retention run in controller.monitor.compact.)"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from controller import keys
from controller.agents.servicer import add_to_server
from controller.errors import OvercastError
from controller.pki import Pki, own_server_pki

log = logging.getLogger(__name__)

# Dead peers are found within 30 s on both sides: a ping every 20 s unanswered for 10 s ends
# the stream (agents ping as often: agent/control.py). Pinging every 10 s cost ~9 ms of CPU
# a second per 1,000 idle agents (TLS records and wake-ups on both sides) for nothing more.
# Agents may ping every 10 s even without calls in flight (older agents do).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]

# Memory per connection (bench/agents_scale_bench.py; ~75 KiB of it is grpcio's and
# BoringSSL's own buffers for a TLS connection, which no option changes): the TLS frame
# protector's buffer at 4 KiB instead of 16 (the controller sends small messages; larger
# ones go out as several records) saves ~6 KiB, no channelz bookkeeping ~1.5 KiB.
MEMORY_OPTIONS = [
    ("grpc.tsi.max_frame_size", 4096),
    ("grpc.enable_channelz", 0),
]

# Thousands of streams keep a large heap of long-lived objects (sessions, tasks, coroutines)
# and every metric batch in the first form (agents before the compact one) makes ~200
# short-lived containers (a labels dict and a tuple per sample) that live until their group
# is stored. With CPython's default thresholds (700, 10,
# 10) those get promoted and the collector walks the whole heap again and again: ~12 % of the
# controller's CPU at 3,000 agents, and its pauses made the p99 acknowledgement ~400 ms
# (bench/agents_scale_bench.py). Collecting the young generation every 50,000 allocations
# instead lets batches die young; reference cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 20)


def agents_server(pki: Pki) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        services = app[keys.SERVICES]
        services.agents.pki = pki
        if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
            gc.set_threshold(*GC_THRESHOLDS)
        server = grpc.aio.server(options=KEEPALIVE_OPTIONS + MEMORY_OPTIONS)
        add_to_server(server, services)
        # agents pin the own CA: with an operator's tls_cert they get one of the own CA's
        names = [h for h in {settings.agents_host,
                             settings.agents_public_endpoint.rsplit(":", 1)[0].strip("[]"),
                             urlsplit(settings.public_url).hostname or ""}
                 if h and h not in ("0.0.0.0", "::")]
        own = await asyncio.to_thread(own_server_pki, pki, names or ["localhost"])
        creds = grpc.ssl_server_credentials(
            [(own.server_key.read_bytes(), own.server_cert.read_bytes())],
            root_certificates=pki.ca_pem, require_client_auth=True)
        host = settings.agents_host
        addr = f"[{host}]:{settings.agents_port}" if ":" in host else f"{host}:{settings.agents_port}"
        try:
            port = server.add_secure_port(addr, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OvercastError(f"cannot listen for agents on {addr}")
        await server.start()
        log.info("agents connect to %s (listening on %s, mTLS)", settings.agents_public_endpoint, addr)
        tasks = [asyncio.create_task(services.ingestor.run(), name="ingest"),
                 asyncio.create_task(_stale_after_grace(services, settings.agent_grace), name="stale")]
        yield
        services.registry.end_all("the controller is shutting down")
        await server.stop(grace=2)
        await services.ingestor.flush()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    return ctx


async def _stale_after_grace(services: Any, grace: int) -> None:
    await asyncio.sleep(grace)
    n = services.agents.mark_stale_unreachable(services.registry.connected_ids())
    if n:
        log.info("%d agents did not reconnect within %d s: marked unreachable", n, grace)
