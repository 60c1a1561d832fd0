"""packaging/systemd: the controller's unit and the WireGuard-hub drop-in. systemd-analyze
checks them offline (no systemd as PID 1 is needed); the unit's command line is checked
against the real `overcast controller`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.files import HUB_DROPIN, UNIT, controller_flags, overcast_command

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def _unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values (systemd keys repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} is outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def _exec_start() -> list[str]:
    return shlex.split(_one(_unit()["Service"], "ExecStart"))


def _copy_for_verify(tmp: Path, dropin: bool) -> Path:
    """The unit (and its drop-in) in a directory of their own, the ExecStart binary pointed at
    the real `overcast` of this checkout: verify checks that the command is executable, and
    /opt/overcast is not installed here. Nothing else changes."""
    binary = overcast_command()[0]
    text = UNIT.read_text()
    installed = _exec_start()[0]
    assert text.count(installed) >= 1
    unit = tmp / UNIT.name
    unit.write_text(text.replace(f"ExecStart={installed} ", f"ExecStart={binary} "))
    if dropin:
        d = tmp / f"{UNIT.name}.d"
        d.mkdir()
        shutil.copy(HUB_DROPIN, d / HUB_DROPIN.name)
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"}  # ":": and the usual path
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(unit)],
                          capture_output=True, text=True, env=env, timeout=60)


@needs_systemd_analyze
@pytest.mark.parametrize("dropin", [False, True], ids=["unit", "unit+wireguard-hub"])
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path, dropin: bool) -> None:
    unit = _copy_for_verify(tmp_path, dropin)
    r = _verify(unit)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # warnings (an unknown key, a bad value) do not change the exit status: none may appear
    ours = [line for line in out.splitlines() if str(tmp_path) in line or UNIT.name in line]
    assert not ours, out


@needs_systemd_analyze
def test_systemd_analyze_verify_would_notice_a_mistake(tmp_path: Path) -> None:
    """The check above is not blind: a misspelt key (in the unit, or in the drop-in, which
    it reads) and a missing binary are reported."""
    unit = _copy_for_verify(tmp_path, dropin=True)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    dropin = tmp_path / f"{UNIT.name}.d" / HUB_DROPIN.name
    dropin.write_text(dropin.read_text().replace("DeviceAllow=", "DevicesAllow="))
    r = _verify(unit)
    assert re.search(r"Unknown key.*ProtectHomes", r.stdout + r.stderr), r.stderr
    assert re.search(r"Unknown key.*DevicesAllow", r.stdout + r.stderr), r.stderr
    (tmp_path / "missing").mkdir()
    original = UNIT.read_text()
    (tmp_path / "missing" / UNIT.name).write_text(original)  # /opt/overcast/bin is not here
    r = _verify(tmp_path / "missing" / UNIT.name)
    assert r.returncode != 0 and "is not executable" in r.stdout + r.stderr


def _exposure(unit: Path) -> float:
    assert SYSTEMD_ANALYZE is not None
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot assess units offline: {r.stderr.strip()}")
    return float(m.group(1))


@needs_systemd_analyze
def test_hardening_exposure_is_low(tmp_path: Path) -> None:
    """systemd's own exposure score (0 best, 10 worst; below 4 it calls "OK"): the plain unit
    stays low, the WireGuard drop-in (CAP_NET_ADMIN, /dev/net/tun) costs a little."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "hub").mkdir()
    plain = _exposure(_copy_for_verify(tmp_path / "plain", dropin=False))
    hub = _exposure(_copy_for_verify(tmp_path / "hub", dropin=True))
    assert plain <= 2.0, plain
    assert plain < hub <= 3.0, (plain, hub)


def test_exec_start_uses_only_real_flags_of_overcast_controller() -> None:
    argv = _exec_start()
    assert argv[0] == "/opt/overcast/bin/overcast", argv  # the documented install path
    assert argv[1] == "controller", argv
    used = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("-")}
    assert used, argv
    assert used <= controller_flags(), used - controller_flags()


def test_exec_start_uses_the_directories_systemd_makes() -> None:
    service = _unit()["Service"]
    argv = _exec_start()
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    state = _one(service, "StateDirectory")
    config_dir = _one(service, "ConfigurationDirectory")
    # %S is /var/lib for a system unit: the data directory is the state directory
    assert opts["--data-dir"] == f"%S/{state}", opts
    assert Path(opts["--config"]).parent == Path("/etc") / config_dir, opts
    assert _one(service, "StateDirectoryMode") == "0700"


def test_unit_is_hardened() -> None:
    u = _unit()
    service = u["Service"]
    assert _one(service, "User") == "overcast" and _one(service, "Group") == "overcast"
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "Restart": "on-failure",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    }
    for key, value in expected.items():
        assert _one(service, key) == value, key
    # 10,000 agents hold a socket each, and the controller needs more besides
    assert int(_one(service, "LimitNOFILE")) >= 20_000
    assert "multi-user.target" in _one(u["Install"], "WantedBy")


def test_wireguard_dropin_adds_only_what_the_hub_needs() -> None:
    service = _unit(HUB_DROPIN)["Service"]
    assert set(service) == {"CapabilityBoundingSet", "AmbientCapabilities", "PrivateDevices",
                            "DeviceAllow", "RuntimeDirectory", "RuntimeDirectoryMode"}
    assert _one(service, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert _one(service, "AmbientCapabilities") == "CAP_NET_ADMIN"
    assert _one(service, "DeviceAllow") == "/dev/net/tun rw"
    # wireguard-go's socket directory (/var/run is /run), compiled into it and into tunnel/
    from tunnel import wggo

    assert Path(wggo.SOCKET_DIR).name == _one(service, "RuntimeDirectory")
