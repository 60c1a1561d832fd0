"""The agent's configuration file: flat TOML (default ``/etc/overcast/agent.toml`` when it
exists), written by the install script, read by the agent at start; flags override it.

``python -m agent.config write FILE key=value ...`` merges values into the file (``key=``
removes one): the install script writes it this way, keeping what an earlier run wrote."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/etc/overcast/agent.toml"
# every key, its type, and the flag (argparse destination) it stands for
KEYS: dict[str, type] = {
    "controller": str,
    "ca_fingerprint": str,
    "state_dir": str,
    "hostname": str,
    "interval": float,
    "spool_max_mb": int,
    "log_level": str,
}
# what a key is when neither a flag nor the file gives it
DEFAULTS: dict[str, Any] = {"spool_max_mb": 64, "log_level": "info"}
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The file is missing (when named), not TOML, or has an unknown key or a wrong value."""


def read(path: Path) -> dict[str, Any]:
    """The file's values, checked. Raises ConfigError."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        typ = KEYS.get(key)
        if typ is None:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(KEYS)})")
        out[key] = _check(path, key, typ, value)
    return out


def _check(path: Path, key: str, typ: type, value: Any) -> Any:
    ok = isinstance(value, typ) and not isinstance(value, bool)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{path}: {key} must be a {typ.__name__}, not {value!r}")
    if key == "log_level" and value not in LOG_LEVELS:
        raise ConfigError(f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}")
    if key in ("interval", "spool_max_mb") and value <= 0:
        raise ConfigError(f"{path}: {key} must be more than 0")
    return value


def apply(args: argparse.Namespace) -> None:
    """Fill what no flag gave (None) from the file, then from DEFAULTS. ``args.config``:
    None for the default file when it exists, "" for none; afterwards it is the path read
    ("" when none was). Raises ConfigError."""
    name = getattr(args, "config", None)
    if name is None:
        name = DEFAULT_PATH if os.path.isfile(DEFAULT_PATH) else ""
    values = read(Path(name)) if name else {}
    for key in KEYS:
        if getattr(args, key, None) is None:
            setattr(args, key, values.get(key, DEFAULTS.get(key)))
    args.config = str(Path(name).absolute()) if name else ""


def dumps(values: dict[str, Any]) -> str:
    """Flat TOML: strings as basic strings (JSON's escapes are TOML's), numbers as they are."""
    lines = ["# the Overcast agent's configuration (see `python -m agent --help`); flags "
             "override it"]
    for key in KEYS:
        if key in values and values[key] is not None:
            v = values[key]
            lines.append(f"{key} = {json.dumps(v) if isinstance(v, str) else repr(v)}")
    return "\n".join(lines) + "\n"


def write(path: Path, updates: dict[str, str]) -> None:
    """Merge ``updates`` (text, converted to each key's type; "" removes the key) into the
    file, or create it; replaced atomically, 0644 (nothing secret: the fingerprint is public).
    Raises ConfigError."""
    values = read(path) if path.exists() else {}
    for key, text in updates.items():
        typ = KEYS.get(key)
        if typ is None:
            raise ConfigError(f"unknown key {key!r} (known: {', '.join(KEYS)})")
        if text == "":
            values.pop(key, None)
            continue
        try:
            value = typ(text)
        except ValueError:
            raise ConfigError(f"{key} must be a {typ.__name__}, not {text!r}") from None
        values[key] = _check(path, key, typ, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(values))
    tmp.chmod(0o644)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "write":
        print("usage: python -m agent.config write FILE key=value ...", file=sys.stderr)
        return 2
    updates: dict[str, str] = {}
    for item in argv[2:]:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"agent.config: {item!r} is not key=value", file=sys.stderr)
            return 2
        updates[key] = value
    try:
        write(Path(argv[1]), updates)
    except ConfigError as exc:
        print(f"agent.config: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
