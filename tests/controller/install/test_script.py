"""The agent's install script and its one-line command: valid POSIX sh (``sh -n``, dash,
bash; shellcheck clean where installed), the command's forms (plain, own CA, a tunnel's URL,
a certificate the operator gave or a proxy's, options appended), the controller's URL filled
in, the shell answer refusing unsafe values, usage errors with their exit codes, --help
through a pipe, and the systemd units it installs (root and --user), checked by
``systemd-analyze verify``.

Then the script run for real on a fake host (``FakeHost``): its directories under a
temporary one, and a PATH of the few real tools it uses and stubs for the rest (systemctl,
useradd, id, curl with a fake controller behind it, apt-get/dpkg, dnf/yum/rpm, a Python
whose virtual environments are stubs too). That is where what an e2e run cannot show is
shown: the install record (root's, read key by key, never run), a unit that does not start
(disabled and gone again, the agent to revoke named), what uninstall removes (only what the
record says), the options a re-run keeps, a failed re-run leaving the earlier install as it
was, the OS packages (dnf or yum, Python 3.11 missing, removed again), no systemd without
--foreground, and the join token on no command line. Those runs need root (chown, the
record's owner); the real install runs in tests/e2e/test_agent_install.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.install import script
from controller.install.package import Package

URL = "https://ctl.example:7080"
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_the_script_parses(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    r = subprocess.run([shell, "-n", str(script.SCRIPT_PATH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for dialect in ("sh", "dash"):
        r = subprocess.run(["shellcheck", "-s", dialect, str(script.SCRIPT_PATH)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_the_served_script_defaults_to_the_controller() -> None:
    text = script.script(URL).decode()
    assert f'CONTROLLER="{URL}"\n' in text and "@OVERCAST" not in text
    for bad in ("https://x.example/$(id)", "file:///etc/passwd", "https://a b"):
        with pytest.raises(ValueError):
            script.script(bad)


def test_the_commands_pin_the_ca_and_take_more_options() -> None:
    fp = "ab" * 32
    own = script.command(URL, "ocj_abc-_", fp, own_ca=True, default_url=URL)
    assert own.startswith("sh -c ") and f"grep -q ^{fp}" in own
    assert f"curl -fsSLk {URL}/ca.pem" in own and f"--cacert $t/ca.pem {URL}/install/agent.sh" in own
    assert f"--token ocj_abc-_ --ca-fingerprint sha256:{fp}" in own and "--controller" not in own
    plain = script.command("http://127.0.0.1:7080", "ocj_abc", fp, own_ca=True,
                           default_url="http://127.0.0.1:7080")
    assert plain == ("curl -fsSL http://127.0.0.1:7080/install/agent.sh | sudo sh -s -- "
                     f"--token ocj_abc --ca-fingerprint sha256:{fp}")
    operator = script.command(URL, "ocj_abc", fp, own_ca=False, default_url=URL)
    assert operator.startswith(f"curl -fsSL {URL}/install/agent.sh | sudo sh -s -- --token")
    hub = script.command("https://100.96.0.1:7080", "ocj_abc", fp, own_ca=True, default_url=URL)
    assert "--controller https://100.96.0.1:7080 --token" in hub
    for cmd in (own, plain, operator, hub):
        assert subprocess.run(["sh", "-n", "-c", cmd]).returncode == 0
    # options appended to the own-CA form reach the script (its "$@"), not the wrapper
    sh, c, inner, name = shlex.split(own)
    assert (sh, c, name) == ("sh", "-c", "agent.sh")
    last = "echo " + inner.split("sudo sh $t/agent.sh ", 1)[1]  # the script's own arguments
    r = subprocess.run(["sh", "-c", last, name, "--user", "--name", "web1"], capture_output=True,
                       text=True)
    assert r.stdout == f"--token ocj_abc-_ --ca-fingerprint sha256:{fp} --user --name web1\n"


def test_behind_a_proxy_or_with_the_operators_certificate_the_command_is_plain() -> None:
    """The sh -c wrapper fetches the script with --cacert (the own CA): with a certificate
    the operator gave (tls_cert) or a reverse proxy's (behind_proxy) that fails, so the
    command is the plain one (the script checks the pin itself); a tunnel's hub URL always
    has the own CA's certificate."""
    from controller.agents.service import AgentService
    from controller.settings import Settings

    def command(url: str = "", **kw: Any) -> str:
        return AgentService(Settings(external_url=URL, **kw), None, None).install_command("ocj_x", url)  # type: ignore[arg-type]

    plain = f"curl -fsSL {URL}/install/agent.sh | sudo sh -s -- --token ocj_x --ca-fingerprint sha256:"
    assert command(behind_proxy=True, tls="off").startswith(plain)
    assert command(tls_cert="/etc/ssl/c.pem", tls_key="/etc/ssl/k.pem").startswith(plain)
    assert command().startswith("sh -c ") and "--cacert $t/ca.pem" in command()
    hub = command("https://100.96.0.1:7080", behind_proxy=True, tls="off")
    assert hub.startswith("sh -c ") and "--controller https://100.96.0.1:7080" in hub


def test_help_through_a_pipe() -> None:
    """curl ... | sh -s -- --help: $0 is sh there, so the text is the script's own."""
    r = subprocess.run(["sh", "-s", "--", "--help"], input=script.SCRIPT_PATH.read_text(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: curl -fsSL CONTROLLER/install/agent.sh | sudo sh -s --")
    for words in ("--token TOKEN", "--uninstall", "Exit codes:", "--root"):
        assert words in r.stdout


def test_the_token_can_come_on_standard_input(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """``python -m agent --token-file -`` (the script's enrolment): the token never on a
    command line; --token still works; not both."""
    import argparse
    import io

    import agent.enroll
    from agent import main as agent_main

    got: list[str] = []
    monkeypatch.setattr(agent.enroll, "enroll", lambda state, url, token, fp, name: got.append(token) or "a1")

    def run(*argv: str, stdin: str = "") -> int:
        p = argparse.ArgumentParser()
        agent_main.add_arguments(p)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return agent_main.run(p.parse_args(["--config", "", "--state-dir", str(tmp_path),
                                            "--controller", URL, "--enrol-only", *argv]))

    run("--token-file", "-", stdin="ocj_from-stdin\n")
    (tmp_path / "t").write_text("ocj_from-file\n")
    run("--token-file", str(tmp_path / "t"))
    run("--token", "ocj_on-the-line")
    assert got == ["ocj_from-stdin", "ocj_from-file", "ocj_on-the-line"]
    assert run("--token", "x", "--token-file", "-", stdin="y\n") == 2
    assert run("--token-file", "-", stdin="\n") == 2


def test_the_shell_answer_refuses_unsafe_values() -> None:
    pkg = Package("overcast_agent-0.1.0-py3-none-any.whl", "0.1.0", b"x", "ab" * 32)
    text = script.shell_answer(script.manifest(pkg, 7))
    assert "OC_SHA256='" + "ab" * 32 + "'\n" in text and "OC_WHEELS='7'\n" in text
    assert "OC_PACKAGE_URL='/install/packages/overcast_agent-0.1.0-py3-none-any.whl'\n" in text
    with pytest.raises(ValueError):
        script.shell_answer({"version": "x'; rm -rf /; '"})


@pytest.mark.parametrize(("args", "words"), [
    (["--bogus"], "unknown argument: --bogus"),
    (["--prefix", "relative/dir"], "must be absolute paths"),
    (["--prefix", "/opt/my agent"], "letters, digits"),
    (["--interval", "soon"], "--interval must be a number"),
    (["--state-dir", "/var/../lib"], "no . or .. parts"),
    (["--prefix", "/"], "must be absolute paths"),
    (["--config-dir", ""], "must be absolute paths"),
    (["--name", "web 1"], "--name may have letters"),
    (["--memory-max", "1G\nExecStartPre=/bin/evil"], "--memory-max must be like"),
    (["--tasks-max", "many"], "--tasks-max must be a number"),
    (["--token", "ocj_x;id"], "not a join token"),
    (["--ca-fingerprint", "sha256:abc"], "64 hex digits"),
    (["--controller", "https://c.example/$(id)"], "--controller must be an http(s):// URL"),
    (["--token"], "--token needs a value"),
])
def test_usage_errors_exit_2(args: list[str], words: str) -> None:
    r = subprocess.run(["sh", str(script.SCRIPT_PATH), *args], capture_output=True, text=True)
    assert r.returncode == 2 and words in r.stderr, r.stderr


@pytest.mark.parametrize("user", [False, True])
def test_the_systemd_units_verify(tmp_path: Path, user: bool) -> None:
    """The unit the script writes (``--print-unit`` prints the same, installing nothing),
    checked offline by systemd's own parser: as root (resources limited only: scripts,
    shells and tunnels administer the host) and with --user (fenced in)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    prefix = tmp_path / "opt" / "overcast-agent"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    served = tmp_path / "agent.sh"
    served.write_bytes(script.script(URL))
    r = subprocess.run(["sh", str(served), "--print-unit", "--prefix", str(prefix),
                        *(["--user"] if user else [])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "overcast-agent.service"
    unit.write_text(r.stdout)
    assert f"ExecStart={prefix}/bin/python -m agent --config /etc/overcast/agent.toml\n" in r.stdout
    assert "Restart=on-failure" in r.stdout and "RestartPreventExitStatus=2 3" in r.stdout
    assert ("MemoryMax=256M" if user else "MemoryMax=1G") in r.stdout
    assert ("User=overcast-agent" in r.stdout) is user
    assert ("ProtectSystem=strict" in r.stdout) is user
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
    assert not (tmp_path / "etc").exists()  # nothing installed


# ---- the script run on a fake host ------------------------------------------------------------

# the real tools the script uses (the rest are stubs: see STUB)
TOOLS = ("awk", "base64", "cat", "chgrp", "chmod", "chown", "cp", "cut", "dirname", "env", "grep",
         "head", "ls", "mkdir", "mktemp", "mv", "readlink", "rm", "rmdir", "sed", "sha256sum",
         "sleep", "tail", "tr", "uname")
STUBS = ("curl", "systemctl", "useradd", "userdel", "id", "apt-get", "apt-cache", "dpkg-query",
         "dnf", "yum", "rpm")
SH = shutil.which("sh") or "/bin/sh"
SVC_ID = 4242  # the fake overcast-agent's uid and gid
TOKEN = "ocj_the-join-token_123"
AGENT_ID = "ab" * 16
CA_DER = b"a fake CA certificate"
FP = hashlib.sha256(CA_DER).hexdigest()

# One program for every stub, by the name it is run as; it logs each call (calls.jsonl) and
# does what stub.json says. "python3.11" is the system's Python (-c runs the real one; -m venv
# makes an environment of stubs), "python" an environment's (pip, agent.config for real,
# enrolment reading the token from standard input, the agent itself).
STUB = r"""#!{python} -I
import json, os, subprocess, sys, tomllib
ROOT = {root!r}
REPO = {repo!r}
REAL = {python!r}
STUB = os.path.join(ROOT, "stub.py")
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
cfg = json.load(open(os.path.join(ROOT, "stub.json")))
call = {{"cmd": name, "args": args}}

def done(code=0, out="", err=""):
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
        f.write(json.dumps(call) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)

def installed():
    try:
        return set(json.load(open(os.path.join(ROOT, "pkgs.json"))))
    except FileNotFoundError:
        return set(cfg.get("preinstalled", []))

def keep(pkgs):
    json.dump(sorted(pkgs), open(os.path.join(ROOT, "pkgs.json"), "w"))

def pkg_install(names):
    for n in names:
        if n not in cfg.get("known", []):
            done(100, err=f"E: Unable to locate package {{n}}\n")
    keep(installed() | set(names))
    if "python3.11" in names:
        os.symlink(STUB, os.path.join(ROOT, "bin", "python3.11"))
    done()

def value(flag):
    return args[args.index(flag) + 1] if flag in args else ""

if name == "curl":
    if cfg.get("unreachable"):
        done(7, err="curl: (7) Failed to connect\n")
    url = next(a for a in args if a.startswith("http"))
    path = "/" + url.split("/", 3)[3]
    files = {{"/ca.pem": "ca.pem", "/api/v2/health": "health",
              "/install/agent.json?format=shell": "agent.shell"}}
    src = os.path.join(ROOT, "www", files.get(path, os.path.basename(path)))
    if not os.path.isfile(src):
        done(22, err="curl: (22) The requested URL returned error: 404\n")
    with open(src, "rb") as f, open(value("-o"), "wb") as o:
        o.write(f.read())
    done()
if name == "systemctl":
    done(1 if args[0] in cfg.get("systemctl_fails", []) else 0)
if name == "useradd":
    open(os.path.join(ROOT, "user-exists"), "w").close()
    done()
if name == "userdel":
    os.unlink(os.path.join(ROOT, "user-exists"))
    done()
if name == "id":
    if args and args[-1] == "overcast-agent":
        if not os.path.exists(os.path.join(ROOT, "user-exists")):
            done(1, err="id: 'overcast-agent': no such user\n")
        done(out="{svc}\n")
    os.execv("/usr/bin/id", ["id", *args])
if name in ("apt-get", "dnf", "yum"):
    if "install" in args:
        pkg_install([a for a in args[args.index("install") + 1:] if not a.startswith("-")])
    if "remove" in args:
        names = [a for a in args[args.index("remove") + 1:] if not a.startswith("-")]
        if "-s" in args:
            extra = cfg.get("dependents", [])
            done(out="".join(f"Remv {{n}} [1.0]\n" for n in [*names, *extra]))
        keep(installed() - set(names))
        done()
    if "info" in args:
        done(0 if args[-1] in cfg.get("known", []) else 1)
    done()
if name == "apt-cache":
    done(0 if args[-1] in cfg.get("known", []) else 100)
if name == "dpkg-query":
    if args[-1] in installed():
        done(out="install ok installed")
    done(1, err=f"dpkg-query: no packages found matching {{args[-1]}}\n")
if name == "rpm":
    if args[0] == "-q":
        done(0 if args[1] in installed() else 1)
    if args[0] == "-e":
        keep(installed() - set(args[1:]))
        done()
if name.startswith("python3"):  # the system's
    if args[:2] == ["-m", "venv"]:
        env = args[2]
        for d in ("bin", "lib/python3.11/site-packages"):
            os.makedirs(os.path.join(env, d), exist_ok=True)
        os.symlink(STUB, os.path.join(env, "bin", "python"))
        with open(os.path.join(env, "bin", "pip"), "w") as f:
            f.write(f"#!{{env}}/bin/python\n")
        open(os.path.join(env, "pyvenv.cfg"), "w").close()
        done()
    os.execv(REAL, [REAL, *args])
if name == "python":  # an environment's
    env = os.path.dirname(os.path.dirname(sys.argv[0]))
    if args[:2] == ["-m", "pip"]:
        if "install" in args:  # what it installed (a half when it fails, as pip may)
            with open(os.path.join(env, "installed"), "a") as f:
                f.write("half\n" if cfg.get("pip_fails") else "9.9.9\n")
            if cfg.get("pip_fails"):
                done(1, out="ERROR: no matching distribution\n")
        done()
    if args[:2] == ["-m", "agent.config"]:
        r = subprocess.run([REAL, *args], env={{"PYTHONPATH": REPO}})
        done(r.returncode)
    if args[:2] == ["-m", "agent"] and "--enrol-only" in args:
        if value("--token-file") == "-":
            call["stdin"] = sys.stdin.readline().strip()
        elif not value("--token"):
            done(2, err="overcast agent: no token\n")
        if cfg.get("enrol_rc"):
            done(cfg["enrol_rc"], err="overcast agent: the join token is not valid\n")
        conf = tomllib.load(open(value("--config"), "rb"))
        os.makedirs(conf["state_dir"], exist_ok=True)  # as the agent does, with the CA
        with open(os.path.join(ROOT, "www", "ca.pem")) as f, open(os.path.join(conf["state_dir"], "ca.pem"), "w") as o:
            o.write(f.read())
        with open(os.path.join(conf["state_dir"], "agent.json"), "w") as f:
            json.dump({{"agent_id": cfg.get("agent_id", "{agent_id}"),
                        "controller_url": conf["controller"]}}, f, indent=1)
        done()
    if args[:2] == ["-m", "agent"]:
        call["run"] = True
        done()
    if args[:2] == ["-m", "compileall"]:
        done()
    os.execv(REAL, [REAL, *args])
done(99, err=f"stub: {{name}} {{args}}: not stubbed\n")
"""


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() and not p.is_symlink() else
            f"file {p.read_bytes()!r}" if p.is_file() else "link" for p in sorted(root.rglob("*"))}


class FakeHost:
    """A temporary directory as the host (``h/``: opt, etc, var...), its PATH of real tools
    and stubs (``bin/``), the fake controller's files (``www/``)."""

    def __init__(self, tmp: Path, os_release: str = 'ID=debian\nPRETTY_NAME="Debian 12"\n') -> None:
        self.tmp = tmp
        self.h = tmp / "h"
        self.h.mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            real = shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin")
            assert real, tool
            (self.bin / tool).symlink_to(real)
        stub = tmp / "stub.py"
        stub.write_text(STUB.format(python=sys.executable, root=str(tmp), repo=str(ROOT),
                                    svc=SVC_ID, agent_id=AGENT_ID))
        stub.chmod(0o755)
        for name in STUBS:
            (self.bin / name).symlink_to(stub)
        www = tmp / "www"
        www.mkdir()
        (www / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n" + base64.b64encode(CA_DER).decode()
                                    + "\n-----END CERTIFICATE-----\n")
        (www / "health").write_text("{}")
        whl = "overcast_agent-9.9.9-py3-none-any.whl"
        (www / whl).write_bytes(b"the wheel")
        (www / "agent.shell").write_text(script.shell_answer(script.manifest(
            Package(whl, "9.9.9", b"the wheel", hashlib.sha256(b"the wheel").hexdigest()), 0)))
        (tmp / "os-release").write_text(os_release)
        self.served = tmp / "agent.sh"
        self.served.write_bytes(script.script(URL))
        self.stub({})

    def stub(self, cfg: dict[str, Any]) -> None:
        (self.tmp / "stub.json").write_text(json.dumps(cfg))

    def python(self) -> None:
        """The system's Python 3.11 is there (else the script installs it)."""
        (self.bin / "python3.11").symlink_to(self.tmp / "stub.py")

    @property
    def prefix(self) -> Path:
        return self.h / "opt" / "overcast-agent"

    @property
    def config_dir(self) -> Path:
        return self.h / "etc" / "overcast"

    @property
    def state(self) -> Path:
        return self.h / "var" / "lib" / "overcast-agent"

    @property
    def unit(self) -> Path:
        return self.h / "etc" / "systemd" / "system" / "overcast-agent.service"

    @property
    def record(self) -> Path:
        return self.config_dir / "agent-install.record"

    def systemd(self, running: bool = True) -> None:
        """Whether systemd runs here (the directory the script looks for)."""
        d = self.tmp / "run-systemd"
        if running:
            d.mkdir(exist_ok=True)
            self.unit.parent.mkdir(parents=True, exist_ok=True)
        elif d.exists():
            d.rmdir()

    def run(self, *args: str, dirs: bool = True) -> subprocess.CompletedProcess[str]:
        (self.tmp / "calls.jsonl").write_text("")
        more = ["--prefix", str(self.prefix), "--config-dir", str(self.config_dir),
                "--state-dir", str(self.state)] if dirs else []
        more += ["--os-release", str(self.tmp / "os-release"), "--unit-dir", str(self.unit.parent),
                 "--systemd-dir", str(self.tmp / "run-systemd")]
        return subprocess.run([SH, str(self.served), *args, *more], capture_output=True, text=True,
                              env={"PATH": str(self.bin), "HOME": str(self.tmp), "LANG": "C"},
                              cwd=self.tmp, timeout=120)

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("--token", TOKEN, "--ca-fingerprint", f"sha256:{FP}", *args)

    def calls(self, cmd: str = "") -> list[dict[str, Any]]:
        lines = (self.tmp / "calls.jsonl").read_text().splitlines()
        return [c for c in map(json.loads, lines) if not cmd or c["cmd"] == cmd]

    def argvs(self, cmd: str) -> list[list[str]]:
        return [c["args"] for c in self.calls(cmd)]


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the script's runs need root (chown, the record's owner)")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


@needs_root
def test_with_user_the_record_and_environment_stay_roots(host: FakeHost) -> None:
    """--user: the agent (overcast-agent) writes its state directory only; the environment,
    agent.toml and the install record (in the configuration directory, not the environment)
    stay root's; the unit lets it write its state directory only."""
    host.python()
    host.systemd()
    r = host.install("--user")
    assert r.returncode == 0, r.stderr
    assert owner_mode(host.record) == (0, 0, 0o600)
    assert not list(host.prefix.glob(".overcast*"))
    for path in [host.prefix, *host.prefix.rglob("*")]:
        uid, gid, mode = owner_mode(path)
        assert (uid, gid) == (0, 0) and (path.is_symlink() or not mode & 0o022), path
    assert owner_mode(host.state) == (SVC_ID, SVC_ID, 0o700)
    assert owner_mode(host.state / "agent.json")[:2] == (SVC_ID, SVC_ID)
    assert owner_mode(host.config_dir / "agent.toml") == (0, SVC_ID, 0o640)
    assert owner_mode(host.config_dir)[::2] == (0, 0o755)
    unit = host.unit.read_text()
    assert f"ReadWritePaths={host.state}\n" in unit and "User=overcast-agent\n" in unit
    # the environment's scripts name its place (it was made beside it, then moved)
    assert (host.prefix / "bin" / "pip").read_text() == f"#!{host.prefix}/bin/python\n"


@needs_root
@pytest.mark.parametrize("tamper", ["a command", "an unknown key", "another owner", "mode 0644",
                                    "a link"])
def test_the_record_is_read_never_run(host: FakeHost, tamper: str) -> None:
    """The record is parsed key by key, each value checked: a line that is not what the
    script writes, or a record anyone but root could have written, is refused (exit 1),
    nothing run, nothing changed, nothing removed."""
    host.python()
    assert host.install().returncode == 0
    pwned = host.tmp / "pwned"
    text = host.record.read_text()
    if tamper == "a command":
        host.record.write_text(text.replace("name=\n", f"name=$(touch {pwned})\n"))
    elif tamper == "an unknown key":
        host.record.write_text(text + f"PATH=/tmp\ntouch {pwned}\n")
    elif tamper == "another owner":
        os.chown(host.record, SVC_ID, SVC_ID)
    elif tamper == "mode 0644":
        host.record.chmod(0o644)
    else:
        other = host.tmp / "elsewhere"
        host.record.rename(other)
        host.record.symlink_to(other)
    before = tree(host.h)
    for args in ([], ["--uninstall"]):
        r = host.run(*args)
        assert r.returncode == 1, r.stderr
        assert "not this script's" in r.stderr or "not what this script writes" in r.stderr \
            or "mode 0600" in r.stderr, r.stderr
        assert not pwned.exists() and tree(host.h) == before


@needs_root
def test_a_process_that_is_not_the_agent_is_not_stopped(host: FakeHost) -> None:
    """The foreground agent's process id is root's (beside the record), and checked before
    the process is stopped: the environment's Python running ``-m agent``. A process that
    only says "-m agent" (another Python) is left be."""
    host.python()
    assert host.install().returncode == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "agent"])
    try:
        for pidfile in (host.config_dir / "agent.pid", host.state / "agent.pid"):
            pidfile.write_text(f"{other.pid}\n")
        r = host.run("--uninstall")
        assert r.returncode == 0, r.stderr
        assert f"process {other.pid} (in {host.config_dir}/agent.pid) is not the agent" in r.stderr
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@needs_root
def test_uninstall_without_a_record_removes_nothing(host: FakeHost) -> None:
    """--uninstall --state-dir /var/lib: no record there, so nothing is removed (not what the
    options name either), and the message says what to remove by hand."""
    host.state.mkdir(parents=True)
    (host.state / "dpkg").write_text("the system's\n")
    host.prefix.mkdir(parents=True)
    before = tree(host.h)
    r = host.run("--uninstall")
    assert r.returncode == 1 and "removes nothing" in r.stderr, r.stderr
    assert f"its environment ({host.prefix})" in r.stderr and "checking each first" in r.stderr
    assert tree(host.h) == before


@needs_root
def test_no_install_into_what_is_not_the_agents(host: FakeHost) -> None:
    """A prefix that exists and is not empty, without a record saying it is an earlier
    install, is refused; so is a state directory holding something that is not an agent's
    identity. Nothing is made."""
    host.python()
    (host.h / "opt" / "overcast-agent").mkdir(parents=True)
    (host.prefix / "precious").write_text("mine\n")
    before = tree(host.h)
    r = host.install()
    assert r.returncode == 1 and "is not an earlier install of the Overcast agent" in r.stderr, r.stderr
    assert tree(host.h) == before
    shutil.rmtree(host.prefix)
    host.state.mkdir(parents=True)
    (host.state / "precious").write_text("mine\n")
    before = tree(host.h)
    r = host.install()
    assert r.returncode == 1 and "holds no agent identity" in r.stderr, r.stderr
    assert tree(host.h) == before


@needs_root
def test_uninstall_removes_what_the_record_says_and_nothing_else(host: FakeHost) -> None:
    """An empty prefix and a configuration directory with other files were there before: the
    prefix is emptied again, the other files stay, what the script made goes (parents
    included)."""
    host.python()
    host.prefix.mkdir(parents=True)
    host.config_dir.mkdir(parents=True)
    (host.config_dir / "other.conf").write_text("not the agent's\n")
    before = tree(host.h)
    r = host.install()
    assert r.returncode == 0, r.stderr
    assert (host.prefix / "bin" / "python").is_symlink()
    record = host.record.read_text()
    assert f"empty={host.prefix}\n" in record
    assert f"remove={host.state} {host.config_dir}/agent.toml\n" in record
    r = host.run("--uninstall")
    assert r.returncode == 0, r.stderr
    assert tree(host.h) == before, r.stderr
    assert f"overcast agent revoke {AGENT_ID}" in r.stderr


@needs_root
def test_a_unit_that_does_not_start_is_taken_back(host: FakeHost) -> None:
    """A first install whose `systemctl restart` fails: the unit is disabled (its wants
    link), removed, and systemd reloaded; everything else goes; and since enrolment had
    happened, the message names the agent to revoke."""
    host.python()
    host.systemd()
    host.stub({"systemctl_fails": ["restart"]})
    before = tree(host.h)
    r = host.install()
    assert r.returncode == 1, r.stderr
    calls = host.argvs("systemctl")
    assert calls[calls.index(["restart", "overcast-agent.service"]) + 1:] == [
        ["disable", "--now", "overcast-agent.service"], ["daemon-reload"]], calls
    assert tree(host.h) == before, r.stderr
    assert "nothing was left installed" in r.stderr
    assert (f"this host was enrolled as agent {AGENT_ID} before that: the controller keeps that "
            f"agent (and the join token's use is spent): revoke it there with 'overcast agent "
            f"revoke {AGENT_ID}'") in r.stderr


@needs_root
def test_a_failed_rerun_leaves_the_earlier_install_as_it_was(host: FakeHost) -> None:
    """A re-run that fails (pip; or the unit's restart, after everything was in place) puts
    back the earlier environment, agent.toml, unit and record, and starts the earlier agent
    again; nothing of the new one is left beside it."""
    host.python()
    host.systemd()
    assert host.install("--name", "web1").returncode == 0
    (host.prefix / "earlier").write_text("the earlier environment\n")
    before = tree(host.h)
    host.stub({"pip_fails": True})
    r = host.run("--name", "web2", "--memory-max", "2G")
    assert r.returncode == 1 and "pip could not install" in r.stderr, r.stderr
    assert tree(host.h) == before
    assert "the earlier install is as it was" in r.stderr
    host.stub({"systemctl_fails": ["restart"]})
    r = host.run("--name", "web2", "--memory-max", "2G")
    assert r.returncode == 1 and "the agent did not start" in r.stderr, r.stderr
    assert tree(host.h) == before, r.stderr
    assert host.argvs("systemctl")[-2:] == [["daemon-reload"], ["restart", "overcast-agent.service"]]
    assert "revoke" not in r.stderr  # no enrolment in a re-run


@needs_root
def test_a_rerun_keeps_the_options_given_before(host: FakeHost) -> None:
    """The printed command run again without --user stays --user (and keeps --memory-max,
    --name...); options given again win; --root undoes --user."""
    host.python()
    host.systemd()
    r = host.install("--user", "--memory-max", "512M", "--tasks-max", "99", "--name", "web1",
                     "--interval", "2.5")
    assert r.returncode == 0, r.stderr
    r = host.run()
    assert r.returncode == 0, r.stderr
    assert ("as installed before: --user --name web1 --interval 2.5 --memory-max 512M "
            "--tasks-max 99 (options given now win)") in r.stderr
    unit = host.unit.read_text()
    assert "User=overcast-agent\n" in unit and "MemoryMax=512M\n" in unit and "TasksMax=99\n" in unit
    assert owner_mode(host.state)[0] == SVC_ID
    config = (host.config_dir / "agent.toml").read_text()
    assert 'hostname = "web1"' in config and "interval = 2.5" in config
    # a --controller given (a tunnel's hub) is kept; the script's own default is not recorded
    assert "controller=\n" in host.record.read_text()
    r = host.run("--controller", "https://100.96.0.1:7080")
    assert r.returncode == 0, r.stderr
    r = host.run()
    assert "as installed before: --user --controller https://100.96.0.1:7080 --name web1" in r.stderr
    assert 'controller = "https://100.96.0.1:7080"' in (host.config_dir / "agent.toml").read_text()
    r = host.run("--root", "--memory-max", "768M")
    assert r.returncode == 0, r.stderr
    unit = host.unit.read_text()
    assert "User=" not in unit and "MemoryMax=768M\n" in unit
    assert owner_mode(host.state)[:2] == (0, 0)
    assert owner_mode(host.config_dir / "agent.toml") == (0, 0, 0o644)
    r = host.run()
    assert "User=" not in host.unit.read_text() and "MemoryMax=768M\n" in host.unit.read_text()
    # uninstall removes the user the first run made
    r = host.run("--uninstall")
    assert r.returncode == 0 and "removed the user overcast-agent" in r.stderr, r.stderr
    assert not (host.tmp / "user-exists").exists()


@needs_root
def test_without_systemd_it_prints_the_command_and_runs_nothing(host: FakeHost) -> None:
    host.python()
    r = host.install()
    assert r.returncode == 0, r.stderr
    assert "no systemd here (it is not process 1): no unit was installed, and the agent is not running" in r.stderr
    assert (f"under a supervisor of your own, run: {host.prefix}/bin/python -m agent --config "
            f"{host.config_dir}/agent.toml") in r.stderr
    assert not [c for c in host.calls("python") if c.get("run")]
    assert not (host.config_dir / "agent.pid").exists() and not host.unit.exists()
    r = host.install("--foreground")  # runs it (the stub agent exits at once)
    assert r.returncode == 0, r.stderr
    assert [c for c in host.calls("python") if c.get("run")]
    assert (host.config_dir / "agent.pid").exists()


@needs_root
def test_the_join_token_is_on_no_command_line(host: FakeHost) -> None:
    host.python()
    assert host.install().returncode == 0
    [enrol] = [c for c in host.calls("python") if "--enrol-only" in c["args"]]
    assert enrol["stdin"] == TOKEN and "--token-file" in enrol["args"]
    assert not [c for c in host.calls() if any(TOKEN in a for a in c["args"])]


@needs_root
def test_yum_where_there_is_no_dnf_and_its_packages_removed_again(tmp_path: Path) -> None:
    """Amazon Linux 2 / RHEL 7 have yum only. The packages the script installed (not those
    there before) are recorded, and --uninstall removes them."""
    host = FakeHost(tmp_path, 'ID="amzn"\nID_LIKE="centos rhel fedora"\nPRETTY_NAME="Amazon Linux"\n')
    (host.bin / "dnf").unlink()
    host.stub({"known": ["python3.11"]})
    r = host.install()
    assert r.returncode == 0, r.stderr
    assert ["install", "-y", "-q", "python3.11"] in host.argvs("yum")
    assert "packages=python3.11\n" in host.record.read_text()
    r = host.run("--uninstall")
    assert r.returncode == 0, r.stderr
    assert ["-e", "python3.11"] in host.argvs("rpm")
    assert "removed the packages this script installed: python3.11" in r.stderr


@needs_root
def test_debian_packages_only_those_it_installed_and_only_alone(host: FakeHost) -> None:
    """python3.11-venv was there, python3.11 not: only python3.11 is recorded; uninstall
    removes it only when apt would remove nothing else with it."""
    host.stub({"known": ["python3.11", "python3.11-venv"], "preinstalled": ["python3.11-venv"]})
    r = host.install()
    assert r.returncode == 0, r.stderr
    assert ["install", "-y", "-q", "--no-install-recommends", "python3.11", "python3.11-venv"] \
        in host.argvs("apt-get")
    assert "packages=python3.11\npackage_family=debian\n" in host.record.read_text()
    host.stub({"dependents": ["python3-something"]})
    r = host.run("--uninstall")
    assert r.returncode == 0, r.stderr
    assert "kept the packages this script installed, python3.11: other packages need them" in r.stderr
    assert not [a for a in host.argvs("apt-get") if "-s" not in a and "remove" in a]
    # again, from the start, with nothing depending on python3.11
    (host.bin / "python3.11").unlink()
    (host.tmp / "pkgs.json").write_text('["python3.11-venv"]')
    host.stub({"known": ["python3.11", "python3.11-venv"]})
    assert host.install().returncode == 0
    r = host.run("--uninstall")
    assert r.returncode == 0, r.stderr
    assert ["remove", "-y", "-q", "python3.11"] in host.argvs("apt-get"), host.argvs("apt-get")
    assert "removed the packages this script installed: python3.11" in r.stderr
    assert json.loads((host.tmp / "pkgs.json").read_text()) == ["python3.11-venv"]


@needs_root
def test_debian_without_python_311_is_unsupported(host: FakeHost) -> None:
    host.stub({"known": []})
    before = tree(host.h)
    r = host.install()
    assert r.returncode == 6, r.stderr
    assert "unsupported: needs Python 3.11+ (Debian 12+, Ubuntu 22.04+)" in r.stderr
    assert tree(host.h) == before
