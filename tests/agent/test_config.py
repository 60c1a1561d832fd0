"""The agent's configuration file: read and checked, flags over the file over the defaults,
merged when the install script writes it again; and the agent itself reading it."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config
from agent.main import add_arguments

ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('controller = "https://c.example:7080"\nstate_dir = "/srv/oc"\ninterval = 5\n'
                 'log_level = "debug"\n')
    a = _args("--config", str(f), "--interval", "2", "--state-dir", "/elsewhere")
    config.apply(a)
    assert (a.controller, a.state_dir, a.interval, a.log_level) == \
        ("https://c.example:7080", "/elsewhere", 2.0, "debug")
    assert a.spool_max_mb == 64 and a.hostname is None and a.config == str(f)
    a = _args("--config", "")  # none at all: the defaults
    config.apply(a)
    assert (a.log_level, a.spool_max_mb, a.controller, a.config) == ("info", 64, None, "")


@pytest.mark.parametrize(("text", "words"), [
    ('controler = "x"\n', "unknown key 'controler'"),
    ("interval = \"soon\"\n", "interval must be a float"),
    ("spool_max_mb = 1.5\n", "spool_max_mb must be a int"),
    ('log_level = "loud"\n', "log_level must be one of"),
    ("interval = 0\n", "interval must be more than 0"),
    ("controller = \n", "not valid TOML"),
])
def test_a_bad_file_is_refused_in_words(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=words):
        config.apply(_args("--config", str(f)))


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.apply(_args("--config", str(tmp_path / "none.toml")))


def test_writing_merges_and_removes(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "agent.toml"
    config.write(f, {"controller": "https://c", "interval": "10", "hostname": 'we"ird\\name'})
    config.write(f, {"interval": "", "state_dir": "/var/lib/x"})  # a re-run: merged
    assert config.read(f) == {"controller": "https://c", "hostname": 'we"ird\\name',
                              "state_dir": "/var/lib/x"}
    assert (f.stat().st_mode & 0o777) == 0o644
    with pytest.raises(config.ConfigError, match="unknown key"):
        config.write(f, {"token": "ocj_x"})  # nothing secret goes there
    assert config.main(["write", str(f), "interval=x"]) == 2
    assert config.main(["write", str(f), "interval=3"]) == 0 and config.read(f)["interval"] == 3.0


def _agent(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"}
    return subprocess.run([sys.executable, "-m", "agent", *argv], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


def test_the_agent_reads_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    r = _agent("--config", str(bad))
    assert r.returncode == 2 and "unknown key 'colour'" in r.stderr
    good = tmp_path / "agent.toml"
    state = tmp_path / "state"
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    config.write(good, {"state_dir": str(state), "controller": url})
    r = _agent("--config", str(good))
    assert r.returncode == 3 and f"not enrolled ({state})" in r.stderr  # its state_dir
    r = _agent("--config", str(good), "--token", "ocj_x", "--ca-fingerprint", "sha256:00",
               "--state-dir", str(tmp_path / "other"))
    # the file's controller (unreachable: 5), the flag's state directory
    assert r.returncode == 5 and url in r.stderr, r.stderr
    assert (tmp_path / "other").is_dir()
