"""The agent's interactive shells, with real processes on real pseudo-terminals: input in,
output out, the terminal's size, the exit code, a hang-up, and shells that cannot open."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest

from agent.shell import Shells
from overcast.agent.v1 import agent_pb2 as pb


class Up:
    """What the shells send, collected."""

    def __init__(self) -> None:
        self.messages: list[pb.AgentMessage] = []

    async def send(self, msg: pb.AgentMessage) -> None:
        self.messages.append(msg)

    def output(self, sid: str = "s1") -> bytes:
        return b"".join(m.shell_data.data for m in self.messages
                        if m.WhichOneof("body") == "shell_data" and m.shell_data.session_id == sid)

    def closed(self, sid: str = "s1") -> list[pb.ShellClosed]:
        return [m.shell_closed for m in self.messages
                if m.WhichOneof("body") == "shell_closed" and m.shell_closed.session_id == sid]

    async def wait_for(self, pattern: bytes, sid: str = "s1", timeout: float = 10.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.output(sid))) is None:
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.output(sid)!r}"
            await asyncio.sleep(0.02)
        return m


def sh(sid: str = "s1", command: str = "exec /bin/sh", **kw: object) -> pb.OpenShell:
    # /bin/sh, whatever the login shell: a plain prompt and no profile to read
    return pb.OpenShell(session_id=sid, command=command, **kw)  # type: ignore[arg-type]


async def test_input_output_size_and_exit_code() -> None:
    up = Up()
    shells = Shells(up.send)
    task = shells.open("cmd-1", sh(cols=100, rows=30, term="vt100"))
    assert shells.open_sessions == ["s1"]
    shells.data("s1", b"echo hi-$((1+1))\n")  # at once: the terminal keeps it for the shell
    await up.wait_for(rb"hi-2")
    shells.data("s1", b"stty size; echo \"t=$TERM\"; tty\n")
    await up.wait_for(rb"30 100\r\n")
    await up.wait_for(rb"t=vt100\r\n/dev/pts/\d+")
    shells.resize("s1", 120, 50)
    shells.data("s1", b"stty size\n")
    await up.wait_for(rb"50 120\r\n")
    shells.data("s1", b"exit 3\n")
    await asyncio.wait_for(task, 10)
    [closed] = up.closed()
    assert closed.exit_code == 3 and closed.error == ""
    assert up.messages[-1].WhichOneof("body") == "shell_closed"
    assert shells.open_sessions == []
    shells.data("s1", b"ignored\n")  # a closed session's input goes nowhere


async def test_the_shell_has_a_controlling_terminal() -> None:
    up = Up()
    shells = Shells(up.send)
    task = shells.open("c", sh())
    # job control needs it: /dev/tty opens only with a controlling terminal
    shells.data("s1", b"echo ok > /dev/tty && echo ctty-$((6*7))\n")
    await up.wait_for(rb"ctty-42")
    shells.data("s1", b"exit\n")
    await asyncio.wait_for(task, 10)
    assert up.closed()[0].exit_code == 0


async def test_the_login_shell_by_default() -> None:
    up = Up()
    shells = Shells(up.send)
    task = shells.open("c", pb.OpenShell(session_id="s1"))
    shells.data("s1", b"echo login-$((2+3))\nexit 0\n")
    await asyncio.wait_for(task, 20)
    assert b"login-5" in up.output() and up.closed()[0].exit_code == 0


async def test_a_command_and_its_output_up_to_the_end() -> None:
    up = Up()
    shells = Shells(up.send)
    # 200 KiB at once, then exit: all of it comes up before ShellClosed
    await asyncio.wait_for(shells.open("c", sh(command="head -c 204800 /dev/zero | tr '\\0' x; exit 5")), 20)
    assert up.output().count(b"x") == 204800
    assert up.closed()[0].exit_code == 5


async def test_a_hang_up_ends_a_busy_shell() -> None:
    up = Up()
    shells = Shells(up.send)
    task = shells.open("c", sh(command="sleep 100"))
    stubborn = shells.open("c2", sh(sid="s2", command="trap '' HUP; echo ready; sleep 100"))
    await up.wait_for(b"ready", sid="s2")
    t0 = time.monotonic()
    shells.close("s1")
    shells.close("s2")
    await asyncio.wait_for(asyncio.gather(task, stubborn), 10)
    assert up.closed("s1")[0].exit_code == -signal.SIGHUP
    assert up.closed("s2")[0].exit_code == -signal.SIGKILL  # SIGHUP ignored: SIGKILL 2 s later
    assert time.monotonic() - t0 < 5


async def test_close_all_hangs_up_every_shell() -> None:
    up = Up()
    shells = Shells(up.send)
    for i in range(3):
        shells.open(f"c{i}", sh(sid=f"s{i}", command="sleep 100"))
    await asyncio.wait_for(shells.close_all(), 10)
    assert shells.open_sessions == []
    assert sorted(m.shell_closed.session_id for m in up.messages) == ["s0", "s1", "s2"]


async def test_shells_that_cannot_open() -> None:
    up = Up()
    shells = Shells(up.send, max_shells=1)
    first = shells.open("c", sh(command="sleep 100"))
    await shells.open("c", sh())  # the same session again
    assert up.closed()[0].error == "shell session s1 is already open"
    await shells.open("c2", sh(sid="s2"))
    assert "too many shells open" in up.closed("s2")[0].error
    shells.close("s1")
    await asyncio.wait_for(first, 10)
    await shells.open("c3", sh(sid="s3", user="no-such-user-overcast"))
    assert up.closed("s3")[0].error == "no user 'no-such-user-overcast' on this host"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_a_shell_as_another_user() -> None:
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    up = Up()
    shells = Shells(up.send)
    # the user's own login shell runs the command: nobody's is often nologin, which refuses
    task = shells.open("c", pb.OpenShell(session_id="s1", user="nobody", command="id -u"))
    await asyncio.wait_for(task, 10)
    [closed] = up.closed()
    if nobody.pw_shell.endswith(("nologin", "false")):
        assert closed.exit_code != 0 and closed.error == ""
    else:
        assert str(nobody.pw_uid).encode() in up.output() and closed.exit_code == 0
