"""The gateway's install script and command: valid POSIX sh (``sh -n``, and dash when
installed), the command's forms, the shell answer refusing unsafe values, and the script's
usage errors with their exit codes (run without root effects: argument checks come first)."""

from __future__ import annotations

import shutil
import subprocess

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
    with pytest.raises(ValueError):
        install.shell_answer({"OC_A": "x'; rm -rf /; '"})
    with pytest.raises(ValueError):
        install.shell_answer({"BAD": "x"})


def test_usage_errors_exit_2() -> None:
    r = subprocess.run(["sh", str(install.SCRIPT_PATH), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument: --bogus" in r.stderr
