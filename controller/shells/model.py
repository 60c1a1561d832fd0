"""The shell session document, what a client sends into a live shell, and how the relay
talks back to it.

    shell/<org>/<id>   {id, machine, machine_name, cloud, user, user_id, via, login, target,
                        term, cols, rows, command, state, created, expires, started, ended,
                        duration, exit_code, reason, error, bytes_in, bytes_out, recorded,
                        recording_bytes, recording_truncated, recording_deleted, client_ip}

``state``: pending (the ticket is not used yet), open, closed (the shell ended: see
``exit_code`` and ``reason``), failed (it could not open, or broke: see ``error``), expired
(nobody used the ticket). ``user`` is who opened it (an e-mail), ``login`` the account on
the machine. Ids sort by creation time, so a reverse scan lists the newest first."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from controller.store.docs import DocKind

SHELL = DocKind("shell")

MAX_COLS = 1000
MAX_ROWS = 1000
DEFAULT_TERM = "xterm-256color"
ID_RE = re.compile(r"^[0-9a-f]{32}$")

# why a live shell ended (the session document's ``reason``)
EXIT = "exit"              # the shell itself ended (see exit_code)
CLIENT = "client"          # the WebSocket closed (the browser tab, the CLI went away)
IDLE = "idle"              # shell_idle_timeout without a keystroke or output
MAX_DURATION = "max_duration"
SHUTDOWN = "shutdown"      # the controller stopped
ERROR = "error"            # the channel could not open, or broke


def key(org: str, shell_id: str) -> str:
    return f"shell/{org}/{shell_id}"


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch, then randomness (ids sort by time)."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Keys:
    """Keystrokes (or pasted text) for the shell. Never logged, never recorded."""

    data: bytes


@dataclass(frozen=True)
class Resize:
    cols: int
    rows: int


@dataclass(frozen=True)
class Gone:
    """The client side ended: ``reason`` is CLIENT, or SHUTDOWN when the controller closed
    the connection on its way out."""

    reason: str = CLIENT


Input = Keys | Resize | Gone


class ShellClient(Protocol):
    """The browser's or the CLI's end of a live shell, as the relay sees it (the WebSocket
    route adapts its socket to this). One task calls ``receive``; another sends."""

    async def receive(self) -> Input:
        """The next thing the client sent; Gone once it went away (and every time after)."""

    async def send_output(self, data: bytes) -> None:
        """Output of the shell, as it came. Awaits while the client lags (backpressure);
        raises ConnectionError once the client is gone."""

    async def send_control(self, message: dict[str, Any]) -> None:
        """A control message (``{"type": "ready" | "exit" | "error", ...}``); never raises."""

    async def close(self) -> None:
        """End the connection; idempotent."""


def parse_control(text: str) -> tuple[bool, Resize | None]:
    """Whether a text frame is a control message, and the resize it asks for. A text frame
    is control when it is a JSON object whose ``type`` is "resize"; anything else is
    keystrokes (xterm.js sends what is typed as text). A resize whose size is not whole
    numbers in 1..1000 is control all the same, and dropped (None): never typed."""
    t = text.strip()
    if not t.startswith("{") or '"type"' not in t:
        return False, None
    try:
        msg = json.loads(t)
    except ValueError:
        return False, None
    if not isinstance(msg, dict) or msg.get("type") != "resize":
        return False, None
    cols, rows = msg.get("cols"), msg.get("rows")
    if (type(cols) is int and type(rows) is int  # noqa: E721 - bool is an int too: refuse it
            and 1 <= cols <= MAX_COLS and 1 <= rows <= MAX_ROWS):
        return True, Resize(cols, rows)
    return True, None
