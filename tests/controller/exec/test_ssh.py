"""Scripts, commands and shells over SSH against a real sshd in a network namespace: output,
exit codes, args and secret env, archives, timeouts and cancels that kill the whole process
group (checked by pid on this machine: the namespace shares its processes), truncation, the
ways connecting fails; plus the command builder and error mapping as units.

Processes started through the sshd run on this machine: the scripts here only sleep, echo
and write under the test's own temp dir."""

from __future__ import annotations

import asyncio
import io
import os
import pwd
import random
import shlex
import shutil
import socket
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.errors import Invalid, ProviderAuthError, ProviderError, ProviderUnavailable
from controller.exec import ssh, sshrun
from controller.exec.model import Payload, RunResult, SshTarget, sha256_hex
from tests.support import sshd as sshd_support
from tests.support.netns import Host, Lab

why = sshd_support.available()
needs_sshd = pytest.mark.skipif(why is not None, reason=why or "")
SECRET = "s3cr3t-'\"$(touch /nonexistent)`x`"


class Sink:
    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def output(self, stream: str, data: bytes) -> None:
        self.parts.append((stream, data))

    def text(self, stream: str) -> str:
        return b"".join(d for s, d in self.parts if s == stream).decode()


@dataclass
class World:
    sshd: sshd_support.Sshd
    down: Host                 # no sshd: connection refused
    key: asyncssh.SSHKey
    home: Path                 # an extra AuthorizedKeysFile of the sshd: {home}/.ssh/...

    def target(self, **more: Any) -> SshTarget:
        fields: dict[str, Any] = {
            "host": self.sshd.host.address, "private_key": private(self.key),
            "host_key": self.sshd.public_host_key, "connect_timeout": 5.0, **more}
        return SshTarget(**fields)


def private(key: asyncssh.SSHKey) -> str:
    return str(key.export_private_key().decode())


def public(key: asyncssh.SSHKey) -> str:
    return str(key.export_public_key().decode().strip())


def payload(content: bytes | str, **more: Any) -> Payload:
    data = content.encode() if isinstance(content, str) else content
    return Payload(data, sha256_hex(data), **more)


def archive(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), 0o644
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def alive(pid: int) -> bool:
    """``pid`` is still a running sleep (not gone, not a zombie, not reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and cmd.startswith(b"sleep")


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("exec-ssh")
    home = tmp / "home"
    home.mkdir()
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(50, 99)) as lab:
        host, down = lab.add_host(), lab.add_host()
        sshd = sshd_support.Sshd(host, tmp / "sshd", hostname="ocexec")
        sshd.authorize(public(key))
        config = sshd.root / "sshd_config"  # also the keys a script under test manages
        config.write_text(config.read_text().replace(
            f"AuthorizedKeysFile {sshd.root}/authorized_keys",
            f"AuthorizedKeysFile {sshd.root}/authorized_keys {home}/.ssh/authorized_keys"))
        with sshd:
            yield World(sshd, down, key, home)


async def waiting_for(sink: Sink, text: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while text not in sink.text("stdout"):
        assert time.monotonic() < deadline, sink.parts
        await asyncio.sleep(0.05)


# ---- run -----------------------------------------------------------------------------------
@needs_sshd
async def test_a_script_streams_stdout_stderr_and_its_exit_code(world: World) -> None:
    sink = Sink()
    r = await ssh.run(world.target(), payload("#!/bin/sh\necho out\necho err >&2\nexit 3\n"),
                      sink)
    assert r == RunResult(exit_code=3, output_bytes=8)
    assert sink.text("stdout") == "out\n" and sink.text("stderr") == "err\n"
    assert "OVERCAST" not in str(sink.parts)  # the wrapper's marker never reaches the sink


@needs_sshd
async def test_args_and_env_arrive_verbatim_and_only_the_script_is_written(
        world: World, tmp_path: Path) -> None:
    script = ('#!/bin/sh\nprintf "<%s>" "$@"; echo; printf "%s\\n" "$TOKEN" "$OTHER"\n'
              'ls -A; [ -z "${__overcast_env-}" ] && echo clean\n'
              f'pwd > {tmp_path}/dir\n')
    args = ("a b", "$HOME", "'q'", "")
    sink = Sink()
    r = await ssh.run(world.target(), payload(script, args=args,
                                              env={"TOKEN": SECRET, "OTHER": "x\ny"}), sink)
    assert r.exit_code == 0 and not r.error, r
    assert sink.text("stdout") == f"<a b><$HOME><'q'><>\n{SECRET}\nx\ny\nscript\nclean\n"
    workdir = (tmp_path / "dir").read_text().strip()
    assert workdir.startswith("/") and not Path(workdir).exists()  # removed afterwards
    assert not Path("/nonexistent").exists()


@needs_sshd
async def test_a_secret_never_appears_in_an_error(world: World) -> None:
    env = {"TOKEN": SECRET}
    results = [
        await ssh.run(world.target(), payload("sleep 5", env=env, timeout=0.5), Sink()),
        await ssh.run(world.target(private_key=private(asyncssh.generate_private_key(
            "ssh-ed25519"))), payload("true", env=env), Sink()),
        await ssh.run(world.target(), payload("true", env={**env, "1BAD": SECRET}), Sink()),
    ]
    assert [bool(r.error) for r in results] == [True, True, True]
    assert "1BAD" in results[2].error
    for r in results:
        assert "s3cr3t" not in repr(r)


@needs_sshd
async def test_without_a_shebang_sh_runs_it_and_an_interpreter_runs_text(world: World) -> None:
    sink = Sink()
    r = await ssh.run(world.target(), payload("echo plain $((2 * 3))"), sink)
    assert (r.exit_code, sink.text("stdout")) == (0, "plain 6\n")
    sink = Sink()
    r = await ssh.run(world.target(), payload('echo "via $0 $1"', interpreter="/bin/sh -e",
                                              args=("x",)), sink)
    assert r.exit_code == 0 and sink.text("stdout").startswith("via ./script x"), sink.parts


@needs_sshd
async def test_an_archive_runs_its_entrypoint_in_the_unpacked_tree(world: World) -> None:
    content = archive({"bin/run.sh": "#!/bin/sh\ncat data/msg.txt\necho \"$1\"\n",
                       "data/msg.txt": "from the archive\n"})
    sink = Sink()
    r = await ssh.run(world.target(), payload(content, entrypoint="./bin/run.sh",
                                              args=("arg1",)), sink)
    assert r.exit_code == 0, (r, sink.parts)
    assert sink.text("stdout") == "from the archive\narg1\n"
    r = await ssh.run(world.target(), payload(content, entrypoint="bin/missing.sh"), Sink())
    assert r.error == "the archive has no file bin/missing.sh"
    r = await ssh.run(world.target(), payload(content, entrypoint="../etc/passwd"), Sink())
    assert "relative path inside the archive" in r.error
    r = await ssh.run(world.target(), payload(b"not gzip", entrypoint="x"), Sink())
    assert "cannot be read" in r.error


@needs_sshd
async def test_a_timeout_kills_the_whole_process_group(world: World, tmp_path: Path) -> None:
    script = (f"#!/bin/sh\nsleep 300 & echo $! > {tmp_path}/bg\npwd > {tmp_path}/dir\n"
              f"echo started\nexec sleep 301\n")
    sink = Sink()
    started = time.monotonic()
    r = await ssh.run(world.target(), payload(script, timeout=2), sink)
    assert r.timed_out and r.exit_code is None and r.error == "timed out after 2s", r
    assert time.monotonic() - started < 10
    assert "started" in sink.text("stdout")
    assert gone(int((tmp_path / "bg").read_text()))
    assert not Path((tmp_path / "dir").read_text().strip()).exists()
    leftover = subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True, text=True)
    assert leftover.stdout == "", "the script itself survived"


@needs_sshd
async def test_a_cancel_kills_the_whole_process_group(world: World, tmp_path: Path) -> None:
    cancel, sink = asyncio.Event(), Sink()
    script = f"sleep 300 & echo $! > {tmp_path}/bg; echo started; sleep 300"
    task = asyncio.create_task(ssh.run(world.target(), payload(script), sink, cancel))
    await waiting_for(sink, "started")
    cancel.set()
    r = await asyncio.wait_for(task, 15)
    assert r.cancelled and not r.timed_out and r.exit_code is None, r
    assert gone(int((tmp_path / "bg").read_text()))
    set_before = asyncio.Event()
    set_before.set()
    r = await ssh.run(world.target(), payload("true"), Sink(), set_before)
    assert r.cancelled and r.error == "cancelled"


@needs_sshd
async def test_without_setsid_a_timeout_still_kills_the_script(
        world: World, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with sh and sleep only: no setsid
    bin_dir.mkdir()
    for tool in ("sh", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    script = f"echo $$ > {tmp_path}/pid; echo started; exec sleep 300"
    sink = Sink()
    r = await ssh.run(world.target(), payload(script, timeout=2, env={"PATH": str(bin_dir)}),
                      sink)
    assert r.timed_out and "started" in sink.text("stdout"), (r, sink.parts)
    assert gone(int((tmp_path / "pid").read_text()))


@needs_sshd
async def test_what_a_script_leaves_running_is_killed_when_it_exits(
        world: World, tmp_path: Path) -> None:
    # the background sleep keeps stdout open: without the group kill, run would wait for it
    script = f"sleep 300 & echo $! > {tmp_path}/bg; echo done"
    started = time.monotonic()
    r = await ssh.run(world.target(), payload(script), Sink())
    assert r.exit_code == 0 and not r.error, r
    assert time.monotonic() - started < 8
    assert gone(int((tmp_path / "bg").read_text()))


@needs_sshd
async def test_a_script_killed_by_a_signal_exits_128_plus_its_number(world: World) -> None:
    r = await ssh.run(world.target(), payload("kill -s TERM $$; sleep 5"), Sink())
    assert r.exit_code == 143 and not r.error, r


@needs_sshd
async def test_output_past_the_limit_is_counted_not_kept(world: World) -> None:
    sink = Sink()
    script = "head -c 100000 /dev/zero | tr '\\0' a; echo tail >&2"
    r = await ssh.run(world.target(), payload(script, max_output=1000), sink)
    assert r.exit_code == 0 and r.truncated and r.output_bytes == 100005, r
    assert sum(len(d) for _, d in sink.parts) == 1000


@needs_sshd
async def test_the_ways_connecting_fails_are_said_in_words(world: World) -> None:
    stranger = private(asyncssh.generate_private_key("ssh-ed25519"))
    other_host_key = public(asyncssh.generate_private_key("ssh-ed25519"))
    cases = [
        (world.target(private_key=stranger), "key refused (user root)"),
        (world.target(host=world.down.address), "connection refused"),
        (world.target(host_key=other_host_key), "host key mismatch (it offered SHA256:"),
        (world.target(host_key="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
         "host key mismatch"),
        (world.target(host="no-such-host.invalid"), "unknown host name"),
        (world.target(private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n"),
         "the key is not a valid private key"),
        (world.target(host_key="garbage"), "host_key is neither"),
    ]
    for target, says in cases:
        r = await ssh.run(target, payload("echo never"), Sink())
        assert r.error.startswith(says) and r.exit_code is None, (target.label, r)
        assert "BEGIN" not in r.error and "Traceback" not in r.error
    r = await ssh.run(world.target(host_key=world.sshd.fingerprint), payload("echo ok"), Sink())
    assert r.exit_code == 0, r
    r = await ssh.run(world.target(host_key=f"[{world.sshd.host.address}]:22 "
                                   f"{world.sshd.public_host_key} comment"),
                      payload("echo ok"), Sink())
    assert r.exit_code == 0, r


async def test_a_payload_not_matching_its_digest_is_refused_before_connecting() -> None:
    bad = Payload(b"echo hi", sha256_hex(b"echo something else"))
    target = SshTarget("10.255.255.1", private_key="unused", connect_timeout=30)
    started = time.monotonic()
    r = await ssh.run(target, bad, Sink())
    assert "does not match its sha256" in r.error and time.monotonic() - started < 1


# ---- the command builder, as a unit -----------------------------------------------------------
def test_su_prefixes_sudo_n_only_for_a_user_other_than_root() -> None:
    p = payload("#!/bin/sh\n", su=True, args=("x y",))
    ops, root = SshTarget("h", user="ops"), SshTarget("h", user="root")
    line = sshrun.run_command_line(ops, p, "/tmp/d x", ["./script"], "TOK", True)
    assert line.startswith("cd '/tmp/d x' && exec sudo -n sh -c ")
    words = shlex.split(line.split(" && ", 1)[1])
    assert words[:4] == ["exec", "sudo", "-n", "sh"]
    assert words[-3:] == ["env", "./script", "x y"]
    assert "TOK" in words[6]
    assert "sudo" not in sshrun.run_command_line(root, p, "/d", ["./script"], "TOK", False)
    plain = payload("#!/bin/sh\n")
    assert "sudo" not in sshrun.run_command_line(ops, plain, "/d", ["./script"], "TOK", False)
    assert shlex.split(sshrun.run_command_line(ops, plain, "/d", ["./script"], "T", False))[8] == "-"


def test_a_sudo_asking_for_a_password_is_said_so() -> None:
    sink = Sink()
    session = sshrun._Session(sshrun.LimitedOutput(sink, 100), "TOK")
    session.data_received(b"sudo: a password is required\n", asyncssh.EXTENDED_DATA_STDERR)
    session.connection_lost(None)
    said = sshrun._not_started(SshTarget("h", user="ops"), payload("", su=True), session, 1)
    assert said == "sudo needs a password for ops"
    assert sink.text("stderr") == "sudo: a password is required\n"


def test_the_marker_line_is_taken_out_of_stderr_even_split_across_chunks() -> None:
    sink = Sink()
    session = sshrun._Session(sshrun.LimitedOutput(sink, 1000), "TOK")
    for chunk in (b"early\nTO", b"K 4242 g", b"\nlate\n"):
        session.data_received(chunk, asyncssh.EXTENDED_DATA_STDERR)
    assert (session.pid, session.group) == (4242, True)
    assert sink.text("stderr") == "early\nlate\n"


def test_program_picks_the_interpreter() -> None:
    assert sshrun.program(payload("#!/usr/bin/env python3\n"))[1] == ["./script"]
    assert sshrun.program(payload("echo"))[1] == ["/bin/sh", "./script"]
    assert sshrun.program(payload("x", interpreter="python3 -u"))[1] == ["python3", "-u", "./script"]
    with pytest.raises(ValueError, match="is not a valid environment variable name"):
        sshrun.env_file({"A-B": "v"})


def test_connect_errors_map_to_the_error_tree() -> None:
    t = SshTarget("10.0.0.9", user="ops")
    cases: list[tuple[BaseException, type[Exception], str]] = [
        (ConnectionRefusedError(), ProviderUnavailable, "10.0.0.9"),
        (TimeoutError(), ProviderUnavailable, "timed out"),
        (socket.gaierror(), ProviderUnavailable, "unknown host name"),
        (asyncssh.PermissionDenied("no"), ProviderAuthError, "key refused (user ops)"),
        (ssh.HostKeyMismatch("SHA256:x"), ProviderError, "host key mismatch"),
        (Invalid("the key is not a valid private key"), Invalid, "not a valid private key"),
        (asyncssh.DisconnectError(11, "bye"), ProviderError, "ssh failed: bye"),
    ]
    for exc, kind, says in cases:
        err = ssh.connect_error(exc, t)
        assert type(err) is kind and says in err.message, (exc, err)
    assert ssh.connect_error(TimeoutError()).message == "timed out"


# ---- run_command, open_shell ---------------------------------------------------------------
@needs_sshd
async def test_run_command_returns_the_exit_code_and_both_streams(world: World) -> None:
    assert await ssh.run_command(world.target(), "cat; echo e >&2; exit 5",
                                 input=b"in") == (5, b"in", b"e\n")
    with pytest.raises(ProviderAuthError) as err:
        await ssh.run_command(world.target(private_key=private(
            asyncssh.generate_private_key("ssh-ed25519"))), "true")
    assert "key refused" in err.value.message and world.sshd.host.address in err.value.message
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await ssh.run_command(world.target(), "sleep 5", timeout=0.5)


async def read_until(shell: ssh.SshShell, text: bytes, within: float = 10.0) -> bytes:
    seen = b""
    async with asyncio.timeout(within):
        while text not in seen:
            data = await shell.read()
            assert data is not None, seen
            seen += data
    return seen


@needs_sshd
async def test_a_shell_echoes_resizes_and_exits_with_its_code(world: World) -> None:
    shell = await ssh.open_shell(world.target(), "xterm", 80, 24)
    try:
        shell.write(b"echo hi-$((1+1))\n")
        await read_until(shell, b"hi-2")
        shell.resize(132, 43)
        shell.write(b"stty size\n")
        await read_until(shell, b"43 132")
        shell.write(b"exit 4\n")
        async with asyncio.timeout(10):
            while await shell.read() is not None:
                pass
        assert shell.exit_code == 4 and shell.error == ""
        assert await shell.read() is None
    finally:
        await shell.close()
        await shell.close()  # idempotent


@needs_sshd
async def test_closing_a_shell_ends_what_it_runs(world: World, tmp_path: Path) -> None:
    shell = await ssh.open_shell(world.target(), "vt100", 80, 24,
                                 command=f"echo $$ > {tmp_path}/pid; exec sleep 100")
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pid = int((tmp_path / "pid").read_text())
    assert alive(pid)
    await shell.close()
    assert gone(pid) and await shell.read() is None
    shell.write(b"ignored after close\n")


@needs_sshd
async def test_a_shell_that_cannot_connect_raises(world: World) -> None:
    with pytest.raises(ProviderUnavailable, match="connection refused"):
        await ssh.open_shell(world.target(host=world.down.address), "xterm", 80, 24)


# ---- authorized keys -----------------------------------------------------------------------
def sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def new_key(comment: str = "") -> tuple[str, str]:
    """(the public key line, its "type base64")."""
    line = public(asyncssh.generate_private_key("ssh-ed25519"))
    kind, data = line.split()[:2]
    return f"{kind} {data} {comment}".strip(), f"{kind} {data}"


def test_authorize_adds_the_key_once_in_private_files(tmp_path: Path) -> None:
    line, _ = new_key("me@laptop")
    script = ssh.authorize_script(me(), line, home=str(tmp_path))
    first, again = sh(script), sh(script)
    assert first.returncode == 0 and "key authorized" in first.stdout, first
    assert again.returncode == 0 and "already authorized" in again.stdout, again
    keys = tmp_path / ".ssh" / "authorized_keys"
    assert keys.read_text() == line + "\n"
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_authorize_keeps_other_lines_and_matches_by_type_and_base64(tmp_path: Path) -> None:
    line, core = new_key("new comment")
    other, _ = new_key("other")
    (tmp_path / ".ssh").mkdir(mode=0o700)
    keys = tmp_path / ".ssh" / "authorized_keys"
    before = f"# my keys\n# {core} commented out\nno-pty,from=\"10.0.0.1\" {other}"  # no \n
    keys.write_text(before)
    assert sh(ssh.authorize_script(me(), line, home=str(tmp_path))).returncode == 0
    assert keys.read_text() == before + "\n" + line + "\n"
    # the same key with another comment (or options) is already there
    r = sh(ssh.authorize_script(me(), core + " different", home=str(tmp_path)))
    assert "already authorized" in r.stdout and keys.read_text().count(core) == 2


def test_revoke_removes_every_line_of_the_key_and_nothing_else(tmp_path: Path) -> None:
    line, core = new_key("mine")
    other, _ = new_key("other")
    (tmp_path / ".ssh").mkdir(mode=0o700)
    keys = tmp_path / ".ssh" / "authorized_keys"
    keys.write_text(f"# header\n{other}\ncommand=\"uptime\" {core} old\n# {core} kept\n"
                    f"{line}\n\n")
    keys.chmod(0o640)
    r = sh(ssh.revoke_script(me(), core, home=str(tmp_path)))
    assert r.returncode == 0 and "key revoked" in r.stdout, r
    assert keys.read_text() == f"# header\n{other}\n# {core} kept\n\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640  # rewritten in place
    assert [p.name for p in (tmp_path / ".ssh").iterdir()] == ["authorized_keys"]
    r = sh(ssh.revoke_script(me(), line, home=str(tmp_path)))
    assert r.returncode == 0 and "was not authorized" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "was not authorized" in sh(ssh.revoke_script(me(), line, home=str(empty))).stdout


def test_a_comment_is_data_not_shell(tmp_path: Path) -> None:
    kind_data = new_key()[1]
    line = f"{kind_data} $(touch {tmp_path}/pwned) `id` ';\" x"
    assert sh(ssh.authorize_script(me(), line, home=str(tmp_path))).returncode == 0
    assert (tmp_path / ".ssh" / "authorized_keys").read_text() == line + "\n"
    assert not (tmp_path / "pwned").exists()


def test_an_unknown_user_is_said_so() -> None:
    r = sh(ssh.authorize_script("ocnosuchuser", new_key()[0]))
    assert r.returncode == 3 and "there is no user ocnosuchuser" in r.stderr, r


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_as_root_the_files_belong_to_the_user_and_links_are_refused(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "nobody"
    home.mkdir()
    assert sh(ssh.authorize_script("nobody", new_key()[0], home=str(home))).returncode == 0
    for path in (home / ".ssh", home / ".ssh" / "authorized_keys"):
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / ".ssh").symlink_to(tmp_path / "elsewhere")
    r = sh(ssh.authorize_script("nobody", new_key()[0], home=str(planted)))
    assert r.returncode == 4 and "symbolic link" in r.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("user", ["Root", "a b", "x;rm", "-x", "", "a" * 40, "ü"])
def test_bad_user_names_are_refused(user: str) -> None:
    with pytest.raises(ValueError, match="not a valid user name"):
        ssh.authorize_script(user, new_key()[0])


def test_bad_public_keys_are_refused() -> None:
    line, core = new_key()
    data = core.split()[1]
    for bad in ["ssh-ed25519", f"{line}\n{line}", "ssh-ed25519 not-base64!",
                f"ssh-rsa {data}", f"{core} bell\x07", f"from=\"x\" {core}"]:
        with pytest.raises(ValueError):
            ssh.revoke_script("root", bad)
    assert ssh.parse_public_key(f"  {core}  c o m  \n") == (*core.split(), "c o m")


@needs_sshd
async def test_a_key_authorized_over_ssh_logs_in_until_revoked(world: World) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    as_new = world.target(private_key=private(key))
    with pytest.raises(ProviderAuthError):
        await ssh.run_command(as_new, "true")
    script = ssh.authorize_script("root", public(key), home=str(world.home))
    code, out, err = await ssh.run_command(world.target(), "sh -s", input=script.encode())
    assert code == 0 and b"key authorized" in out, err
    assert await ssh.run_command(as_new, "echo in") == (0, b"in\n", b"")
    script = ssh.revoke_script("root", public(key), home=str(world.home))
    code, out, err = await ssh.run_command(as_new, "sh -s", input=script.encode())
    assert code == 0 and b"key revoked" in out, err
    with pytest.raises(ProviderAuthError):
        await ssh.run_command(as_new, "true")
