"""Who the agent's children run as and with what environment, shared by runs (agent.exec)
and shells (agent.shell); and the one process-wide setting their forks need.

Nothing here blocks for long (passwd lookups); :func:`run_as` raises :class:`Refused`."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

# Children forked while gRPC's threads are busy often crash in gRPC's fork handlers
# (grpc/grpc#31885), and Popen forks (not vforks) for a user switch or a preexec_fn. Ours
# exec at once and never use gRPC. Read when gRPC loads: agent.control imports this first
# (through agent.exec); agent.__main__ and the lean restart set it in the environment.
if "grpc" in sys.modules and os.environ.get("GRPC_ENABLE_FORK_SUPPORT") != "0":
    log.warning("gRPC was loaded before agent.proc: runs as another user and shells may crash")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

Send = Callable[[pb.AgentMessage], Awaitable[None]]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Refused(Exception):
    """This host will not (or cannot) run the command; the message says why, to the controller."""


# ---- who and with what environment ---------------------------------------------------------

@dataclass(frozen=True)
class RunAs:
    """Who a process runs as: the agent's own user (``switch`` False) or another one."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    switch: bool

    def popen_kwargs(self) -> dict[str, Any]:
        """Popen's own user switch (no preexec_fn): groups, then gid, then uid, in the child."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid,
                "extra_groups": os.getgrouplist(self.name, self.gid)}

    def workdir(self) -> str:
        return self.home if os.path.isdir(self.home) else "/"


def run_as(user: str) -> RunAs:
    """The account ``user`` names ("" or the agent's own: the agent's). Raises Refused for an
    unknown user, and for another user when the agent is not root (it could not switch)."""
    me = os.geteuid()
    try:
        own = pwd.getpwuid(me)
    except KeyError:  # a uid without a passwd entry (containers)
        own = pwd.struct_passwd((str(me), "x", me, os.getegid(), "", "/", "/bin/sh"))
    if user and user != own.pw_name:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise Refused(f"no user {user!r} on this host") from None
        if pw.pw_uid != me:
            if me != 0:
                raise Refused(f"cannot run as {user!r}: the agent runs as {own.pw_name}, not as root")
            return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/sh", True)
        own = pw  # another name for the agent's uid
    return RunAs(own.pw_name, me, os.getegid(), own.pw_dir, own.pw_shell or "/bin/sh", False)


def base_env(who: RunAs) -> dict[str, str]:
    """What a process starts with: none of the agent's own environment (it may hold the
    agent's settings), only what a login would set."""
    return {"PATH": PATH, "HOME": who.home, "LANG": "C.UTF-8", "USER": who.name,
            "LOGNAME": who.name, "SHELL": who.shell}


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
