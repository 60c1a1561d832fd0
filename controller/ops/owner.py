"""Files an admin command makes in a data directory belong to the directory's owner.

Run as root on a data directory that a service user owns (the systemd unit's `overcast`), an
offline admin command (`adduser`, `backup`, `restore`, `doctor`, `audit verify` with no
controller running) opens the store itself, and RocksDB then writes new files (its log, a
new manifest, new tables) owned by root, mode 0600: the controller, running as its user,
could no longer open its own store. :func:`keep_owner` gives such files back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def give_back(data_dir: str | Path) -> int:
    """Make every file and directory under ``data_dir`` that root owns belong to the data
    directory's owner (and its group), when this process is root and the owner is not.
    Symbolic links are changed themselves, never followed. Returns how many were changed."""
    d = Path(data_dir)
    if os.geteuid() != 0:
        return 0
    try:
        st = d.lstat()
    except FileNotFoundError:
        return 0
    if st.st_uid == 0 or not d.is_dir():
        return 0
    n = 0
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                s = os.lstat(p)
                if s.st_uid == 0:
                    os.lchown(p, st.st_uid, st.st_gid)
                    n += 1
            except FileNotFoundError:  # went while we walked (RocksDB's own housekeeping)
                continue
    return n


@contextlib.contextmanager
def keep_owner(data_dir: str | Path) -> Iterator[None]:
    """Around an offline admin command: on the way out (even after an error), what it made
    under ``data_dir`` as root goes to the data directory's owner (see :func:`give_back`)."""
    try:
        yield
    finally:
        give_back(data_dir)
