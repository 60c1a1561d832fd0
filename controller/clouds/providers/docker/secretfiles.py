"""Secrets that a library will only read from a file (TLS keys, SSH keys, CA bundles), written
to a private directory and removed as soon as they are no longer needed.

Python's ``ssl`` loads a client certificate only from files, libvirt's SSH transport takes a
``keyfile`` path and libcloud's LXD and vSphere drivers take paths too. The directory is made
with mode 0700 (in ``/dev/shm`` when it is usable, so the text stays in memory), each file with
0600, and everything is removed by :meth:`SecretFiles.close` (and, as a safety net, when the
object is garbage-collected). Used by the docker, lxd, kvm and vsphere adapters."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

_SHM = "/dev/shm"


def _private_dir() -> str:
    base = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK | os.X_OK) else None
    path = tempfile.mkdtemp(prefix="overcast-", dir=base)
    os.chmod(path, 0o700)
    return path


class SecretFiles:
    """A private directory of secret files. Blocking (file I/O); not thread-safe on write."""

    def __init__(self) -> None:
        self._dir = ""
        self._finalizer: weakref.finalize[..., SecretFiles] | None = None

    def write(self, name: str, text: str) -> str:
        """Write ``text`` to a new 0600 file called ``name``; return its path."""
        if not self._dir:
            self._dir = _private_dir()
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        if os.sep in name or name in ("", ".", ".."):
            raise ValueError("a plain file name is needed")
        path = os.path.join(self._dir, name)
        if os.path.exists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        return path

    def remove(self, path: str) -> None:
        """Remove one file now (best effort)."""
        try:
            os.unlink(path)
        except OSError:
            pass

    def close(self) -> None:
        """Remove the directory and everything in it. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._dir = ""
