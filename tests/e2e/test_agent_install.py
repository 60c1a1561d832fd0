"""The agent's one-line install on a fresh host: a network namespace with no route anywhere
but to the controller (the real one, HTTPS with its own CA, serving the agent's dependency
wheels from a directory `overcast agent wheels fetch` filled), the system's python3, no pip
configuration. The very command `overcast token join create` printed runs the script (in
the documented foreground mode, with its directories under a temporary one): the agent
installs, enrols and reports; the script run again upgrades in place with the same identity;
an agent made to look outdated is upgraded through its stream by `overcast agent upgrade`;
without systemd and without --foreground the script installs and prints the command instead
of running it; `--uninstall` stops the foreground agent (its process id checked) and leaves
the directory tree as it was, and without an install record removes nothing; with `--user`
the agent runs as overcast-agent from an environment that stays root's, refuses to upgrade
itself in words, and its uninstall removes the user; and bad input (wrong token, wrong
fingerprint, unreachable controller, unsupported platform) ends with its exit code and
nothing installed. Figures (time to the first stored sample, install size) are printed."""

from __future__ import annotations

import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentProc, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, Controller, Http, free_port
from tests.support.netns import Host, Lab, available

why = available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHEELS = ROOT / "build" / "agent-wheels"  # a cache: filled once, kept between runs
SERVICE_USER = "overcast-agent"
CANNOT_WRITE = "this agent cannot write its environment; re-run the install script as root to upgrade"


def system_python() -> tuple[str, str]:
    """The system's python3 (what a fresh host has) and its version, like "3.11"."""
    py = shutil.which("python3", path=SYSTEM_PATH)
    assert py, "python3 is not installed"
    out = subprocess.run([py, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{py} cannot make virtual environments: {out.stderr}"
    return py, out.stdout.strip()


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its kind and, for files, size (what uninstall must restore)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else f"file {p.stat().st_size}"
    return out


@dataclass
class Dirs:
    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "overcast-agent"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "overcast"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "overcast-agent"

    @property
    def record(self) -> Path:
        return self.config_dir / "agent-install.record"

    def args(self) -> list[str]:
        """The three directories, and no systemd (whatever this machine runs: the tests
        never install a unit into it)."""
        return ["--prefix", str(self.prefix), "--config-dir", str(self.config_dir),
                "--state-dir", str(self.state), "--systemd-dir", str(self.root / "no-systemd"),
                "--unit-dir", str(self.root / "units")]

    def nothing_installed(self) -> bool:
        return not any(p.exists() for p in (self.prefix, self.config_dir, self.state))


@dataclass
class World:
    lab: Lab
    host: Host
    c: Controller
    admin: Http
    run_cli: Any
    tmp: Path
    script: Path
    dirs: Dirs
    figures: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    agent_id: str = ""
    run_command: str = ""
    tree_before: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """A fresh host's environment: the system's PATH, no pip configuration, no Python of ours."""
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        return {"PATH": SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8",
                "PIP_CONFIG_FILE": os.devnull}

    def sh(self, command: str, log: Path, background: bool = False) -> Any:
        """``command`` by sh inside the host's namespace, output to ``log``."""
        argv = self.host.cmd("sh", "-c", command)
        with open(log, "a") as out:
            if background:
                p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                     env=self.env(), cwd="/", start_new_session=True)
                self.procs.append(p)
                return p
            return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  env=self.env(), cwd="/", timeout=300)

    def script_run(self, *args: str, log: Path) -> subprocess.CompletedProcess[str]:
        return self.sh(" ".join(["sh", str(self.script), *args]), log)  # type: ignore[no-any-return]

    def agent(self) -> dict[str, Any]:
        r = self.run_cli("agent", "show", self.agent_id, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def samples_since(self, t: float) -> bool:
        r = self.admin.get(f'/api/v2/datapoints?query=system_load1{{machine_id="{self.agent_id}"}}')
        res = r.body["data"]["data"]["result"] if r.status == 200 else []
        return bool(res) and float(res[0]["value"][0]) >= t


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("install")
    _, version = system_python()
    with Lab(subnet=random.randint(200, 249)) as lab:
        host = lab.add_host()
        # a fresh host with no route anywhere but its own network (the controller's bridge)
        subprocess.run(["ip", "-n", host.name, "route", "del", "default"], check=True)
        port = free_port()
        c = Controller(tmp, {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                             "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                             "OVERCAST_AGENT_WHEELS_DIR": str(WHEELS)},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        # the controller's wheels directory, filled with its own command (pip download from
        # the configured package index; a second run keeps what is there)
        r = c.cli("agent", "wheels", "fetch", "--dir", str(WHEELS), "--platform",
                  platform.machine(), "--python", version, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Install")
        c.start()
        xdg = tmp / "xdg"

        def run_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return c.cli(*args, env={"XDG_CONFIG_HOME": str(xdg)}, timeout=300, input=input)

        r = run_cli("login", c.url, "--email", ADMIN_EMAIL, "--password-stdin",
                    "--ca-fingerprint", c.ca_fingerprint, input=ADMIN_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        # the script as the host would fetch it, for the runs that are not the one-liner
        script = tmp / "agent.sh"
        h = c.http()
        got = h.get("/install/agent.sh")
        assert got.status == 200 and got.raw.startswith(b"#!/bin/sh"), got.body
        script.write_bytes(got.raw)
        w = World(lab, host, c, c.session(), run_cli, tmp, script, Dirs(tmp / "host"))
        try:
            yield w
        finally:
            for p in w.procs:
                stop(p)
            if c.proc is not None and c.proc.poll() is None:
                c.stop()
            print(f"\nagent install figures: {json.dumps(w.figures)}")


def test_the_host_reaches_nothing_but_the_controller(world: World) -> None:
    r = subprocess.run(world.host.cmd("ip", "route", "get", "198.51.100.7"), capture_output=True,
                       text=True, check=False)
    assert r.returncode != 0 and "unreachable" in r.stderr, r.stdout
    r = subprocess.run(world.host.cmd("ip", "route", "get", world.lab.gateway), capture_output=True,
                       text=True, check=True)
    assert world.lab.gateway in r.stdout


def test_the_one_liner_installs_enrols_and_reports(world: World) -> None:
    r = world.run_cli("token", "join", "create", "--uses", "5", "--tags", "env=inst")
    assert r.returncode == 0, r.stderr
    command = r.stdout.strip()
    # the controller's certificate is from its own CA: the command checks ca.pem first
    assert command.startswith("sh -c ") and "/install/agent.sh" in command, command
    assert world.c.ca_fingerprint.removeprefix("sha256:") in command
    assert "overcast agent --controller" in r.stderr  # the agent's own command, for a host that has it
    if shutil.which("sudo", path=SYSTEM_PATH) is None:
        command = command.replace("sudo sh ", "sh ")  # root here already; this Debian has no sudo
    (world.dirs.root / "etc").mkdir(parents=True)
    (world.dirs.root / "etc" / "hostname").write_text("not ours\n")
    world.tree_before = tree(world.dirs.root)
    log = world.tmp / "install-1.log"
    t0 = time.time()
    proc = world.sh(f"{command} {' '.join(world.dirs.args())} --foreground --name ocinst --interval 1",
                    log, background=True)
    state = world.dirs.state / "agent.json"
    wait_for(lambda: state.exists() or proc.poll() is not None, 240, "enrolment")
    assert proc.poll() is None, log.read_text()
    world.figures["seconds_to_enrolled"] = round(time.time() - t0, 1)
    world.agent_id = json.loads(state.read_text())["agent_id"]
    wait_for(lambda: world.samples_since(0), 60, "the first stored sample")
    world.figures["seconds_to_first_sample"] = round(time.time() - t0, 1)
    text = log.read_text()
    assert "dependencies installed from the controller's wheels" in text, text
    m = re.search(r"under a supervisor of your own, run: (.+)", text)
    assert m, text
    world.run_command = m.group(1).strip()
    du = subprocess.run(["du", "-sk", str(world.dirs.prefix)], capture_output=True, text=True, check=True)
    world.figures["install_kib"] = int(du.stdout.split()[0])
    # the machine, its tags, the agent's version; the config the agent read
    m_ = world.admin.get(f"/api/v2/machines/{world.agent_id}").body["data"]
    assert m_["name"] == "ocinst" and m_["tags"] == {"env": "inst"} and m_["state"] == "running"
    a = world.agent()
    assert a["connected"] and a["version"] == a["latest_version"] and a["outdated"] is False
    config = (world.dirs.config_dir / "agent.toml").read_text()
    assert f'controller = "{world.c.url}"' in config and "interval = 1.0" in config
    assert f'state_dir = "{world.dirs.state}"' in config and 'hostname = "ocinst"' in config
    # the script's process id, exec'd: the agent; kept where only root writes, beside the
    # install record (root's, 0600, never in the environment or the state directory)
    pid = (world.dirs.config_dir / "agent.pid").read_text().strip()
    assert b"-m\0agent\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    st = world.dirs.record.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    record = world.dirs.record.read_text()
    assert f"prefix={world.dirs.prefix}\n" in record and "name=ocinst\n" in record
    assert not list(world.dirs.prefix.glob(".overcast*")) and not (world.dirs.state / "agent.pid").exists()
    # the environment was made beside its place and moved there: its scripts name its place
    pip = (world.dirs.prefix / "bin" / "pip").read_text().splitlines()[0]
    assert pip.startswith(f"#!{world.dirs.prefix}/bin/python"), pip


def test_running_it_again_upgrades_in_place_with_the_same_identity(world: World) -> None:
    first = world.procs[-1]
    log = world.tmp / "install-2.log"
    # no token and no fingerprint: this host is enrolled, and its CA is the pin
    proc = world.sh(f"sh {world.script} {' '.join(world.dirs.args())} --foreground", log,
                    background=True)
    wait_for(lambda: first.poll() is not None, 120, "the earlier agent to be stopped")
    t = time.time()
    text = lambda: log.read_text()  # noqa: E731
    wait_for(lambda: "already enrolled as" in text() or proc.poll() is not None, 120, "the re-run")
    assert proc.poll() is None, text()
    assert f"already enrolled as {world.agent_id}: keeping this identity" in text()
    assert "upgrading the agent in" in text()
    # the options of the first run, not given again, are kept (the install record's)
    assert "as installed before: --name ocinst --interval 1 (" in text(), text()
    assert 'hostname = "ocinst"' in (world.dirs.config_dir / "agent.toml").read_text()
    wait_for(lambda: world.samples_since(t), 60, "samples from the re-installed agent")
    wait_for(lambda: world.agent()["connected"], 30, "the re-installed agent connected")
    assert "under a supervisor of your own, run:" in text()  # the script is done (exec'd)
    # the new environment took the earlier one's place: nothing left beside it
    assert sorted(p.name for p in world.dirs.prefix.parent.iterdir()) == ["overcast-agent"]
    assert json.loads((world.dirs.state / "agent.json").read_text())["agent_id"] == world.agent_id
    r = world.admin.get("/api/v2/agents")
    assert [a["id"] for a in r.body["data"]] == [world.agent_id]  # no second agent


def test_an_outdated_agent_is_upgraded_through_its_stream(world: World) -> None:
    stop(world.procs[-1])
    [init] = world.dirs.prefix.glob("lib/python3*/site-packages/agent/__init__.py")
    latest = world.agent()["latest_version"]
    init.write_text(init.read_text().replace(f'AGENT_VERSION = "{latest}"', 'AGENT_VERSION = "0.0.1"'))
    # the same size, maybe within the second pip wrote it: its compiled copy would still pass
    for pyc in init.parent.glob("__pycache__/__init__.*.pyc"):
        pyc.unlink()
    log = world.tmp / "agent-old.log"
    proc = world.sh(f"exec {world.run_command}", log, background=True)
    wait_for(lambda: world.agent()["version"] == "0.0.1" and world.agent()["connected"], 60,
             "the agent back with version 0.0.1")
    a = world.agent()
    assert a["outdated"] is True
    r = world.run_cli("agent", "list", "--json")
    assert [x["outdated"] for x in json.loads(r.stdout)] == [True]
    t = time.time()
    r = world.run_cli("agent", "upgrade", "--on", "ocinst")
    world.figures["upgrade_seconds"] = round(time.time() - t, 1)
    assert r.returncode == 0, r.stdout + r.stderr + log.read_text()
    assert f"ocinst ({world.agent_id[:12]}): upgraded 0.0.1 -> {latest}" in r.stdout, r.stdout
    assert f"ocinst: installing {latest}" in r.stderr and f"ocinst: upgraded to {latest}" in r.stderr
    a = world.agent()
    assert a["version"] == latest and a["outdated"] is False and a["connected"]
    assert a["id"] == world.agent_id
    assert proc.poll() is None  # the same process, restarted into the new code
    assert f'AGENT_VERSION = "{latest}"' in init.read_text()
    wait_for(lambda: world.samples_since(time.time() - 2), 30, "samples after the upgrade")
    r = world.admin.get("/api/v2/logs?action=agent.upgrade")
    phases = [(e["details"]["phase"], e["outcome"]) for e in r.body["data"]]
    assert sorted(phases) == [("requested", "success"), ("succeeded", "success")], phases
    # an agent that is not in an environment of its own (a source tree) refuses, in words
    src = AgentProc(world.c, world.tmp / "src-agent", hostname="srcagent")
    tok = world.admin.post("/api/v2/agents/tokens", {"uses": 1}).body
    assert src.enrol(tok["token"]).returncode == 0
    src.start()
    try:
        wait_for(lambda: world.admin.get(f"/api/v2/agents/{src.agent_id}").body["data"]["connected"],
                 30, "the source-tree agent")
        r = world.run_cli("agent", "upgrade", "--on", "srcagent", "--force", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["status"] == "failed" and out["agents"][0]["status"] == "failed"
        assert "virtual environment of its own" in out["agents"][0]["error"] or \
            "not installed in its environment" in out["agents"][0]["error"]
    finally:
        src.stop()
    r = world.admin.get("/api/v2/logs?action=agent.upgrade&outcome=failed")
    [failed] = r.body["data"]
    assert failed["target"]["id"] == src.agent_id and failed["details"]["phase"] == "failed"
    world.procs[-1] = proc


def test_without_systemd_it_installs_and_prints_the_command(world: World) -> None:
    """No systemd (not process 1) and no --foreground: the agent is installed (upgraded
    here) and the command to run it printed, not run; exit 0."""
    stop(world.procs[-1])
    log = world.tmp / "install-print.log"
    r = world.script_run(*world.dirs.args(), log=log)
    text = log.read_text()
    assert r.returncode == 0, text
    assert "no systemd here (it is not process 1): no unit was installed, and the agent is not running" in text
    assert f"under a supervisor of your own, run: {world.run_command}" in text
    assert not (world.dirs.config_dir / "agent.pid").exists()
    wait_for(lambda: not world.agent()["connected"], 30, "the agent gone (none runs)")


def test_uninstall_leaves_nothing_behind(world: World) -> None:
    log = world.tmp / "install-3.log"
    proc = world.sh(f"sh {world.script} {' '.join(world.dirs.args())} --foreground", log,
                    background=True)
    wait_for(lambda: "already enrolled as" in log.read_text() or proc.poll() is not None, 120,
             "the third run")
    wait_for(lambda: world.agent()["connected"], 30, "the agent connected")
    r = world.script_run("--uninstall", *world.dirs.args(), log=world.tmp / "uninstall.log")
    text = (world.tmp / "uninstall.log").read_text()
    assert r.returncode == 0, text
    proc.wait(30)  # the foreground agent was stopped (its process checked: the agent)
    assert "stopping the agent running in the foreground" in text
    assert tree(world.dirs.root) == world.tree_before, text
    assert "asks" not in text and f"overcast agent revoke {world.agent_id}" in text
    # again: no install record now, so nothing is removed (not even what the options name)
    (world.dirs.state).mkdir(parents=True)
    (world.dirs.state / "keep").write_text("not the agent's\n")
    r = world.script_run("--uninstall", *world.dirs.args(), log=world.tmp / "uninstall-2.log")
    text = (world.tmp / "uninstall-2.log").read_text()
    assert r.returncode == 1 and "removes nothing" in text, text
    assert (world.dirs.state / "keep").read_text() == "not the agent's\n"
    shutil.rmtree(world.dirs.root / "var")


def user_exists() -> bool:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return False
    return True


def test_with_user_the_agent_cannot_change_what_root_runs(world: World) -> None:
    """--user: the agent runs as overcast-agent (made by the script) and writes its state
    directory only; the environment, agent.toml and the install record stay root's; asked
    to upgrade, it refuses in words (the upgrade job fails); uninstall stops it and removes
    the user it made. The directories are under a directory all may traverse (pytest's are
    root's alone)."""
    existed = user_exists()
    root = Path(tempfile.mkdtemp(prefix="ocuser-", dir="/tmp"))
    root.chmod(0o755)
    dirs = Dirs(root / "host")
    tok = world.admin.post("/api/v2/agents/tokens", {"uses": 1}).body
    log = world.tmp / "install-user.log"
    try:
        proc = world.sh(" ".join(["sh", str(world.script), "--token", tok["token"],
                                  "--ca-fingerprint", world.c.ca_fingerprint, "--user",
                                  "--foreground", "--name", "ocuser", "--interval", "1",
                                  *dirs.args()]), log, background=True)
        state = dirs.state / "agent.json"
        wait_for(lambda: state.exists() or proc.poll() is not None, 240, "enrolment")
        assert proc.poll() is None, log.read_text()
        aid = json.loads(state.read_text())["agent_id"]
        wait_for(lambda: world.admin.get(f"/api/v2/agents/{aid}").body["data"]["connected"]
                 or proc.poll() is not None, 60, "the --user agent connected")
        assert proc.poll() is None, log.read_text()
        svc = pwd.getpwnam(SERVICE_USER)
        pid = (dirs.config_dir / "agent.pid").read_text().strip()
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(svc.pw_uid)}, uids  # the agent itself, not a root parent
        def owner_mode(path: Path) -> tuple[int, int, int]:
            st = path.lstat()
            return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
        assert owner_mode(dirs.state) == (svc.pw_uid, svc.pw_gid, 0o700)
        assert owner_mode(dirs.config_dir / "agent.toml") == (0, svc.pw_gid, 0o640)
        assert owner_mode(dirs.record)[::2] == (0, 0o600)
        assert "as_user=1\n" in dirs.record.read_text()
        for path in [dirs.prefix, *dirs.prefix.rglob("*")]:  # nothing of the environment is its
            uid, _, mode = owner_mode(path)
            assert uid == 0 and (path.is_symlink() or not mode & 0o022), (path, uid, oct(mode))
        # asked to upgrade, it refuses in words, and the job says it failed
        r = world.run_cli("agent", "upgrade", "--on", "ocuser", "--force", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["status"] == "failed" and out["agents"][0]["status"] == "failed", out
        assert CANNOT_WRITE in out["agents"][0]["error"], out
        assert proc.poll() is None  # still running, the same code
        r = world.script_run("--uninstall", *dirs.args(), log=world.tmp / "uninstall-user.log")
        text = (world.tmp / "uninstall-user.log").read_text()
        assert r.returncode == 0, text
        proc.wait(30)
        assert tree(root) == {}, text
        assert user_exists() is existed, text
        if not existed:
            assert f"removed the user {SERVICE_USER}" in text
    finally:
        if not existed and user_exists():
            subprocess.run(["userdel", SERVICE_USER], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("case", ["wrong token", "wrong fingerprint", "unreachable", "unsupported"])
def test_bad_input_installs_nothing(world: World, case: str) -> None:
    dirs = Dirs(world.tmp / f"bad-{case.replace(' ', '-')}")
    fp = world.c.ca_fingerprint
    args = {"wrong token": ["--token", "ocj_not-a-token", "--ca-fingerprint", fp],
            "wrong fingerprint": ["--token", "ocj_x", "--ca-fingerprint", "sha256:" + "ab" * 32],
            "unreachable": ["--controller", f"https://{world.lab.gateway}:{free_port()}",
                            "--token", "ocj_x", "--ca-fingerprint", fp],
            "unsupported": ["--token", "ocj_x", "--ca-fingerprint", fp,
                            "--os-release", str(world.tmp / "alpine-os-release")]}[case]
    (world.tmp / "alpine-os-release").write_text('ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n')
    code, words = {"wrong token": (3, "the join token is not valid"),
                   "wrong fingerprint": (4, "does not match the fingerprint"),
                   "unreachable": (5, "cannot reach the controller"),
                   "unsupported": (6, "Alpine Linux v3.20 is not supported")}[case]
    log = world.tmp / f"bad-{case.replace(' ', '-')}.log"
    r = world.script_run(*args, *dirs.args(), "--foreground", log=log)
    text = log.read_text()
    assert r.returncode == code, text
    assert words in text, text
    assert dirs.nothing_installed(), (case, tree(dirs.root) if dirs.root.exists() else {})
    # nor any of the parents the script made: the test's root did not exist, and does not
    assert not dirs.root.exists(), (case, tree(dirs.root))
