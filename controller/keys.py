"""Every aiohttp AppKey of the controller, in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controller.pki import Pki
from controller.services import Services
from controller.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
PKI = web.AppKey("pki", Pki)
OPENAPI = web.AppKey("openapi", dict[str, Any])
INSTANCE = web.AppKey("instance", str)
WEBSOCKETS = web.AppKey("websockets", set[Any])  # open WebSocketResponses, closed on shutdown
