"""A real OpenSSH server in a network namespace of a :class:`tests.support.netns.Lab`: its
own config, host key and authorized_keys under a temp dir, its own hostname (UTS namespace),
stopped by PID. Needs root, iproute2, util-linux (unshare) and openssh-server.

The namespace isolates only the network: commands run through this sshd act on the real
machine's files and processes, so tests must never run anything there that they would not
run on the host itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from tests.support import netns

SSHD = "/usr/sbin/sshd"

_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""


def available() -> str | None:
    """None when an sshd can run in a namespace here, else why not."""
    why = netns.available()
    if why is not None:
        return why
    if not os.path.exists(SSHD):
        return "openssh-server is not installed (no /usr/sbin/sshd)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


def write_secret(path: Path, text: str) -> None:
    """Write a key file readable by root only (sshd refuses a host key others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Sshd:
    """One sshd listening on ``host.address:port`` inside the host's namespace."""

    host: netns.Host
    root: Path
    hostname: str = "ochost"
    port: int = 22
    host_key: asyncssh.SSHKey = field(
        default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))
    proc: subprocess.Popen[bytes] | None = None
    # also take the users' own ~/.ssh/authorized_keys (for tests that deploy keys there)
    user_keys: bool = False

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_secret(self.root / "host_key", self.host_key.export_private_key().decode())
        (self.root / "authorized_keys").write_text("")
        config = _CONFIG.format(address=self.host.address, port=self.port,
                                host_key=self.root / "host_key", root=self.root)
        if self.user_keys:
            config = config.replace(f"AuthorizedKeysFile {self.root}/authorized_keys",
                                    f"AuthorizedKeysFile {self.root}/authorized_keys "
                                    ".ssh/authorized_keys")
        (self.root / "sshd_config").write_text(config)

    @property
    def public_host_key(self) -> str:
        """The host key as a known_hosts entry's key part ("ssh-ed25519 AAAA...")."""
        return self.host_key.export_public_key("openssh").decode().strip()

    @property
    def fingerprint(self) -> str:
        return str(self.host_key.get_fingerprint("sha256"))

    @property
    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def authorize(self, public_key: str) -> None:
        with open(self.root / "authorized_keys", "a") as f:
            f.write(public_key.strip() + "\n")

    def start(self, wait: float = 5.0) -> Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        script = 'hostname "$1" && exec "$2" -D -e -f "$3"'
        argv = self.host.cmd("unshare", "--uts", "sh", "-c", script, "sh", self.hostname, SSHD,
                             str(self.root / "sshd_config"))
        with open(self.root / "sshd.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.log[-2000:]}")
            try:
                socket.create_connection((self.host.address, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host.address}:{self.port}")

    def stop(self) -> None:
        """Stop this sshd (by its PID only); sessions it forked end with their clients."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
