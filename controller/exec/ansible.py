"""Ansible payloads: ``ansible-playbook`` run on the controller against one SSH target.

Blocks nothing: the playbook is a subprocess read on the event loop (files are written in a
thread). Everything it needs lives in one private temporary directory removed before
returning: the playbook (or the unpacked archive), the key (0600), a known_hosts file, the
inventory, the variables, and ansible's own home and temp dirs, so nothing touches the
controller's home. Never raises for the target's sake: failures are ``RunResult.error``.

Host key: the target is first reached with asyncssh (the pin checked, or without one the key
offered taken: trust on first use, as for ``controller.exec.ssh``); ansible's ssh is then held
to exactly that key (StrictHostKeyChecking=yes), so the key checked is the key used.
``payload.env`` becomes extra vars read from a file, never on a command line (``ps`` shows
those), each marked ``!unsafe`` so a "{{ }}" in a value is data, not a template evaluated on
the controller. No value or key is logged. A remote command still running when ansible is
killed (timeout, cancel) is not signalled by sshd and may outlive the run on the target.

Security: a playbook can run commands on the controller itself (``delegate_to: localhost``,
``connection: local``, ``pipe`` lookups) as the controller's user. It gets a fixed, clean
environment (none of the controller's variables), but this is not a sandbox: whoever may run
Ansible payloads must be trusted with the controller."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
from pathlib import Path

from controller.exec import ssh, sshrun
from controller.exec.model import OutputSink, Payload, RunResult, SshTarget

log = logging.getLogger(__name__)

KILL_GRACE = 2.0     # seconds between TERM and KILL of ansible's process group
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def playbook_command() -> str | None:
    """ansible-playbook beside this Python (the same venv), else on PATH, else None."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ansible-playbook")


def _secret_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _known_host(target: SshTarget, host_key: str) -> str:
    name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    return f"{name} {host_key}\n"


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar of exactly ``value`` (anything not printable ASCII is
    escaped, so no character can trip the YAML reader)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def extra_vars(env: dict[str, str]) -> str:
    """``env`` as a YAML vars file whose values are ``!unsafe``: ansible would otherwise
    evaluate a "{{ ... }}" in a value as a template, on the controller."""
    return "".join(f"{_yaml_string(name)}: !unsafe {_yaml_string(value)}\n"
                   for name, value in env.items())


def _unpack(payload: Payload, into: Path) -> Path:
    """The playbook file: the content itself, or the archive's entrypoint once unpacked."""
    into.mkdir(mode=0o700)
    if not payload.entrypoint:
        path = into / "playbook.yml"
        path.write_bytes(payload.content)
        return path
    entry = sshrun.check_entrypoint(payload.entrypoint)
    try:
        with tarfile.open(fileobj=io.BytesIO(payload.content), mode="r:gz") as tar:
            tar.extractall(into, filter="data")  # no links out, no devices, no absolute paths
    except (tarfile.TarError, OSError, EOFError, ValueError):
        raise ValueError("the archive cannot be unpacked (expected a gzip'd tar)") from None
    path = into / entry
    if not path.is_file() or not path.resolve().is_relative_to(into.resolve()):
        raise ValueError(f"the archive has no file {entry}")
    return path


def remote_tmp(tmp: Path) -> str:
    """Where on the target this run's modules are written: named after the run's own
    directory, so what runs from there can be found (and stopped) on the target."""
    return f"/tmp/.overcast-ansible-{tmp.name.rsplit('-', 1)[-1]}"


# Stops what a killed run left on the target: sshd does not signal a session without a
# terminal when its client goes, so the module (and what it started) would run on. Each
# module runs as `sh -c '... <remote_tmp>/.../AnsiballZ_x.py ...'`, the leader of its own
# session: every session with such a process is killed. Read from standard input (`sh -s`),
# so the pattern is in no command line of its own.
_REMOTE_STOP = """t={tmp}
for p in $(pgrep -f -- "$t/" 2>/dev/null); do
  s=$(ps -o sid= -p "$p" 2>/dev/null | tr -d ' ')
  case $s in ''|0|1) continue ;; esac
  pkill -KILL -s "$s" 2>/dev/null
done
rm -rf -- "$t"
"""


async def stop_remote(target: SshTarget, tmp: Path) -> None:
    """Kill what this run started on the target and remove its files there (best effort:
    failures are logged, never raised)."""
    try:
        await ssh.run_command(target, "sh -s", input=_REMOTE_STOP.format(
            tmp=shlex.quote(remote_tmp(tmp))).encode(), timeout=15)
    except Exception as exc:  # noqa: BLE001 - the target is gone: nothing runs there
        log.info("ansible on %s: could not stop the remote side: %s", target.label, exc)


def prepare(tmp: Path, exe: str, target: SshTarget, payload: Payload,
            host_key: str) -> tuple[list[str], Path, dict[str, str]]:
    """Write everything the run needs under ``tmp`` (blocking); (argv, cwd, environment).
    ValueError when the payload cannot be used."""
    names = [n for n in payload.env if not sshrun.env_name_ok(n)]
    if names:
        raise ValueError(f"{names[0]!r} is not a valid variable name")
    playbook = _unpack(payload, tmp / "play")
    for sub in ("home", "local", "cp", "tmp"):
        (tmp / sub).mkdir(mode=0o700)
    key = ssh.client_key(target.private_key).export_private_key("openssh")
    _secret_file(tmp / "key", key)
    (tmp / "known_hosts").write_text(_known_host(target, host_key))
    ssh_args = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "UpdateHostKeys=no", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no"]
    host: dict[str, object] = {
        "ansible_host": target.host, "ansible_port": target.port, "ansible_user": target.user,
        "ansible_ssh_private_key_file": str(tmp / "key"),
        "ansible_ssh_common_args": " ".join(shlex.quote(a) for a in ssh_args),
        "ansible_python_interpreter": "auto_silent",
        # modules as files under a directory of this run's (not piped): see _REMOTE_STOP
        "ansible_remote_tmp": remote_tmp(tmp)}
    if sshrun.sudo(target, payload):
        host["ansible_become"] = True  # ansible's sudo flags include -n: it never prompts
    inventory = {"all": {"hosts": {"target": host}}}
    (tmp / "inventory.yml").write_text(json.dumps(inventory))  # JSON is YAML
    argv = [exe, "-i", str(tmp / "inventory.yml"), str(playbook)]
    if payload.env:
        _secret_file(tmp / "vars.yml", extra_vars(payload.env).encode())
        argv += ["--extra-vars", f"@{tmp / 'vars.yml'}"]
    argv += payload.args
    # never the archive's own ansible.cfg (it could point plugin paths into the archive) nor
    # the system's: an empty one
    config = tmp / "ansible.cfg"
    config.write_text("")
    env = {
        "PATH": f"{Path(exe).parent}:{_SYSTEM_PATH}", "HOME": str(tmp / "home"),
        "TMPDIR": str(tmp / "tmp"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "ANSIBLE_CONFIG": str(config), "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "cp"),
        # no persistent master: it would outlive the run (and its directory)
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none",
        "ANSIBLE_PIPELINING": "False", "ANSIBLE_TIMEOUT": str(max(1, int(target.connect_timeout))),
    }
    return argv, playbook.parent, env


async def _host_key(target: SshTarget) -> str:
    """The key the target offers ("type base64"), checked against the pin if any."""
    conn = await ssh.connect(target)
    try:
        offered = conn.get_server_host_key()
    finally:
        await ssh.close(conn)
    if offered is None:
        raise ssh.HostKeyMismatch("no key")
    return " ".join(offered.export_public_key("openssh").decode().split()[:2])


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """TERM ansible's process group, KILL what is left after KILL_GRACE; also after a
    normal exit (whatever it left running). The group outlives its reaped leader only while
    members remain, so its id cannot be someone else's."""
    if not _signal_group(proc.pid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + KILL_GRACE
    while loop.time() < end:
        await asyncio.sleep(0.1)
        if proc.returncode is not None and not _signal_group(proc.pid, 0):
            return
    _signal_group(proc.pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader | None, name: str,
                out: sshrun.LimitedOutput) -> None:
    while stream is not None and (chunk := await stream.read(65536)):
        out.feed(name, chunk)


async def run_playbook(target: SshTarget, payload: Payload, sink: OutputSink,
                       cancel: asyncio.Event | None = None) -> RunResult:
    """Run the payload's playbook against ``target``, streaming ansible's output to
    ``sink``; ``payload.timeout`` and ``cancel`` kill its process group. Returns once it
    ended and its files are removed."""
    if not payload.verify():
        return RunResult(error="the payload does not match its sha256; refused")
    exe = playbook_command()
    if exe is None:
        return RunResult(error="ansible-playbook is not installed on the controller")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + payload.timeout
    out, result = sshrun.LimitedOutput(sink, payload.max_output), RunResult()
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="overcast-ansible-"))
    proc: asyncio.subprocess.Process | None = None
    try:
        host_key = await sshrun.bounded(_host_key(target), cancel, deadline)
        argv, cwd, env = await asyncio.to_thread(prepare, tmp, exe, target, payload, host_key)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        pumps = asyncio.gather(_pump(proc.stdout, "stdout", out),
                               _pump(proc.stderr, "stderr", out))
        try:
            result.exit_code = await sshrun.bounded(proc.wait(), cancel, deadline)
        finally:
            await _kill_group(proc)
            try:
                await asyncio.wait_for(pumps, sshrun.DRAIN)
            except TimeoutError:
                log.info("ansible on %s: output still open after the run", target.label)
    except TimeoutError:
        result.timed_out, result.error = True, f"timed out after {payload.timeout:g}s"
        if proc is not None:
            await stop_remote(target, tmp)
    except sshrun.Stop:
        result.cancelled, result.error = True, "cancelled"
        if proc is not None:
            await stop_remote(target, tmp)
    except ValueError as exc:
        result.error = str(exc)
    except Exception as exc:  # reaching the target failed: in words
        result.error = ssh.reason(exc, target)[0]
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()  # only if the group kill could not reach it
            await proc.wait()
        await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)
    result.truncated, result.output_bytes = out.truncated, out.total
    log.debug("ansible on %s ended: exit %s, %s", target.label, result.exit_code,
              result.error or "ok")
    return result
