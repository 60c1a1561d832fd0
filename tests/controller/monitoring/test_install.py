"""The shell that enables and disables monitoring, run for real on this host (as over SSH: in
a session of its own, as root) with a stand-in for the install one-liner that behaves as the
install script does without systemd (installs, writes the agent's pid file, then runs the
agent in the foreground) or fails with its exit codes. The request options are checked as
the install script checks them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.errors import Invalid
from controller.monitoring import install

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the wrapper runs as root")

# a stand-in for the one-liner + the options appended to it: like agent.sh without systemd
FAKE = r"""#!/bin/sh
STATE="" RC="${FAKE_RC:-0}" FG=0
while [ $# -gt 0 ]; do
    case "$1" in --state-dir) STATE=$2; shift 2 ;; --foreground) FG=1; shift ;; *) shift ;; esac
done
trap 'echo "rolled back" > "$STATE.rolledback"; exit 130' TERM
echo "installing the agent into $STATE"
sudo -n sh -c 'echo "sudo ran as $(id -u)"'
mkdir -p "$STATE"
sh -c 'sleep 1' sh -m agent --config x --enrol-only  # enrolment: not the agent running
sleep "${FAKE_SLOW:-0}"
if [ "$RC" != 0 ]; then echo "cannot reach the controller" >&2; rm -rf "$STATE"; exit "$RC"; fi
if [ "$FG" != 1 ]; then echo "no --foreground: run it yourself"; exit 0; fi
echo "agent 0123abcd installed (0.1.0); running it in the foreground"
exec sh -c 'echo $$ > "$0/agent.pid"; sleep 300; :' "$STATE" -m agent --config x
"""


def wrapper(tmp: Path, rc: int = 0, slow: float = 0) -> tuple[Path, Path]:
    fake = tmp / "fake.sh"
    fake.write_text(FAKE)
    state = tmp / "host" / "var" / "lib" / "overcast-agent"
    (tmp / "host").mkdir()
    opts = install.Options(state_dir=str(state), prefix=str(tmp / "host" / "opt"))
    command = f"FAKE_RC={rc} FAKE_SLOW={slow} sh {fake}"
    path = tmp / "enable.sh"
    path.write_bytes(install.enable_script(command, opts))
    return path, state


def run(path: Path) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    return subprocess.Popen(["sh", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)


def test_without_systemd_the_agent_runs_on_in_a_session_of_its_own(tmp_path: Path) -> None:
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: the wrapper would take the systemd path")
    path, state = wrapper(tmp_path)
    p = run(path)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "installing the agent into" in out and "sudo ran as 0" in out, out
    assert f"its log: {state}/agent.log" in out and "put it under a supervisor" in out
    pid = int((state / "agent.pid").read_text())
    try:
        assert os.getsid(pid) not in (os.getsid(0), p.pid)  # outlives the run's session
        assert "installed (0.1.0)" in (state / "agent.log").read_text()
        # nothing of the wrapper's own is left beside the state directory
        assert sorted(os.listdir(state.parent)) == ["overcast-agent"]
        assert not list((tmp_path / "host").glob(".overcast-monitoring.*"))
    finally:
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # the stand-in agent and its sleep


def test_a_failed_install_leaves_nothing_and_passes_its_exit_status_on(tmp_path: Path) -> None:
    path, state = wrapper(tmp_path, rc=5)
    p = run(path)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 5, out
    assert "cannot reach the controller" in out and "ended with exit status 5" in out
    assert not state.exists()
    leftovers = [str(x) for x in (tmp_path / "host").rglob("*") if "overcast-monitoring" in str(x)]
    assert leftovers == []


def test_a_cancel_reaches_the_install_which_takes_back_what_it_did(tmp_path: Path) -> None:
    path, state = wrapper(tmp_path, slow=30)
    p = run(path)
    deadline = time.monotonic() + 20
    while not state.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGTERM)  # as the SSH runner does at a timeout or a cancel
    p.communicate(timeout=30)
    assert p.returncode == 143
    deadline = time.monotonic() + 10
    while not Path(f"{state}.rolledback").exists():
        assert time.monotonic() < deadline, "the install never got the TERM"
        time.sleep(0.1)
    assert not list((tmp_path / "host").glob(".overcast-monitoring.*"))  # nor the wrapper's
    shutil.rmtree(state, ignore_errors=True)


def test_the_uninstall_through_the_agent_runs_detached(tmp_path: Path) -> None:
    script = b"#!/bin/sh\necho \"uninstall $*\" > \"$OUT\"\n"
    text = install.detached_uninstall(script, install.Options(state_dir="/srv/oc state"
                                                              .replace(" ", "-")))
    path = tmp_path / "un.sh"
    path.write_bytes(text)
    out = tmp_path / "out"
    env = {"PATH": os.environ["PATH"], "OUT": str(out)}
    p = subprocess.Popen(["sh", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, start_new_session=True)
    stdout, stderr = p.communicate(timeout=30)
    # as the agent does when a run ends: what it left in its process group is killed
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0 and "uninstalling the agent in two seconds" in stdout, stderr
    deadline = time.monotonic() + 15
    while not out.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert out.read_text() == "uninstall --uninstall --state-dir /srv/oc-state\n"


def test_options_are_checked_as_the_script_checks_them() -> None:
    o = install.options({"prefix": "/opt/oc/", "state_dir": "/var/lib/x", "user": True,
                         "interval": 5}, 3600)
    assert o.args() == ["--user", "--prefix", "/opt/oc", "--state-dir", "/var/lib/x",
                        "--interval", "5"]
    assert install.options({}, 3600).timeout == 900
    for bad in ({"prefix": "relative"}, {"config_dir": "/etc/$(reboot)"},
                {"state_dir": "/a b"}, {"prefix": "/x/../etc"}, {"timeout": 5}):
        with pytest.raises(Invalid) as e:
            install.options(bad, 3600)
        assert e.value.details["field"] in bad
    stored = install.stored_options({"_monitoring": {"options": {"state_dir": "/s", "user": True}}})
    assert install.uninstall_args(stored) == ("--uninstall", "--state-dir", "/s")


def test_the_join_token_is_in_no_command_line() -> None:
    text = install.enable_script("sh -c 'curl ... --token ocj_SECRET' agent.sh",
                                 install.Options()).decode()
    lines = [line for line in text.splitlines() if "ocj_SECRET" in line]
    # only inside the here-documents that write it to a private file
    assert len(lines) == 2 and all(line.startswith("sh -c 'curl") for line in lines)


def test_the_scripts_pass_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    from controller.install.script import script

    (tmp_path / "enable.sh").write_bytes(install.enable_script(
        "sh -c 'echo install' agent.sh", install.Options(state_dir="/var/lib/x", user=True)))
    (tmp_path / "uninstall.sh").write_bytes(install.detached_uninstall(
        script("https://10.0.0.1:7080"), install.Options(prefix="/opt/x")))
    # SC2016: the single-quoted programs are for sh -c, expanded there on purpose
    r = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2016", str(tmp_path / "enable.sh"),
                        str(tmp_path / "uninstall.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
