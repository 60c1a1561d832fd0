"""Threads the operating system can tell apart: ``top -H``, ``ps -L`` and /proc show a
thread's OS name, which CPython (before 3.14) leaves as the program's own. Pools made here
give each of their threads the OS name of their Python name (``oc-io_0``, ``tsdb-compact_0``),
so where a controller's CPU goes can be read per thread: RocksDB and grpc name theirs."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_PR_SET_NAME = 15
LIBC: Any
try:
    LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:  # not glibc (musl...): no names, nothing to trim
    LIBC = None


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread an OS name (at most 15 bytes: Linux's limit), by default its
    Python name. Nothing happens where the system has no such call."""
    prctl = getattr(LIBC, "prctl", None)
    if prctl is None:
        return
    raw = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def named_pool(prefix: str, workers: int | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads carry ``prefix_N`` as their OS names too."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix,
                              initializer=name_os_thread)
