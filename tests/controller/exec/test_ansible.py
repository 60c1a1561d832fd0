"""Ansible payloads: ansible-playbook run on the controller against a real sshd in a network
namespace (which shares this machine's files, so what a playbook writes on the "target" is
visible here): variables from the payload's env, streamed output, syntax errors, archives,
a pinned host key, timeouts, and that nothing is left behind on the controller."""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.exec import ansible, ssh
from controller.exec.model import Payload, SshTarget, sha256_hex
from tests.support import sshd as sshd_support
from tests.support.netns import Lab

why = sshd_support.available() or (
    None if ansible.playbook_command() else "ansible-playbook is not installed")
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")
SECRET = "v4lue-'\"{{ not templated here }}$(x)"


class Sink:
    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def output(self, stream: str, data: bytes) -> None:
        self.parts.append((stream, data))

    @property
    def text(self) -> str:
        return b"".join(d for _, d in self.parts).decode(errors="replace")


@dataclass
class World:
    sshd: sshd_support.Sshd
    key: asyncssh.SSHKey
    tmp: Path

    def playbook(self, content: bytes | str, args: tuple[str, ...] = (),
                 **more: Any) -> Payload:
        """An Ansible payload. The target shares this machine's files: its Python is named
        (root's login PATH here may start with pyenv shims that interpreter discovery picks
        and that then fail), and its remote temp dir is kept out of this machine's ~root."""
        data = content.encode() if isinstance(content, str) else content
        fixed = ("-e", "ansible_python_interpreter=/usr/bin/python3",
                 "-e", f"ansible_remote_tmp={self.tmp / 'remote'}")
        return Payload(data, sha256_hex(data), ansible=True, args=fixed + args, **more)

    def target(self, **more: Any) -> SshTarget:
        fields: dict[str, Any] = {
            "host": self.sshd.host.address, "connect_timeout": 5.0,
            "private_key": self.key.export_private_key().decode(),
            "host_key": self.sshd.public_host_key, **more}
        return SshTarget(**fields)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("exec-ansible")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(50, 99)) as lab:
        sshd = sshd_support.Sshd(lab.add_host(), tmp / "sshd", hostname="ocansible")
        sshd.authorize(key.export_public_key().decode())
        with sshd:
            yield World(sshd, key, tmp)


WRITE = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: write the greeting
      copy:
        content: "{{ GREETING }}\\n"
        dest: "{{ OUT }}"
"""


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's temporary directories in this test's own: other test runs on the
    machine make theirs in the shared one at the same time."""
    own = tmp_path / "tmp"
    own.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own))


def ours() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("overcast-ansible-*")}


async def test_a_playbook_gets_the_env_as_variables_and_streams_its_output(
        world: World, tmp_path: Path) -> None:
    out, before = tmp_path / "greeting", ours()
    home_ansible = Path.home() / ".ansible"
    had_home_ansible = home_ansible.exists()
    sink = Sink()
    book = world.playbook(WRITE, env={"GREETING": SECRET, "OUT": str(out)})
    r = await ssh.run(world.target(), book, sink)
    assert r.exit_code == 0 and not r.error, (r, sink.text)
    assert out.read_text() == SECRET + "\n"
    assert "PLAY RECAP" in sink.text and "changed=1" in sink.text
    assert r.output_bytes == sum(len(d) for _, d in sink.parts) and not r.truncated
    assert ours() == before  # its temp dir (key, inventory, variables) is gone
    assert home_ansible.exists() == had_home_ansible  # the controller's home is untouched
    assert "\x1b[" not in sink.text  # no colours


async def test_a_syntax_error_fails_with_the_error_in_the_output(world: World) -> None:
    sink = Sink()
    r = await ssh.run(world.target(), world.playbook("- hosts: all\n  tasks: [ {oops\n"), sink)
    assert r.exit_code not in (0, None) and not r.timed_out, r
    assert "ERROR" in sink.text, sink.text


async def test_an_archive_runs_its_entrypoint_with_its_files_and_args(
        world: World, tmp_path: Path) -> None:
    files = {
        "site.yml": "- hosts: all\n  gather_facts: false\n  tasks:\n"
                    "    - include_tasks: tasks/write.yml\n",
        "tasks/write.yml": "- copy:\n    src: files/motd\n    dest: \"{{ OUT }}\"\n",
        "files/motd": "from the archive\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    out = tmp_path / "motd"
    sink = Sink()
    r = await ssh.run(world.target(), world.playbook(buf.getvalue(), entrypoint="site.yml",
                                                     args=("-e", f"OUT={out}")), sink)
    assert r.exit_code == 0, sink.text
    assert out.read_text() == "from the archive\n"
    r = await ssh.run(world.target(), world.playbook(buf.getvalue(), entrypoint="nope.yml"),
                      Sink())
    assert r.error == "the archive has no file nope.yml"


async def test_a_host_key_other_than_the_pinned_one_stops_it_before_ansible(
        world: World, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    sink = Sink()
    out = tmp_path / "never"
    r = await ssh.run(world.target(host_key=other),
                      world.playbook(WRITE, env={"GREETING": "x", "OUT": str(out)}), sink)
    assert r.error.startswith("host key mismatch") and r.exit_code is None, r
    assert sink.parts == [] and not out.exists()
    # pinned by fingerprint: ansible's ssh is held to the key the fingerprint matched
    r = await ssh.run(world.target(host_key=world.sshd.fingerprint),
                      world.playbook(WRITE, env={"GREETING": "fp", "OUT": str(out)}), Sink())
    assert r.exit_code == 0 and out.read_text() == "fp\n", r


async def test_a_refused_key_is_said_in_words(world: World) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    r = await ssh.run(world.target(private_key=stranger), world.playbook(WRITE), Sink())
    assert r.error == "key refused (user root)", r


async def test_a_timeout_kills_ansible(world: World, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    book = ("- hosts: all\n  gather_facts: false\n  tasks:\n"
            f"    - shell: echo $$ > {pidfile}; exec sleep 297\n")
    before = ours()
    started = time.monotonic()
    r = await ssh.run(world.target(), world.playbook(book, timeout=8), Sink())
    try:
        assert r.timed_out and r.exit_code is None and r.error == "timed out after 8s", r
        assert time.monotonic() - started < 15
        assert ours() == before
        left = subprocess.run(["pgrep", "-f", f"ansible-playbook.*{tmp_path.name}"],
                              capture_output=True, text=True)
        assert left.stdout == ""
        # and on the target, what the task started was stopped too (sshd would not have)
        pid = int(pidfile.read_text().strip())
        gone = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < gone:
            await asyncio.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "the remote task outlived the run"
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            subprocess.run(["kill", pidfile.read_text().strip()], capture_output=True)


async def test_cancel_stops_it(world: World) -> None:
    cancel = asyncio.Event()
    book = "- hosts: all\n  gather_facts: false\n  tasks:\n    - pause: {seconds: 120}\n"
    task = asyncio.create_task(ssh.run(world.target(), world.playbook(book), Sink(), cancel))
    await asyncio.sleep(3)
    cancel.set()
    r = await asyncio.wait_for(task, 15)
    assert r.cancelled and r.error == "cancelled", r


async def test_bad_variable_names_are_refused(world: World) -> None:
    r = await ssh.run(world.target(), world.playbook(WRITE, env={"no-dash": SECRET}), Sink())
    assert "'no-dash' is not a valid variable name" in r.error and "v4lue" not in r.error
