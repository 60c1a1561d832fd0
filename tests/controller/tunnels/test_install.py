"""The gateway's install script and command: valid POSIX sh (``sh -n``, and dash when
installed; shellcheck clean), the command's forms, the shell answer refusing unsafe values,
the script's usage errors with their exit codes (run without root effects: argument checks
come first), and the systemd unit it installs, checked by ``systemd-analyze verify`` (no
systemd runs here: the unit is never started in the tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from controller.tunnels import install


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_the_script_parses(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    r = subprocess.run([shell, "-n", str(install.SCRIPT_PATH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_commands_parse_and_pin_the_ca() -> None:
    fp = "ab" * 32
    own = install.command("https://ctl.example:7080", "oct_abc-_", fp, own_ca=True, rotate=True)
    assert own.startswith("sh -c ") and f"grep -q ^{fp}" in own and "--rotate" in own
    assert "curl -fsSLk https://ctl.example:7080/ca.pem" in own
    assert "--cacert $t/ca.pem https://ctl.example:7080/install/tunnel.sh" in own
    plain = install.command("http://127.0.0.1:7080", "oct_abc", fp, own_ca=True)
    assert plain.startswith("curl -fsSL http://127.0.0.1:7080/install/tunnel.sh | sudo sh -s --")
    assert "--ca-fingerprint" not in plain
    for cmd in (own, plain):
        assert subprocess.run(["sh", "-n", "-c", cmd]).returncode == 0


def test_the_shell_answer_refuses_unsafe_values() -> None:
    assert install.shell_answer({"OC_A": "100.96.0.2/32"}) == "OC_A='100.96.0.2/32'\n"
    assert install.shell_answer({"OC_HUB_ADDRESS6": "fd12:3456:789a::6460:1", "OC_B": ""}) == \
        "OC_HUB_ADDRESS6='fd12:3456:789a::6460:1'\nOC_B=''\n"
    with pytest.raises(ValueError):
        install.shell_answer({"OC_A": "x'; rm -rf /; '"})
    with pytest.raises(ValueError):
        install.shell_answer({"BAD": "x"})


def test_usage_errors_exit_2() -> None:
    r = subprocess.run(["sh", str(install.SCRIPT_PATH), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument: --bogus" in r.stderr


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for dialect in ("sh", "dash"):
        r = subprocess.run(["shellcheck", "-s", dialect, str(install.SCRIPT_PATH)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_the_systemd_unit_it_installs_verifies(tmp_path: Path) -> None:
    """The unit text ``install_unit`` writes (``--print-unit`` prints the same, without root),
    checked offline by systemd's own parser; and a state directory systemd would misread is
    refused before anything is written."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    r = subprocess.run(["sh", str(install.SCRIPT_PATH), "--print-unit", "--state-dir",
                        "/etc/overcast/tunnel", "--interface", "oc-0123abcd"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "overcast-tunnel-oc-0123abcd.service"
    unit.write_text(r.stdout)
    assert "ExecStart=/bin/sh /etc/overcast/tunnel/gateway.sh --up --foreground --state-dir " \
           "/etc/overcast/tunnel\n" in r.stdout
    assert "Restart=always" in r.stdout and "StartLimitIntervalSec=0" in r.stdout
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       cwd=tmp_path)
    # it exits 0 on warnings too: any line it prints is a finding
    assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
    bad = tmp_path / "bad.service"  # the check does find what it should
    bad.write_text(r.stdout.replace("Restart=always", "Restart=sometimes"))
    v = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert "restart specifier" in v.stdout + v.stderr
    r = subprocess.run(["sh", str(install.SCRIPT_PATH), "--print-unit", "--state-dir",
                        "/srv/100% tunnel", "--interface", "oc-0123abcd"], capture_output=True, text=True)
    assert r.returncode == 2 and "systemd unit" in r.stderr and not r.stdout
