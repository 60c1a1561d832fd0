"""The agent's script runner, with real processes: content checked before anything runs,
output streamed and capped, archives unpacked safely, the environment minimal, and a
timeout, a cancel or the end of a run leaving nothing of it running."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pwd
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest

from agent import exec as agent_exec
from agent.exec import DEFAULT_MAX_OUTPUT, Executor
from overcast.agent.v1 import agent_pb2 as pb


class Up:
    """What the executor sends, collected."""

    def __init__(self) -> None:
        self.messages: list[pb.AgentMessage] = []

    async def send(self, msg: pb.AgentMessage) -> None:
        self.messages.append(msg)

    def of(self, kind: str) -> list[pb.AgentMessage]:
        return [m for m in self.messages if m.WhichOneof("body") == kind]

    def output(self, stream: int = pb.CommandOutput.STDOUT) -> bytes:
        return b"".join(m.command_output.data for m in self.of("command_output")
                        if m.command_output.stream == stream)

    @property
    def result(self) -> pb.CommandResult:
        [r] = self.of("command_result")
        return r.command_result

    @property
    def started(self) -> bool:
        return bool(self.of("command_started"))


def command(content: bytes, cid: str = "c1", timeout_s: int = 0, **kw: object) -> pb.Command:
    sha = kw.pop("sha256", hashlib.sha256(content).hexdigest())
    return pb.Command(id=cid, timeout_s=timeout_s,
                      run=pb.RunScript(content=content, sha256=sha, **kw))  # type: ignore[arg-type]


async def run(content: bytes, **kw: object) -> Up:
    up = Up()
    await Executor(up.send).handle(command(content, **kw))
    return up


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps, as under a container's init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_output_streams_and_exit_code() -> None:
    up = await run(b"#!/bin/sh\necho out\necho err >&2\necho more\nexit 7\n")
    kinds = [m.WhichOneof("body") for m in up.messages]
    assert kinds[0] == "command_started" and kinds[-1] == "command_result"
    assert up.of("command_started")[0].command_started.pid > 0
    assert up.output() == b"out\nmore\n"
    assert up.output(pb.CommandOutput.STDERR) == b"err\n"
    r = up.result
    assert (r.command_id, r.exit_code, r.error, r.timed_out, r.cancelled, r.output_truncated) == (
        "c1", 7, "", False, False, False)


async def test_an_interpreter_a_file_without_a_shebang_and_arguments(tmp_path: Path) -> None:
    up = await run(b"print('py', 6 * 7)\n", interpreter=sys.executable)
    assert up.output() == b"py 42\n"
    up = await run(b'echo "sh $# $1"\n', args=["one two"])  # no #!: run by /bin/sh
    assert up.output() == b"sh 1 one two\n" and up.result.exit_code == 0


async def test_content_that_does_not_match_its_sha256_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = f"#!/bin/sh\ntouch {marker}\n".encode()
    up = await run(script, sha256=hashlib.sha256(b"something else").hexdigest())
    assert "does not match its sha256" in up.result.error
    assert not up.started and not marker.exists()
    up = await run(script, sha256="")  # the controller always sets it: none is refused
    assert "sha256" in up.result.error and not marker.exists()
    up = await run(script, sha256=hashlib.sha256(script).hexdigest().upper())  # hex is hex
    assert up.result.error == "" and marker.exists()


async def test_a_program_that_cannot_start_is_an_error_result() -> None:
    up = await run(b"echo\n", interpreter="/nonexistent/interpreter")
    assert "cannot start /nonexistent/interpreter" in up.result.error and not up.started


async def test_an_archive_runs_its_entrypoint_in_its_directory() -> None:
    content = archive({"bin/run.sh": b'#!/bin/sh\ncat data.txt\npwd\necho "$@"\n',
                       "data.txt": b"from the archive\n"})
    up = await run(content, entrypoint="bin/run.sh", args=["a", "b"])
    assert up.result.error == "" and up.result.exit_code == 0
    text, cwd, args = up.output().decode().splitlines()
    assert text == "from the archive" and args == "a b"
    assert os.path.basename(cwd).startswith("overcast-run-")
    assert not os.path.exists(cwd)  # removed after the run


async def test_bad_archives_are_refused(tmp_path: Path) -> None:
    up = await run(b"not a gzip'd tar", entrypoint="run.sh")
    assert "cannot be unpacked" in up.result.error and not up.started
    up = await run(archive({"other.sh": b"#!/bin/sh\n"}), entrypoint="run.sh")
    assert "no file 'run.sh'" in up.result.error and not up.started
    up = await run(archive({"run.sh": b"#!/bin/sh\n"}), entrypoint="../run.sh")
    assert "no file" in up.result.error and not up.started
    escape = tmp_path / "escaped"
    depth = "../" * 12  # from /tmp/overcast-run-x/ up past the root, whatever TMPDIR is
    up = await run(archive({"run.sh": b"#!/bin/sh\n", f"{depth}{escape}": b"x"}), entrypoint="run.sh")
    assert "refused" in up.result.error and not up.started
    assert not escape.exists()


async def test_the_environment_is_minimal_plus_what_the_command_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERCAST_AGENT_SETTING", "of the agent")
    up = await run(b"#!/bin/sh\nenv\n", env={"API_TOKEN": "s3cr3t", "LANG": "C"})
    env = dict(line.split("=", 1) for line in up.output().decode().splitlines() if "=" in line)
    assert env["API_TOKEN"] == "s3cr3t" and env["LANG"] == "C"  # the command's win
    assert env["PATH"] == agent_exec.PATH and env["HOME"] and env["USER"] == env["LOGNAME"]
    assert "OVERCAST_AGENT_SETTING" not in env


async def test_a_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\necho started\nsleep 300\n".encode()
    t0 = time.monotonic()
    up = await run(script, timeout_s=1)
    assert time.monotonic() - t0 < 10
    r = up.result
    assert r.timed_out and not r.cancelled and r.exit_code == -signal.SIGTERM
    assert up.output() == b"started\n"
    assert not alive(int(pidfile.read_text()))


async def test_a_cancel_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # the script ignores SIGTERM: SIGKILL follows
    script = f"#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! > {pidfile}\nwait\n".encode()
    up = Up()
    ex = Executor(up.send)
    task = ex.start(command(script))
    assert ex.running == ["c1"]
    await until(lambda: pidfile.exists() and pidfile.read_text().strip())
    assert ex.cancel("c1") and not ex.cancel("nothing-such")
    await task
    r = up.result
    assert r.cancelled and not r.timed_out and r.exit_code == -signal.SIGKILL
    assert not alive(int(pidfile.read_text())) and ex.running == []


async def test_nothing_outlives_a_run_and_open_pipes_do_not_hold_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # a background child keeps stdout open after the script has exited
    script = f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nexit 0\n".encode()
    t0 = time.monotonic()
    up = await run(script)
    assert time.monotonic() - t0 < 5 and up.result.exit_code == 0
    assert not alive(int(pidfile.read_text()))
    # one that left the group (setsid): the run ends anyway, output no longer read
    if os.path.exists("/usr/bin/setsid"):
        script = f"#!/bin/sh\nsetsid sleep 300 &\necho $! > {pidfile}\nsleep 0.2\n".encode()
        t0 = time.monotonic()
        up = await run(script)
        assert time.monotonic() - t0 < 10 and up.result.exit_code == 0
        pid = int(pidfile.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_output_past_the_limit_is_dropped_and_the_run_goes_on() -> None:
    script = b"#!/bin/sh\nhead -c 3145728 /dev/zero\necho done >&2\nexit 0\n"
    up = await run(script)
    sent = sum(len(m.command_output.data) for m in up.of("command_output"))
    assert sent == DEFAULT_MAX_OUTPUT  # max_output_bytes 0: the default
    assert all(len(m.command_output.data) <= agent_exec.CHUNK for m in up.of("command_output"))
    assert up.result.output_truncated and up.result.exit_code == 0
    up = await run(script, max_output_bytes=1000)
    assert len(up.output()) == 1000 and up.result.output_truncated
    up = await run(b"#!/bin/sh\nprintf 12345\n", max_output_bytes=5)
    assert up.output() == b"12345" and not up.result.output_truncated


async def test_limits_and_duplicates_are_refused(tmp_path: Path) -> None:
    up = Up()
    ex = Executor(up.send, max_running=1)
    long = ex.start(command(b"#!/bin/sh\nexec sleep 300\n", cid="long"))
    await ex.handle(command(b"#!/bin/sh\n", cid="long"))
    assert up.of("command_result")[0].command_result.error == "command long is already running"
    await ex.handle(command(b"#!/bin/sh\n", cid="other"))
    assert "too many commands running" in up.of("command_result")[1].command_result.error
    await ex.handle(pb.Command(id="empty"))
    assert "no script" in up.of("command_result")[2].command_result.error
    await ex.close()  # the agent stops: runs are killed
    assert long.done()
    last = up.of("command_result")[-1].command_result
    assert last.command_id == "long" and last.cancelled
    await ex.handle(command(b"#!/bin/sh\n", cid="late"))
    assert up.of("command_result")[-1].command_result.error == "the agent is stopping"


async def test_a_broken_stream_does_not_stop_a_run(tmp_path: Path) -> None:
    marker = tmp_path / "done"

    async def broken(msg: pb.AgentMessage) -> None:
        raise ConnectionError("stream gone")

    await Executor(broken).handle(command(f"#!/bin/sh\necho x\ntouch {marker}\n".encode()))
    assert marker.exists()


def _other_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _other_user() is None,
                    reason="switching users needs root and a 'nobody' account")
async def test_runs_as_another_user() -> None:
    nobody = _other_user()
    assert nobody is not None
    up = await run(b'#!/bin/sh\nid -u\necho "$HOME $USER"\nid -G\n', user="nobody")
    uid, home_user, groups = up.output().decode().splitlines()
    assert int(uid) == nobody.pw_uid and home_user == f"{nobody.pw_dir} nobody"
    assert "0" not in groups.split()  # root's groups are dropped
    content = archive({"run.sh": b"#!/bin/sh\ncat data\n", "data": b"readable\n"})
    up = await run(content, entrypoint="run.sh", user="nobody")
    assert up.output() == b"readable\n"  # the unpacked files are the user's


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, the agent can switch users")
async def test_another_user_is_refused_unless_the_agent_is_root() -> None:
    other = "root"
    up = await run(b"#!/bin/sh\n", user=other)
    assert "not as root" in up.result.error and not up.started


async def test_an_unknown_user_is_refused() -> None:
    up = await run(b"#!/bin/sh\n", user="no-such-user-overcast")
    assert up.result.error == "no user 'no-such-user-overcast' on this host" and not up.started


async def test_ansible_needs_ansible_playbook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_exec.shutil, "which", lambda *a, **kw: None)
    up = await run(b"- hosts: all\n", ansible=True)
    assert up.result.error == "ansible-playbook is not installed on this host"


def _ansible_bin() -> str:
    import shutil

    here = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return shutil.which("ansible-playbook") or (here if os.access(here, os.X_OK) else "")


@pytest.mark.skipif(not _ansible_bin(), reason="ansible-playbook is not installed")
async def test_an_ansible_playbook_runs_against_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the agent finds ansible-playbook on its own PATH (this test's: the virtual environment's)
    monkeypatch.setenv("PATH", os.path.dirname(_ansible_bin()) + os.pathsep + os.environ["PATH"])
    target = tmp_path / "written-by-ansible"
    playbook = f"""- hosts: all
  gather_facts: false
  tasks:
    - copy:
        dest: {target}
        content: "hello from ansible\\n"
""".encode()
    up = await run(playbook, ansible=True, timeout_s=120,
                   args=["-e", f"ansible_python_interpreter={sys.executable}"])
    assert up.result.exit_code == 0, up.output() + up.output(pb.CommandOutput.STDERR)
    assert target.read_text() == "hello from ansible\n"
    assert b"changed=1" in up.output()
