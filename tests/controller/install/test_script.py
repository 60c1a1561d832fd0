"""The agent's install script and its one-line command: valid POSIX sh (``sh -n``, dash,
bash; shellcheck clean where installed), the command's forms (plain, own CA, a tunnel's URL,
options appended), the controller's URL filled in, the shell answer refusing unsafe values,
usage errors with their exit codes, and the systemd units it installs (root and --user),
checked by ``systemd-analyze verify`` (no systemd runs here: the unit is never started in the
tests; the script's foreground mode is, in tests/e2e/test_agent_install.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.install import script
from controller.install.package import Package

URL = "https://ctl.example:7080"


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
