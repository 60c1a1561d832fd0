"""A real Docker Engine API for tests: ``podman system service`` on a unix socket, with storage,
run and temp directories of its own (nothing shared with the machine's podman), and a busybox
image made here from Debian's ``busybox-static`` (no registry is reachable).

What this machine needs, and why (found on the Debian 12 test machine):
* packages ``podman runc busybox-static`` (``docker.io``'s dockerd is not used: podman needs no
  daemon of its own beyond the API service and serves the same Engine API, v1.41);
* ``runc``, not podman's default ``crun``: the machine mounts cgroup v1 with a cgroup2
  hierarchy that still holds a controller (hugetlb), which crun refuses ("cgroups in hybrid
  mode not supported");
* default ulimits of 1024 open files and processes: podman otherwise raises RLIMIT_NOFILE and
  RLIMIT_NPROC for each container, which needs CAP_SYS_RESOURCE, which this sandbox lacks;
* tests create containers with ``network_mode: none`` (the Engine API's default is podman's
  bridge, which would add a bridge and firewall rules to the host).

``available()`` says why a daemon cannot run; :class:`DockerHost` starts and stops one."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = "podman runc busybox-static"
IMAGE = "localhost/overcast-busybox:test"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "true", "echo", "cat", "ls")
# exits at once on SIGTERM (a shell as PID 1 ignores it unless trapped)
SERVE = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]

_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _is_static(path: str) -> bool:
    """Whether an ELF executable has no program interpreter (so runs in an empty image)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def available() -> str | None:
    """None when a podman API service can be started here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the podman API service is run as root here (rootless needs subuid mappings)"
    missing = [b for b in ("podman", "runc") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install {PACKAGES})"
    if not _is_static(BUSYBOX):
        return f"no static busybox at {BUSYBOX} (apt-get install busybox-static)"
    return None


def _busybox_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


@dataclass
class DockerHost:
    """One podman API service under ``base``; its socket is ``socket``."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    runroot: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "service.log"
        # podman refuses a run root longer than 50 characters (pytest's temporary paths are,
        # in a pytest-xdist worker): a short directory of its own under /tmp
        self.runroot = Path(tempfile.mkdtemp(prefix="ocpod-", dir="/tmp"))

    @property
    def socket(self) -> Path:
        return self.base / "api.sock"

    def podman(self, *args: str, check: bool = True,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, CONTAINERS_CONF=str(self.base / "containers.conf"))
        return subprocess.run(self.podman_argv(*args), input=stdin, capture_output=True, env=env, check=check,
                              timeout=120)

    def start(self) -> DockerHost:
        """Import the image, prove a container runs, start the service. Raises RuntimeError
        with podman's own words when something here does not allow it."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "containers.conf").write_text(_CONF)
        tar = self.base / "busybox.tar"
        tar.write_bytes(_busybox_tar())
        for step in (("import", str(tar), IMAGE),
                     ("run", "--rm", "--network", "none", IMAGE, "true")):
            r = self.podman(*step, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"podman {step[0]} failed: {r.stderr.decode(errors='replace')}")
        env = dict(os.environ, CONTAINERS_CONF=str(self.base / "containers.conf"))
        argv = self.podman_argv("system", "service", "--time=0", f"unix://{self.socket}")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"podman system service exited: {self.log.read_text()[-500:]}")
            if self._ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("podman system service did not answer within 20 s")

    def podman_argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot", str(self.runroot),
                "--tmpdir", str(self.base / "tmp"), "--storage-driver", "vfs",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc",
                *args]

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the service, remove every container it made, then its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.podman("rm", "--all", "--force", "--time", "0", check=False)
        self.podman("system", "reset", "--force", check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


def running_daemon(base: Path) -> Iterator[DockerHost]:
    """A started daemon under ``base`` for a fixture (``yield from``); skips the test, saying
    why, when none can run here."""
    import pytest

    reason = available()
    if reason:
        pytest.skip(f"no Docker API daemon here: {reason}")
    host = DockerHost(base)
    try:
        host.start()
    except (RuntimeError, OSError) as exc:
        host.stop()
        pytest.skip(f"the podman API service cannot run here: {exc}")
    try:
        yield host
    finally:
        host.stop()
