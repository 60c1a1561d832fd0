"""A real local AWS for the tests: ``python -m moto.server`` on a free loopback port.

    server = start_moto()          # blocks until it answers (~1 s)
    server.url                     # "http://127.0.0.1:PORT", the ``endpoint`` of an amazon cloud
    server.reset()                 # empty every service (and switch auth enforcement off)
    server.stop()

In a test module, ``moto = moto_fixture("module")`` declares a fixture named ``moto`` that
starts one server for the module (or the session) and stops it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# any key works while auth is not enforced; tests that enforce it make real IAM keys
ACCESS_KEY = "AKIAOVERCASTTEST0001"
SECRET_KEY = "overcast-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: bytes = b"", timeout: float = 5.0) -> bytes:
    # not form-encoded: moto reads the raw body of reset-auth (flask would parse a form away)
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback only)
        body: bytes = resp.read()
        return body


class MotoServer:
    """One moto server process. Not thread-safe; owned by the fixture that started it."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log

    def reset(self) -> None:
        """Empty every moto backend (instances, volumes, VPCs, zones, IAM) and stop enforcing
        auth, so each test starts from the same blank account."""
        _post(f"{self.url}/moto-api/reset")
        _post(f"{self.url}/moto-api/reset-auth", b"inf")

    def enforce_auth(self, free_requests: int = 0) -> None:
        """From now on (after ``free_requests`` unchecked AWS calls, e.g. to create an IAM user
        and its access key) moto checks signatures and IAM permissions like AWS does."""
        _post(f"{self.url}/moto-api/reset-auth", str(free_requests).encode())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self.log.unlink()
        except OSError:
            pass


def start_moto(timeout: float = 30.0) -> MotoServer:
    """Start moto on a free loopback port and wait until it answers. Raises RuntimeError (with
    the end of its log) when it exits or does not answer within ``timeout`` seconds."""
    port = _free_port()
    fd, log_name = tempfile.mkstemp(prefix="moto-", suffix=".log")
    log = Path(log_name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MOTO_")) and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    server = MotoServer(port, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"moto exited with {proc.returncode}:\n{tail}")
        try:
            server.reset()
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                tail = server.log_tail()
                server.stop()
                raise RuntimeError(f"moto did not answer within {timeout} s:\n{tail}") from None
            time.sleep(0.1)


def moto_fixture(scope: str = "session") -> Any:
    """A pytest fixture (assign it to the name ``moto`` in a test module or conftest) that
    starts one moto server for ``scope`` and stops it afterwards."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload, untyped-decorator, unused-ignore]
    def moto() -> Iterator[MotoServer]:
        server = start_moto()
        try:
            yield server
        finally:
            server.stop()

    return moto
