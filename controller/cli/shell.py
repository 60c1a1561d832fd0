"""``overcast ssh MACHINE``: an interactive shell on a machine through the controller (its
agent, or SSH with a key the controller holds), behaving like ssh: the local terminal in raw
mode (restored on any exit), window size changes passed on, the remote exit status as ours,
255 when there is no shell (the error on standard error). With standard input not a
terminal (a pipe, a file) the terminal is left alone and the input relayed all the same;
its end is typed as Ctrl-D once the shell is quiet (ssh -tt waits for ever there).

``overcast shells``: past sessions; their recordings downloaded, or replayed here with
their timing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from controller.cli import output
from controller.cli.client import OK, USAGE, Client, CliError, Login, _http_error
from controller.cli.clouds import client, json_opt, q

SSH_FAILED = 255   # like ssh: the shell could not be had, or was lost
EOF = b"\x04"      # Ctrl-D: what a terminal sends for the end of input
EOF_QUIET = 0.5    # seconds without output before the end of piped input is typed
EOF_PROMPT_WAIT = 5.0  # seconds to wait for the shell's first output before that


def _size() -> tuple[int, int]:
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            s = os.get_terminal_size(fd)
            if s.columns and s.lines:
                return min(s.columns, 1000), min(s.lines, 1000)
    return 80, 24


def cmd_ssh(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_ssh(args))
    except CliError as exc:
        raise CliError(exc.message, SSH_FAILED, exc.status, exc.details) from None


async def _ssh(args: argparse.Namespace) -> int:
    try:
        import aiohttp
    except ImportError:
        raise CliError("overcast ssh needs aiohttp: install overcast[controller]") from None
    login = Login.load()
    api = Client(login.url, login.token, login.ca_file)
    cols, rows = _size()
    body: dict[str, Any] = {"cols": cols, "rows": rows,
                            "term": os.environ.get("TERM") or "xterm-256color"}
    if body["term"] == "dumb" or not body["term"].replace("-", "").isalnum():
        body["term"] = "xterm-256color"
    if args.user:
        body["user"] = args.user
    if args.command:
        body["command"] = args.command
    path = f"/api/v2/machines/{q(args.machine)}/actions/ssh"
    shell = (await asyncio.to_thread(api.request, "POST", path, body))["data"]
    location = str(shell["location"])
    ctx = ssl.create_default_context(cafile=login.ca_file or None) if location.startswith("wss") else None
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(location, ssl=ctx if ctx is not None else True,
                                          heartbeat=30, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise CliError(f"the controller refused the shell's connection (HTTP {exc.status}: "
                           f"{exc.message})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CliError(f"cannot connect to the shell: {exc}") from None
        async with ws:
            return await _session(ws)


async def _session(ws: Any) -> int:
    """Relay the terminal until the shell ends; its exit status, or SSH_FAILED."""
    import aiohttp

    loop = asyncio.get_running_loop()
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    tty = os.isatty(fd_in)
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    reader = _Reader(loop, fd_in, keys)
    saved = None
    if tty:
        import termios
        import tty as tty_mod

        saved = termios.tcgetattr(fd_in)
        tty_mod.setraw(fd_in)  # every key goes to the remote shell, Ctrl-C included

        def winch() -> None:
            cols, rows = _size()
            loop.create_task(ws.send_str(json.dumps({"type": "resize", "cols": cols, "rows": rows})))

        loop.add_signal_handler(signal.SIGWINCH, winch)

    last_output = [time.monotonic()]
    ready = asyncio.Event()  # the shell is open (input sent before waits for it there)
    spoke = asyncio.Event()  # ...and has printed something since

    async def pump_in() -> None:
        while True:
            data = await keys.get()
            if data:
                await ws.send_bytes(data)
                continue
            if tty:
                return
            # the input ended: type Ctrl-D once the shell has taken what came before it
            # (output quiet for a moment); typed sooner, the terminal may lose it while the
            # shell starts. ssh -tt would wait for ever instead.
            await ready.wait()
            with contextlib.suppress(TimeoutError):  # a prompt, unless the shell prints none
                await asyncio.wait_for(spoke.wait(), EOF_PROMPT_WAIT)
            while (quiet := time.monotonic() - last_output[0]) < EOF_QUIET:
                await asyncio.sleep(EOF_QUIET - quiet)
            await ws.send_bytes(EOF)
            return

    code: int | None = None
    error = ""
    sender = loop.create_task(pump_in())
    try:
        reader.start()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                last_output[0] = time.monotonic()
                if ready.is_set():
                    spoke.set()
                _write_all(fd_out, msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                ctl = json.loads(msg.data)
                if ctl.get("type") == "ready":
                    last_output[0] = time.monotonic()
                    ready.set()
                elif ctl.get("type") == "exit":
                    code = int(ctl["code"]) if ctl.get("code") is not None else None
                elif ctl.get("type") == "error":
                    error = str(ctl.get("message") or "the shell failed")
            else:
                break
    finally:
        sender.cancel()
        reader.stop()
        if tty and saved is not None:
            import termios

            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
    if code is not None:
        return code if 0 <= code <= 255 else SSH_FAILED  # killed by a signal: as ssh does
    if not error and ws.close_code == 1001:  # "going away": the controller is stopping
        error = "the controller closed the shell: it is shutting down"
    print(f"overcast: {error or 'the connection to the shell was lost'}", file=sys.stderr)
    return SSH_FAILED


class _Reader:
    """Standard input into a queue without blocking the loop (b"" at its end). Pipes and
    terminals are watched by the loop; a regular file (``< script``) cannot be, so a
    thread reads it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, queue: asyncio.Queue[bytes]) -> None:
        self.loop, self.fd, self.queue = loop, fd, queue
        self._watching = False
        self._thread: asyncio.Future[None] | None = None

    def start(self) -> None:
        try:
            self.loop.add_reader(self.fd, self._readable)
            self._watching = True
        except (PermissionError, OSError, ValueError):
            self._thread = self.loop.run_in_executor(None, self._read_all)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
        self.queue.put_nowait(data)

    def _read_all(self) -> None:
        while True:
            data = os.read(self.fd, 65536)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, data)
            if not data:
                return

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_reader(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            time.sleep(0.01)  # a non-blocking terminal that is full: it drains quickly


# ---- overcast shells ----------------------------------------------------------------------

COLUMNS = ["id", "machine_name", "user", "via", "state", "started", "duration", "exit_code",
           "recorded"]


def cmd_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "search": args.search}
    data = client().request("GET", "/api/v2/shells", params=params)["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, COLUMNS, ["id", "machine", "user", "via", "state", "started",
                                     "seconds", "exit", "recorded"], empty="no shell sessions")
    return OK


def cmd_show(args: argparse.Namespace) -> int:
    s = client().request("GET", f"/api/v2/shells/{q(args.id)}")["data"]
    if args.json:
        output.emit_json(s)
    else:
        output.fields(s, ["id", "machine", "machine_name", "user", "via", "login", "target",
                          "state", "created", "started", "ended", "duration", "exit_code",
                          "reason", "error", "bytes_in", "bytes_out", "recorded",
                          "recording_bytes", "recording_truncated", "client_ip"])
    return OK


def _fetch(path: str) -> bytes:
    """A non-JSON download from the controller, with the saved login."""
    login = Login.load()
    req = urllib.request.Request(login.url.rstrip("/") + path)
    req.add_header("Authorization", "Bearer " + login.token)
    ctx = ssl.create_default_context(cafile=login.ca_file or None) if login.url.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:  # noqa: S310
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the controller at {login.url}: "
                       f"{getattr(exc, 'reason', exc)}", 5) from None


def _recording(ref: str) -> bytes:
    p = Path(ref)
    if ref.endswith(".cast") and p.is_file():  # a recording downloaded before
        return p.read_bytes()
    return _fetch(f"/api/v2/shells/{q(ref)}/recording")


def cmd_download(args: argparse.Namespace) -> int:
    data = _fetch(f"/api/v2/shells/{q(args.id)}/recording")
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return OK
    target = Path(args.output or f"shell-{args.id}.cast")
    target.write_bytes(data)
    print(f"saved {len(data)} bytes to {target}", file=sys.stderr)
    return OK


def cmd_replay(args: argparse.Namespace) -> int:
    from controller.shells.recording import parse

    if args.speed <= 0:
        raise CliError("--speed must be more than 0", USAGE)
    try:
        header, events = parse(_recording(args.id).decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise CliError(f"not a recording Overcast can play: {exc}") from None
    out = sys.stdout
    print(f"[replaying {header.get('title') or args.id}: {header.get('width')}x"
          f"{header.get('height')}; Ctrl-C stops]", file=sys.stderr)
    last = 0.0
    for t, code, data in events:
        pause = min(max(t - last, 0.0), args.idle_limit) / args.speed
        last = t
        if pause > 0:
            time.sleep(pause)
        if code == "o":
            out.write(data)
            out.flush()
    return OK


def register(sub: Any) -> None:
    p = sub.add_parser("ssh", help="an interactive shell on a machine (through its agent or SSH)",
                       description="Like ssh: exits with the remote shell's status, 255 when "
                                   "there is no shell.")
    p.add_argument("machine", help="machine id or name")
    p.add_argument("--user", "-l", help="the account on a machine with an agent (default: "
                                        "the agent's); over SSH the key's user")
    p.add_argument("--command", "-c", help="run this instead of the login shell")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("shells", help="shell sessions and their recordings",
                       description="Without a subcommand: list sessions, newest first.")
    json_opt(p)
    p.set_defaults(func=cmd_list, limit=100, search=None)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list sessions, newest first")
    c.add_argument("--limit", type=int, default=100)
    c.add_argument("--search", help="e.g. machine_name:web-1 state:failed")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("show", help="one session: who, which machine, when, how long, how it ended")
    c.add_argument("id")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("download", help="save a session's recording (asciicast v2)")
    c.add_argument("id")
    c.add_argument("-o", "--output", help="file to write (default shell-ID.cast; - for stdout)")
    c.set_defaults(func=cmd_download)
    c = g.add_parser("replay", help="play a recording in this terminal with its timing")
    c.add_argument("id", help="session id, or a downloaded .cast file")
    c.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast")
    c.add_argument("--idle-limit", type=float, default=2.0,
                   help="longest pause, in seconds of the recording (default 2)")
    c.set_defaults(func=cmd_replay)
