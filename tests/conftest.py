"""Fixtures: a real controller process per test module (``controller``) or per test
(``fresh_controller``), with an admin account already made."""

from __future__ import annotations

import os

# as the agent does before gRPC loads (agent.proc): tests that run the agent's shells and
# runs in this process fork while gRPC's threads run, and gRPC's fork handlers crash such
# children (grpc/grpc#31885); other test modules load gRPC first, so it is set here
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path

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
