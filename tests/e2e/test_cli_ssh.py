"""``overcast ssh`` and ``overcast shells`` as a user runs them: a real controller, a machine
on a real sshd in a network namespace, the CLI as a subprocess. Piped input is relayed and
the remote exit status is ours; a terminal (a pseudo-terminal here) is put in raw mode,
its size and size changes reach the shell, and it is restored at the end; failures exit
255 like ssh; sessions are listed, shown, downloaded and replayed."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.shells.recording import parse
from tests.support import sshd as sshd_support
from tests.support.clouds import poll
from tests.support.controller import OVERCAST, ROOT, Controller, Http
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]


@dataclass
class World:
    c: Controller
    h: Http
    env: dict[str, str]   # OVERCAST_URL and OVERCAST_TOKEN: the CLI's login
    machine: dict[str, Any]
    tmp: Path


@pytest.fixture(scope="module")
def world(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cli-ssh")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(150, 199)) as lab:
        sshd = sshd_support.Sshd(lab.add_host(), tmp / "sshd", hostname="occli-ssh")
        sshd.authorize(key.export_public_key().decode())
        with sshd:
            h = controller.session()
            r = h.post("/api/v2/clouds", {"name": "CLI rack", "provider": "other", "credentials": {
                "hosts": [{"host": sshd.host.address, "alias": "clibox",
                           "key": key.export_private_key().decode()}]}})
            assert r.status == 201, r.body
            poll(h, r.body["data"]["id"])
            [m] = [m for m in h.get("/api/v2/machines?limit=1000").body["data"]
                   if m["name"] == "clibox"]
            env = {"OVERCAST_URL": controller.url, "OVERCAST_TOKEN": controller.token(name="cli-ssh")}
            yield World(controller, h, env, m, tmp)


def test_piped_input_is_relayed_and_the_exit_status_is_the_shells(world: World) -> None:
    r = world.c.cli("ssh", "clibox", input="echo cli-$((2+2))\nexit 5\n", env=world.env)
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert "cli-4" in r.stdout and r.stderr == ""
    # the end of the input ends a shell that was not told to exit (Ctrl-D), like ssh -tt
    r = world.c.cli("ssh", world.machine["id"], input="echo eof-$((3+3))\n", env=world.env)
    assert r.returncode == 0 and "eof-6" in r.stdout, (r.stdout, r.stderr)
    r = world.c.cli("ssh", "clibox", "--command", "echo cmd-ok; exit 9", input="", env=world.env)
    assert r.returncode == 9 and "cmd-ok" in r.stdout, (r.stdout, r.stderr)


def test_failures_exit_255_with_the_reason(world: World) -> None:
    r = world.c.cli("ssh", "no-such-machine", input="", env=world.env)
    assert r.returncode == 255 and "no such machine" in r.stderr
    dead = dict(world.env, OVERCAST_URL="http://127.0.0.1:9")
    r = world.c.cli("ssh", "clibox", input="", env=dead)
    assert r.returncode == 255 and "cannot reach the controller" in r.stderr
    r = world.c.cli("ssh", "clibox", "--user", "someone-else", input="", env=world.env)
    assert r.returncode == 255 and "logs in as root" in r.stderr
    r = world.c.cli("ssh", "clibox", input="", env={"OVERCAST_URL": "", "OVERCAST_TOKEN": ""})
    assert r.returncode == 255 and "not logged in" in r.stderr


# ---- on a terminal --------------------------------------------------------------------------

def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Pty:
    """``overcast ssh`` on a pseudo-terminal: we hold the master side, as a terminal would."""

    def __init__(self, world: World, *args: str) -> None:
        self.master, self.slave = os.openpty()
        _set_size(self.slave, 40, 120)
        env = world.c.env()
        env.update(world.env, TERM="xterm-256color")
        self.proc = subprocess.Popen([*OVERCAST, *args], stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=env, cwd=str(ROOT),
                                     start_new_session=True)
        self.out = b""

    def expect(self, pattern: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.out!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:  # EIO: every holder of the terminal's other side is gone
                    time.sleep(0.05)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def lflag(self) -> int:
        return int(termios.tcgetattr(self.slave)[3])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_a_terminal_is_raw_sized_resized_and_restored(world: World) -> None:
    t = Pty(world, "ssh", "clibox")
    try:
        before = t.lflag()
        assert before & termios.ICANON and before & termios.ECHO
        t.expect(rb"root@occli-ssh")  # the prompt: the shell is open
        raw = t.lflag()
        assert not raw & termios.ICANON and not raw & termios.ECHO and not raw & termios.ISIG
        t.type(b"stty size\r")
        t.expect(rb"40 120\r\n")
        _set_size(t.slave, 33, 99)
        t.proc.send_signal(signal.SIGWINCH)  # what the terminal sends its foreground process
        time.sleep(0.3)
        t.type(b"stty size\r")
        t.expect(rb"33 99\r\n")
        t.type(b"\x03")  # Ctrl-C goes to the remote shell, not to us
        time.sleep(0.3)
        assert t.proc.poll() is None
        t.type(b"exit 7\r")
        assert t.proc.wait(20) == 7
        assert t.lflag() == before  # the terminal is as it was
    finally:
        t.close()


# ---- past sessions --------------------------------------------------------------------------

def test_sessions_are_listed_shown_downloaded_and_replayed(world: World) -> None:
    r = world.c.cli("ssh", "clibox", input="echo replay-$((5*5))\nexit 0\n", env=world.env)
    assert r.returncode == 0 and "replay-25" in r.stdout
    r = world.c.cli("shells", "list", "--json", env=world.env)
    assert r.returncode == 0, r.stderr
    newest = json.loads(r.stdout)[0]
    assert newest["machine_name"] == "clibox" and newest["exit_code"] == 0
    r = world.c.cli("shells", "--json", "show", newest["id"], env=world.env)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "closed"
    r = world.c.cli("shells", "list", env=world.env)
    assert r.returncode == 0 and newest["id"] in r.stdout and "clibox" in r.stdout
    target = world.tmp / "one.cast"
    r = world.c.cli("shells", "download", newest["id"], "-o", str(target), env=world.env)
    assert r.returncode == 0, r.stderr
    header, events = parse(target.read_text())
    assert header["title"] == "clibox"
    assert "replay-25" in "".join(d for _, c, d in events if c == "o")
    r = world.c.cli("shells", "replay", newest["id"], "--speed", "50", env=world.env)
    assert r.returncode == 0 and "replay-25" in r.stdout, r.stderr
    r = world.c.cli("shells", "replay", str(target), "--speed", "50", env=world.env)
    assert r.returncode == 0 and "replay-25" in r.stdout
    r = world.c.cli("shells", "show", "0" * 32, env=world.env)
    assert r.returncode == 4 and "no such shell" in r.stderr
