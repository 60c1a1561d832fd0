"""What the packaging tests read: the files under packaging/, the controller's own flags and
settings (derived from the code, never listed by hand), and a small Dockerfile reader."""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from controller import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
DOCKER = PACKAGING / "docker"
KUBERNETES = PACKAGING / "kubernetes"
SYSTEMD = PACKAGING / "systemd"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
IMAGE_SETTINGS = DOCKER / "controller.toml"
UNIT = SYSTEMD / "overcast-controller.service"
HUB_DROPIN = SYSTEMD / "wireguard-hub.conf"

# `overcast controller --init`: the flags agreed with its author (issue 8), checked against
# the real ones as soon as the command has them (test_entrypoint.py)
INIT_CONTRACT = frozenset({
    "--init", "--config", "--data-dir", "--external-url", "--http", "--grpc", "--tls",
    "--admin-email", "--admin-password-file", "--admin-password-stdin", "--org", "--json",
})


def overcast_command() -> list[str]:
    """The installed console script beside this Python, else the module."""
    script = Path(sys.executable).parent / "overcast"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli.main"]


@functools.cache
def controller_flags() -> frozenset[str]:
    """Every option ``overcast controller --help`` lists."""
    r = subprocess.run([*overcast_command(), "controller", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    flags = frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.stdout))
    assert "--config" in flags and "--data-dir" in flags, r.stdout  # the parse itself works
    return flags


def setting_names() -> frozenset[str]:
    """The settings, from the Settings dataclass."""
    return frozenset(f.name for f in fields(settings_module.Settings))


def settings_variables() -> frozenset[str]:
    """Every OVERCAST_* variable the settings loader reads: OVERCAST_<FIELD> for each field
    of Settings, and those it names itself (OVERCAST_CONFIG)."""
    source = Path(settings_module.__file__).read_text()
    named = set(re.findall(r'"(OVERCAST_[A-Z0-9_]+)"', source))
    return frozenset({"OVERCAST_" + n.upper() for n in setting_names()} | named)


def entrypoint_variables() -> frozenset[str]:
    """The OVERCAST_* variables the image's entrypoint reads itself."""
    return frozenset(re.findall(r"\bOVERCAST_[A-Z0-9_]+\b", _code(ENTRYPOINT.read_text())))


def image_settings() -> dict[str, object]:
    return tomllib.loads(IMAGE_SETTINGS.read_text())


def port_of(hostport: object) -> int:
    return int(str(hostport).rpartition(":")[2])


def _code(text: str) -> str:
    """Shell text without its comment lines."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def flags_in_shell(text: str) -> set[str]:
    """The long options of every `overcast` command line in a shell script (continuations
    joined, comments left out)."""
    joined = _code(text).replace("\\\n", " ")
    found: set[str] = set()
    for line in joined.splitlines():
        if re.search(r"\bovercast\s+controller\b", line):
            found.update(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
    return found


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments and pragmas left out)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    return out


def copies(stage: int | None = None) -> list[tuple[list[str], str, list[str]]]:
    """(options, destination, sources) of every COPY/ADD (of one stage: 0, 1, ...)."""
    result = []
    current = -1
    for ins in dockerfile():
        if ins.keyword == "FROM":
            current += 1
        if ins.keyword in ("COPY", "ADD") and stage in (None, current):
            words = shlex.split(ins.args)
            opts = [w for w in words if w.startswith("--")]
            rest = [w for w in words if not w.startswith("--")]
            result.append((opts, rest[-1], rest[:-1]))
    return result


def exposed_ports() -> set[int]:
    ports: set[int] = set()
    for ins in dockerfile():
        if ins.keyword == "EXPOSE":
            ports.update(int(p.split("/")[0]) for p in ins.args.split())
    return ports


def volumes() -> set[str]:
    import json

    vols: set[str] = set()
    for ins in dockerfile():
        if ins.keyword == "VOLUME":
            a = ins.args
            vols.update(json.loads(a) if a.startswith("[") else a.split())
    return vols


def dockerignore() -> list[tuple[bool, str]]:
    """The .dockerignore patterns at the repository root: (is an exception "!", pattern)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def sent(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(path).parts
    result = True
    for negate, pattern in rules:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pattern[3:])):
                result = negate
                break
    return result
