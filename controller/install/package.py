"""The agent's package, built by the controller from its own code: the agent half of this
installation (packages ``agent``, ``tunnel`` and, of ``overcast``, the version and the agent
protocol) as a wheel, ``overcast_agent-<version>-py3-none-any.whl`` (PEP 427: the files,
then ``*.dist-info/`` with METADATA, WHEEL and a RECORD of every file's SHA-256 and size).
Entries are sorted and dated 1980-01-01, so the same code always makes the same bytes (and
SHA-256), whichever process built it.

And the wheels directory (``agent_wheels_dir``) the controller serves to hosts without the
package index: a flat find-links page of its ``*.whl`` files, each with its SHA-256.

Building reads a few hundred small files (tens of milliseconds): callers on the event loop
run it in a thread; ``AgentPackages`` builds once per process."""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.util
import io
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.errors import NotFound

DIST_NAME = "overcast-agent"
# The agent's dependencies: pyproject.toml's [project] dependencies, with the same bounds
# (tests/controller/install/test_package.py fails when they differ).
REQUIRES = ("grpcio>=1.85.1", "protobuf>=7.35.1,<8", "psutil>=5.9", "cryptography>=42")
REQUIRES_PYTHON = ">=3.11"
PACKAGES = ("agent", "tunnel", "overcast")
# parts of a package the agent does not need (overcast.api: the management API's stubs)
_LEAVE_OUT = {"overcast": ("api",)}
_SUFFIXES = (".py", ".typed")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip holds
_WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")


@dataclass(frozen=True)
class Package:
    filename: str
    version: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class WheelFile:
    name: str
    size: int
    sha256: str


def agent_version() -> str:
    """The version of the agent this controller carries (and serves)."""
    from agent import AGENT_VERSION

    return AGENT_VERSION


def package_files(name: str) -> Iterator[tuple[str, Path]]:
    """(path in the wheel, file) of every module of the installed package ``name``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed here")
    root = Path(next(iter(spec.submodule_search_locations)))
    leave_out = _LEAVE_OUT.get(name, ())
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or (rel.parts[0] in leave_out) or not path.is_file():
            continue
        if path.suffix in _SUFFIXES:
            yield f"{name}/{rel.as_posix()}", path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def metadata(version: str) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {DIST_NAME}", f"Version: {version}",
             "Summary: The Overcast agent (built by the controller that serves it)",
             "License: Apache-2.0", f"Requires-Python: {REQUIRES_PYTHON}"]
    lines += [f"Requires-Dist: {r}" for r in REQUIRES]
    return "\n".join(lines) + "\n"


def build_wheel(version: str | None = None) -> Package:
    """The agent's wheel from the packages this process imports (see the module's docstring)."""
    version = version or agent_version()
    stem = f"{DIST_NAME.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files: list[tuple[str, bytes]] = []
    for package in PACKAGES:
        files += [(arc, path.read_bytes()) for arc, path in package_files(package)]
    files.append((f"{info}/METADATA", metadata(version).encode()))
    files.append((f"{info}/WHEEL", (b"Wheel-Version: 1.0\nGenerator: overcast controller\n"
                                    b"Root-Is-Purelib: true\nTag: py3-none-any\n")))
    files.append((f"{info}/top_level.txt", "".join(f"{p}\n" for p in PACKAGES).encode()))
    record = "".join(f"{arc},sha256={_digest(data)},{len(data)}\n" for arc, data in files)
    files.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, data in files:
            zi = zipfile.ZipInfo(arc, _EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
    data = buf.getvalue()
    return Package(f"{stem}-py3-none-any.whl", version, data, hashlib.sha256(data).hexdigest())


class AgentPackages:
    """The agent's package (built on first use, then kept) and the wheels directory's files
    (their SHA-256 computed once per file size and modification time). Thread-safe."""

    def __init__(self, wheels_dir: Path) -> None:
        self.wheels_dir = wheels_dir
        self._lock = threading.Lock()
        self._package: Package | None = None
        self._sums: dict[str, tuple[int, int, str]] = {}

    def agent(self) -> Package:
        with self._lock:
            if self._package is None:
                self._package = build_wheel()
            return self._package

    def wheels(self) -> list[WheelFile]:
        """The ``*.whl`` files of the wheels directory (none when it does not exist)."""
        try:
            entries = sorted(p for p in self.wheels_dir.iterdir()
                             if p.suffix == ".whl" and p.is_file() and _WHEEL_NAME.match(p.name))
        except OSError:
            return []
        out = []
        with self._lock:
            for p in entries:
                st = p.stat()
                known = self._sums.get(p.name)
                if known is None or known[:2] != (st.st_size, st.st_mtime_ns):
                    known = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                    self._sums[p.name] = known
                out.append(WheelFile(p.name, st.st_size, known[2]))
        return out

    def wheel_path(self, name: str) -> Path:
        """One file of the wheels directory; NotFound for anything else."""
        path = self.wheels_dir / name
        if not _WHEEL_NAME.match(name) or "/" in name or not path.is_file():
            raise NotFound("no such wheel", {"name": name})
        return path

    def index_html(self) -> bytes:
        """The wheels directory as a find-links page (pip checks each file's SHA-256)."""
        links = "".join(f'<a href="{html.escape(w.name)}#sha256={w.sha256}">'
                        f"{html.escape(w.name)}</a><br>\n" for w in self.wheels())
        return ("<!DOCTYPE html>\n<html><head><title>Overcast agent wheels</title></head>"
                f"<body>\n{links}</body></html>\n").encode()
