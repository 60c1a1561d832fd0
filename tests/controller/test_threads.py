"""Pools whose threads the operating system can tell apart (top -H, ps -L, /proc)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from controller.threads import name_os_thread, named_pool


def os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names from /proc: Linux")
def test_a_pools_threads_carry_their_python_names_as_os_names() -> None:
    pool = named_pool("oc-test", 2)
    try:
        names = {pool.submit(os_name).result() for _ in range(8)}
    finally:
        pool.shutdown()
    assert names <= {"oc-test_0", "oc-test_1"} and names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names from /proc: Linux")
def test_an_os_name_is_cut_to_linuxs_fifteen_bytes() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread("a-very-long-thread-name")
        seen.append(os_name())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == ["a-very-long-thr"]
