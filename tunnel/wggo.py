"""A WireGuard interface served by wireguard-go (no kernel module needed), configured through
its UAPI socket and kept alive by a supervisor thread that restarts wireguard-go when it dies
and re-applies the whole configuration, which dies with it.

Threads, not asyncio: every method blocks (a UAPI round trip or an ``ip`` command takes
milliseconds; ``up()`` waits for wireguard-go's socket, ~50 ms, 5 s at most), is safe to call
from any thread, and is called from async code through ``asyncio.to_thread`` (or
``tunnel.backend.AsyncInterface``). The supervisor is one daemon thread per interface, alive
from ``up()`` to ``down()``; it also starts every wireguard-go process, under
``setpriv --pdeathsig TERM`` where util-linux has it, so that wireguard-go ends with the
thread, and with the process that owns it if that one dies without ``down()``. Every
``LEARN_EVERY`` seconds the supervisor reads the peers (one UAPI ``get``) to remember where
peers that dial in are: a restarted hub sends to them there at once, where it would otherwise
wait for their next handshake (up to 2 minutes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from tunnel import uapi
from tunnel.config import (
    InterfaceConfig,
    Peer,
    PeerStats,
    TunnelError,
    check_name,
    parse_uapi_get,
    uapi_set,
)
from tunnel.link import Link, in_netns, parse_address, parse_route, resolve_endpoint

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"  # compiled into wireguard-go; shared by all namespaces
_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error", "PATH": os.defpath}
_MAX_DELAY = 5.0  # between restarts of a wireguard-go that keeps dying
LEARN_EVERY = 2.0  # seconds between looks at the peers' endpoints


class WireguardGo:
    """The interface ``name`` run by wireguard-go in ``netns`` (None: this namespace).

    Names are shared by all namespaces (one socket directory): pick them unique. What the
    interface is told is kept and applied again after a restart, and by a later ``up()``
    after ``down()``. A call made while a dead wireguard-go is being restarted waits for the
    restart (``start_timeout`` at most); one made while it cannot be restarted is recorded
    and applied when it is back. Raises ValueError on bad arguments and TunnelError when
    wireguard-go cannot be started, reached or refuses a setting (the message says which).
    """

    def __init__(self, name: str, netns: str | None = None, socket_dir: str = SOCKET_DIR,
                 binary: str | None = None, start_timeout: float = 5.0) -> None:
        self.name = check_name(name)
        self.netns = netns
        self.socket_path = os.path.join(socket_dir, f"{name}.sock")
        self.binary = binary if binary is not None else shutil.which("wireguard-go")
        self.start_timeout = start_timeout
        self.restarts = 0  # how often the supervisor brought wireguard-go back
        self._link = Link(name, netns)
        self._config = InterfaceConfig()
        self._lock = threading.RLock()  # the configuration and the process
        self._updown = threading.Lock()  # one up() or down() at a time
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=8)
        self._learned: dict[str, str] = {}  # endpoints seen of peers configured without one

    def __repr__(self) -> str:
        return f"WireguardGo({self.name!r}, netns={self.netns!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The process id of the running wireguard-go, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # lifecycle

    def up(self) -> None:
        """Start wireguard-go, bring the interface up with what it was told so far, and start
        supervising it. Blocks until the socket answers (``start_timeout`` at most). Nothing
        when it is up already. Raises TunnelError when it cannot start."""
        with self._updown:
            if self._thread is not None and self._thread.is_alive():
                return
            if self.binary is None:
                raise TunnelError("wireguard-go is not installed (apt-get install wireguard-go)")
            self._stop.clear()
            started = threading.Event()
            failed: list[TunnelError] = []
            thread = threading.Thread(target=self._supervise, args=(started, failed),
                                      name=f"wireguard-go {self.name}", daemon=True)
            self._thread = thread
            thread.start()
            started.wait()
            if failed:
                thread.join()
                self._thread = None
                raise failed[0]

    def down(self) -> None:
        """Stop supervising, stop wireguard-go and remove the interface and its socket.
        Blocks until wireguard-go has ended (3 s, then it is killed). Idempotent."""
        with self._updown:
            self._stop.set()
            with self._lock:
                proc, self._proc = self._proc, None
                thread, self._thread = self._thread, None
            if proc is not None:
                _terminate(proc)
            if thread is not None and thread is not threading.current_thread():
                thread.join(10)
            if proc is not None or thread is not None:
                self._link.delete()  # a TUN device goes with its process: this is for leftovers
                uapi.remove_stale(self.socket_path)

    # configuration: recorded, and sent at once when wireguard-go runs

    def configure(self, private_key: str, listen_port: int | None = None) -> None:
        """Set the private key (base64) and the UDP port to listen on (None: any; a restart
        may then pick another, which suits a side that dials out)."""
        request = uapi_set(private_key=private_key, listen_port=listen_port)
        with self._lock:
            self._now(lambda: self._uapi(request, "set the private key and listen port"))
            self._config.private_key, self._config.listen_port = private_key, listen_port

    def set_peer(self, peer: Peer) -> None:
        """Add ``peer`` or update it (its allowed IPs replace those it had). An endpoint
        given by name is resolved here, in this process's namespace: blocks on DNS, and
        raises TunnelError when the name does not resolve."""
        request = uapi_set(peers=[resolve_endpoint(peer, strict=True)])
        with self._lock:
            self._now(lambda: self._uapi(request, f"set peer {peer.public_key}"))
            self._config.peers[peer.public_key] = peer

    def remove_peer(self, public_key: str) -> None:
        """Remove the peer with this public key; nothing when there is none."""
        request = uapi_set(remove=[public_key])
        with self._lock:
            self._now(lambda: self._uapi(request, f"remove peer {public_key}"))
            self._config.peers.pop(public_key, None)
            self._learned.pop(public_key, None)

    def set_address(self, *cidrs: str) -> None:
        """Make these the interface's addresses ("100.96.0.1/16"; IPv4 and IPv6)."""
        new = [parse_address(c) for c in cidrs]
        with self._lock:
            old = self._config.addresses
            self._now(lambda: self._link.replace_addresses(new, old))
            self._config.addresses = new

    def add_route(self, cidr: str) -> None:
        """Route ``cidr`` through the interface (``ip route replace CIDR dev NAME``)."""
        route = parse_route(cidr)
        with self._lock:
            self._now(lambda: self._link.add_route(route))
            if route not in self._config.routes:
                self._config.routes.append(route)

    def remove_route(self, cidr: str) -> None:
        """Stop routing ``cidr`` through the interface; nothing when it was not."""
        route = parse_route(cidr)
        with self._lock:
            self._now(lambda: self._link.remove_route(route))
            if route in self._config.routes:
                self._config.routes.remove(route)

    # state

    def peers(self) -> dict[str, PeerStats]:
        """Each peer's latest handshake, bytes and endpoint, by base64 public key. Raises
        TunnelError when the interface is not up, or is being restarted."""
        return self.status()[1]

    def listen_port(self) -> int:
        """The UDP port wireguard-go listens on (the one it picked, when told None)."""
        return self.status()[0]

    def status(self) -> tuple[int, dict[str, PeerStats]]:
        """The listen port and the peers, in one UAPI ``get``."""
        with self._lock:
            if self._proc is None:
                raise TunnelError(f"tunnel interface {self.name} is not up")
            port, peers = parse_uapi_get(self._uapi("get=1\n\n", "report its state"))
            for key, stats in peers.items():
                peer = self._config.peers.get(key)
                if peer is not None and peer.endpoint is None and stats.endpoint:
                    self._learned[key] = stats.endpoint
            return port, peers

    # internals

    def _now(self, action: Callable[[], object]) -> None:
        """Run ``action`` when wireguard-go runs. Before ``up()``, or while a dead one is being
        restarted, there is nothing to do: the recorded configuration is applied at start."""
        proc = self._proc
        if proc is None:
            return
        try:
            action()
        except TunnelError as e:
            if isinstance(e, uapi.Refused) or proc.poll() is None:
                raise
            log.info("%s: wireguard-go is being restarted; applied when it is back (%s)", self.name, e)

    def _uapi(self, request: str, what: str) -> str:
        return uapi.exchange(self.socket_path, request, f"wireguard-go of {self.name}", what)

    def _supervise(self, started: threading.Event, failed: list[TunnelError]) -> None:
        try:
            with self._lock:
                proc = self._start()
        except TunnelError as e:
            failed.append(e)
            started.set()
            return
        started.set()
        delay = 0.05
        while True:
            born = time.monotonic()
            code = self._wait(proc, learn=True)
            if self._stop.is_set():
                return
            log.warning("wireguard-go of %s ended (exit status %s%s); restarting it and applying "
                        "its configuration again", self.name, code, self._last_words())
            if time.monotonic() - born > 30:
                delay = 0.05
            while True:
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, _MAX_DELAY)
                try:
                    with self._lock:
                        if self._stop.is_set():
                            return
                        proc = self._start()
                except TunnelError as e:
                    log.error("could not restart wireguard-go of %s: %s; trying again in %.1f s",
                              self.name, e, delay)
                    continue
                self.restarts += 1
                log.info("wireguard-go of %s restarted (pid %s)", self.name, proc.pid)
                break

    def _start(self) -> subprocess.Popen[bytes]:
        """Start wireguard-go and apply the configuration; the lock is held. Raises
        TunnelError (and leaves no process) when either fails."""
        self._proc = proc = self._spawn()
        try:
            self._apply()
        except TunnelError:
            self._proc = None
            _terminate(proc)
            raise
        return proc

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.binary is not None
        uapi.remove_stale(self.socket_path)
        if os.path.exists(self.socket_path):
            raise TunnelError(f"another wireguard-go serves an interface named {self.name} "
                              f"({self.socket_path}): names are shared by all namespaces")
        argv = in_netns(self.netns, [self.binary, "-f", self.name])
        setpriv, ip = shutil.which("setpriv"), shutil.which("ip")
        if self.netns and ip:
            argv[0] = ip
        if setpriv:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        self._output.clear()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=_ENV, start_new_session=True)
        except OSError as e:
            raise TunnelError(f"could not start wireguard-go for {self.name}: {e}") from None
        deadline = time.monotonic() + self.start_timeout
        while not uapi.answers(self.socket_path):
            if proc.poll() is not None:
                self._wait(proc)
                raise TunnelError(f"wireguard-go for {self.name} ended at start (exit status "
                                  f"{proc.returncode}{self._last_words()})")
            if time.monotonic() > deadline:
                _terminate(proc)
                raise TunnelError(f"wireguard-go for {self.name} did not open {self.socket_path} "
                                  f"within {self.start_timeout:g} s")
            time.sleep(0.01)
        log.debug("wireguard-go for %s started (pid %s)", self.name, proc.pid)
        return proc

    def _apply(self) -> None:
        """Everything recorded, on a new wireguard-go: the link up, the key, the port and the
        peers in one request, then the addresses and routes."""
        c = self._config
        self._link.set_up()
        # A peer that dials in (a gateway, seen from the hub) is given the endpoint it was last
        # seen at (by the supervisor's look every LEARN_EVERY s, or peers()), so that the hub
        # can reach it again at once instead of waiting for its next handshake (up to 2 min).
        peers = [resolve_endpoint(replace(p, endpoint=self._learned.get(key)), strict=False)
                 if p.endpoint is None else resolve_endpoint(p, strict=False)
                 for key, p in c.peers.items()]
        self._uapi(uapi_set(c.private_key, c.listen_port, peers, replace_peers=True),
                   "apply its configuration")
        try:
            self._link.replace_addresses(c.addresses)
            for route in c.routes:
                self._link.add_route(route)
        except TunnelError as e:  # the tunnel works without them; say so, keep it up
            log.error("tunnel interface %s: %s", self.name, e)

    def _wait(self, proc: subprocess.Popen[bytes], learn: bool = False) -> int:
        """Read wireguard-go's output until it ends; its exit status. With ``learn``, also
        look at its peers every ``LEARN_EVERY`` seconds, to know where those that dial in
        are should it have to be restarted."""
        assert proc.stdout is not None
        fd, pending = proc.stdout.fileno(), b""
        next_look = time.monotonic() + LEARN_EVERY
        with proc.stdout:
            while True:
                ready, _, _ = select.select([fd], [], [], max(0.0, next_look - time.monotonic()))
                if not ready:  # time to look
                    next_look = time.monotonic() + LEARN_EVERY
                    if learn and not self._stop.is_set():
                        with contextlib.suppress(TunnelError):  # not up: down() is under way
                            self.status()
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    if line and line[0] not in "┌│└":  # its banner about the kernel module
                        self._output.append(line)
                        log.debug("wireguard-go %s: %s", self.name, line)
        return proc.wait()

    def _last_words(self) -> str:
        return f": {self._output[-1]}" if self._output else ""


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

