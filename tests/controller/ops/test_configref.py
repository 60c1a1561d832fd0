"""The configuration reference is generated from the settings, every setting is described,
and docs/configuration.md is never stale."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from controller.ops import configref
from controller.settings import Settings
from tests.support.controller import ROOT


def test_docs_configuration_md_is_current() -> None:
    # run `.venv/bin/python -m controller.ops.configref` after changing controller/settings.py
    assert configref.DOC.read_text() == configref.render(), (
        "docs/configuration.md is stale: run .venv/bin/python -m controller.ops.configref")


def test_every_setting_is_described_with_its_variable_and_limits() -> None:
    text = configref.render()
    described = configref.descriptions()
    for f in fields(Settings):
        assert described[f.name], f.name
        assert f"| `{f.name}` |" in text and f"`OVERCAST_{f.name.upper()}`" in text
    row = next(line for line in text.splitlines() if line.startswith("| `tunnel_port` |"))
    assert "1 to 65535" in row
    row = next(line for line in text.splitlines() if line.startswith("| `tls` |"))
    assert "`auto`, `on`, `off`" in row and "`--tls`" in row
    row = next(line for line in text.splitlines() if line.startswith("| `http` |"))
    assert "HOST:PORT" in row and "`--http`" in row and '`"127.0.0.1:7080"`' in row
    row = next(line for line in text.splitlines() if line.startswith("| `session_ttl` |"))
    assert "at least 60" in row
    row = next(line for line in text.splitlines() if line.startswith("| `data_dir` |"))
    assert "/var/lib/overcast for root" in row  # the same whoever generates it


def test_a_setting_without_a_comment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    src = ("class Settings:\n"
           "    # where it goes\n"
           "    a: int = 1\n"
           "    b: int = 2\n"  # right under a: shares its comment
           "\n"
           "    c: int = 3\n")
    monkeypatch.setattr(configref, "_source", lambda: src)
    with pytest.raises(ValueError, match="without a description .*: c$"):
        configref.groups()
    monkeypatch.setattr(configref, "_source", lambda: src.replace("\n\n", "\n    # c's\n"))
    assert [(g.description, g.names) for g in configref.groups()] == [
        ("where it goes", ("a", "b")), ("c's", ("c",))]


def test_check_mode_as_a_command(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "controller.ops.configref", "--check"],
                       capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    r = subprocess.run([sys.executable, "-m", "controller.ops.configref", "--check",
                        "--output", str(stale)], capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 1 and "is stale: run .venv/bin/python -m controller.ops.configref" \
        in r.stderr
    assert stale.read_text() == "old\n"  # --check writes nothing
