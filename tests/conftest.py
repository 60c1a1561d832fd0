"""Fixtures: a real controller process per test module (``controller``) or per test
(``fresh_controller``), with an admin account already made."""

from __future__ import annotations

import functools
import os

# as the agent does before gRPC loads (agent.proc): tests that run the agent's shells and
# runs in this process fork while gRPC's threads run, and gRPC's fork handlers crash such
# children (grpc/grpc#31885); other test modules load gRPC first, so it is set here
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path
from typing import Any

import pytest

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller


def _started(tmp: Path) -> Controller:
    c = Controller(tmp)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    return c.start()


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = _started(tmp_path_factory.mktemp("ctl"))
    yield c
    c.stop()


@pytest.fixture
def fresh_controller(tmp_path: Path) -> Iterator[Controller]:
    c = _started(tmp_path)
    yield c
    if c.proc is not None and c.proc.poll() is None:
        c.stop()


# `make test` runs the tests in two processes (pytest-xdist, ``--dist loadscope``), a test
# module at a time (its tests in order, sharing its module-scoped fixtures, as in one
# process). The modules whose tests change the machine itself are one unit of work, so they
# run one after another in one process: network namespaces on fixed subnets
# (tests/support/netns.py), sshd on the host, system users, routes, WireGuard interfaces, the
# agent installer's paths, a container engine. A module is one of them when it is marked
# ``root`` or uses one of the helpers below. (xdist's own ``loadgroup`` does not group with
# pytest 9: it renames test ids in a way pytest 9 no longer reads.)
MACHINE_SIGNS = ("tests.support.netns", "tests.support import netns", "tests.support.sshd",
                 "tests.support import sshd", "tests.support.docker_host",
                 "tests.support import docker_host", "pytest.mark.root")


@functools.cache
def changes_the_machine(path: Path) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    return any(sign in text for sign in MACHINE_SIGNS)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: ignored without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None  # xdist's own
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "machine" if changes_the_machine(root / module) else module

    return ByModule(config, log)
