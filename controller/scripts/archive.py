"""Checking and packing .tar.gz archives of scripts: every member stays inside the
directory the archive is unpacked in, within the limits of :mod:`controller.scripts.model`;
a cloned tree packs to the same bytes every time."""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from controller.errors import Invalid, TooLarge
from controller.scripts import model as m

GZIP_MAGIC = b"\x1f\x8b"


def _member(name: str) -> str:
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    if n in ("", "."):
        return ""
    if n.startswith("/") or "\x00" in n or ".." in n.split("/"):
        raise Invalid(f"the archive has a member outside its directory: {name[:200]!r}",
                      field="script")
    return posixpath.normpath(n)


def _check_link(name: str, target: str, hard: bool) -> None:
    """A hard link's target is a path in the archive; a symbolic link's is relative to its
    directory. Either must stay inside."""
    base = "" if hard else posixpath.dirname(name)
    where = posixpath.normpath(posixpath.join(base, target)) if target else ".."
    if target.startswith("/") or where == ".." or where.startswith("../"):
        raise Invalid(f"the archive's link {name!r} points outside it ({target[:200]!r})",
                      field="script")


def check_archive(data: bytes, entrypoint: str, source: str) -> list[str]:
    """Check that ``data`` is a .tar.gz whose members all stay inside the directory it is
    unpacked in (no absolute paths, no ``..``, no links out or through links, no devices,
    no member twice), within MAX_MEMBERS and MAX_UNPACKED, and with ``entrypoint`` ("" =
    any) as a regular file; return the member names, sorted. Blocks while it decompresses:
    call it in a thread. Raises Invalid, TooLarge."""
    if not data.startswith(GZIP_MAGIC):
        raise Invalid(f"{source} is not a .tar.gz archive (no gzip header)", field="script")
    seen: dict[str, str] = {}  # name -> "f" file, "d" directory, "l" link
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for info in tar:
                name = _member(info.name)
                if not name:
                    continue
                if len(seen) >= m.MAX_MEMBERS:
                    raise TooLarge(f"the archive has more than {m.MAX_MEMBERS} members",
                                   {"field": "script", "limit": m.MAX_MEMBERS})
                if name in seen:
                    raise Invalid(f"the archive has {name!r} twice", field="script")
                if info.issym() or info.islnk():
                    _check_link(name, info.linkname, info.islnk())
                    seen[name] = "l"
                elif info.isfile() or info.isdir():
                    seen[name] = "f" if info.isfile() else "d"
                else:
                    raise Invalid(f"the archive's member {name!r} is a device, fifo or other "
                                  "special file", field="script")
                total += max(info.size, 0)
                if total > m.MAX_UNPACKED:
                    raise TooLarge(f"the archive unpacks to more than {m.MAX_UNPACKED} bytes",
                                   {"field": "script", "limit": m.MAX_UNPACKED})
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise Invalid(f"{source} is not a valid .tar.gz archive ({exc})", field="script") from None
    if not seen:
        raise Invalid(f"{source} is an empty archive", field="script")
    for name in seen:  # in any order: unpacked through a link, a member could land outside
        parts = name.split("/")
        if any(seen.get("/".join(parts[:i])) == "l" for i in range(1, len(parts))):
            raise Invalid(f"the archive's member {name!r} lies behind a link", field="script")
    files = sorted(n for n, kind in seen.items() if kind == "f")
    if entrypoint and seen.get(entrypoint) != "f":
        listed = ", ".join(files[:10]) + (", ..." if len(files) > 10 else "")
        raise Invalid(f"entrypoint {entrypoint!r} is not a file in {source} (its files: "
                      f"{listed or 'none'})", field="entrypoint", files=files[:50])
    return sorted(seen)


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / rel) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        path = f"{rel}/{e.name}" if rel else e.name
        if path == ".git":
            continue
        st = e.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


def pack_tree(root: Path) -> bytes:
    """The files under ``root`` (without its ``.git``) as a deterministic .tar.gz: members in
    path order, no times or owners, mode 755 for directories and executables and 644 for
    other files, links kept as links; the same tree always gives the same bytes. Blocks
    (disk, compression): call it in a thread. Raises TooLarge, Invalid (a special file)."""
    buf = io.BytesIO()
    total = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, st in _walk(root):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(root / path), 0o777
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > m.MAX_UNPACKED:
                    raise TooLarge(f"the files are larger than {m.MAX_UNPACKED} bytes",
                                   {"field": "script", "limit": m.MAX_UNPACKED})
                info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
                with open(root / path, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise Invalid(f"{path!r} is a special file", field="script")
    return buf.getvalue()
