"""The configuration reference (docs/configuration.md), generated from the settings' own
definitions: the fields of ``Settings`` (names, types, defaults), the comment above each
field (its description: a comment describes the fields that follow it without a blank
line), the ``OVERCAST_*`` variable, the ``overcast controller`` flag, and the limits
``Settings.validate`` enforces (``_MINIMUMS``, ``_MAXIMUMS``, ``_CHOICES``, HOST:PORT).

    .venv/bin/python -m controller.ops.configref            # write docs/configuration.md
    .venv/bin/python -m controller.ops.configref --check    # exit 1 when it is stale
    .venv/bin/python -m controller.ops.configref --stdout
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from controller import settings as settings_mod
from controller.errors import Invalid
from controller.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

INTRO = """\
# Configuration reference

Generated from `controller/settings.py` by `.venv/bin/python -m controller.ops.configref`:
do not edit it by hand (a test fails when it is stale; add or change a setting there, with a
comment above it, and run the generator).

The controller reads its settings from, each overriding the one before:

1. a TOML file: `--config FILE`, else `$OVERCAST_CONFIG`, else `/etc/overcast/controller.toml`
   when it exists, else `<data_dir>/controller.toml` (where `overcast controller --init`
   writes it when not run as root). Keys are the setting names below; an unknown key is an
   error, as is a file named with `--config` or `$OVERCAST_CONFIG` that does not exist;
2. environment variables, `OVERCAST_` and the name in capitals (an empty one is ignored);
   booleans as `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`);
3. the flags of `overcast controller` (those listed).

The admin commands (`overcast adduser`, `audit verify`, `backup`, `restore`, `doctor`) read
the same settings, so they find the data directory and the running controller's socket.
Values are checked at start (`overcast doctor` checks them too); a wrong one stops the
controller with a message naming the setting. Numbers must be whole and at least 1 unless a
range says otherwise.
"""


@dataclass(frozen=True)
class Group:
    description: str
    names: tuple[str, ...]


def _source() -> str:
    return Path(settings_mod.__file__).read_text()


def groups() -> list[Group]:
    """The fields of ``Settings`` in order, grouped under the comment above them. A field
    directly under another (no blank line or comment between) shares its comment."""
    src = _source()
    lines = src.splitlines()
    tree = ast.parse(src)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[Group] = []
    undescribed: list[str] = []
    prev_end = cls.lineno  # the line of "class Settings"
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            prev_end = node.end_lineno or node.lineno
            continue
        name = node.target.id
        between = lines[prev_end:node.lineno - 1]
        comment: list[str] = []
        for text in reversed(between):
            t = text.strip()
            if not t.startswith("#"):
                break
            comment.insert(0, t.lstrip("#").strip())
        if not between and out:  # right under the previous field: the same group
            out[-1] = Group(out[-1].description, (*out[-1].names, name))
        elif comment:
            out.append(Group(" ".join(comment), (name,)))
        else:
            undescribed.append(name)
            out.append(Group("", (name,)))
        prev_end = node.end_lineno or node.lineno
    if undescribed:
        raise ValueError(f"settings without a description (a comment above them in "
                         f"controller/settings.py): {', '.join(undescribed)}")
    return out


def descriptions() -> dict[str, str]:
    return {name: g.description for g in groups() for name in g.names}


def _type(f: dataclasses.Field[Any]) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {"str": "text", "int": "integer", "bool": "boolean",
            "Secret": "text (secret: never shown)"}.get(t, t)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not MISSING:
        v = f.default
    elif f.default_factory is not MISSING:
        doc = (f.default_factory.__doc__ or "computed at start").strip()
        return doc.rstrip(".")
    else:
        return "(required)"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, int):
        return f"`{v}`"
    return f'`"{v}"`' if v else "empty"


def _hostport_fields() -> set[str]:
    """Text settings ``validate`` checks as HOST:PORT (found by giving each a bad value)."""
    base = Settings(data_dir="/nonexistent")
    out = set()
    for f in fields(Settings):
        if f.type not in (str, "str") or f.name == "data_dir":
            continue
        try:
            bad: dict[str, Any] = {f.name: "not-host-port"}
            dataclasses.replace(base, **bad).validate()
        except Invalid as exc:
            if exc.details.get("field") == f.name and "HOST:PORT" in exc.message:
                out.add(f.name)
    return out


def _allowed(f: dataclasses.Field[Any], hostport: set[str]) -> str:
    choices = getattr(settings_mod, "_CHOICES", {}).get(f.name)
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    if f.type in (int, "int"):
        low = getattr(settings_mod, "_MINIMUMS", {}).get(f.name, 1)
        high = getattr(settings_mod, "_MAXIMUMS", {}).get(f.name)
        return f"{low} to {high}" if high is not None else f"at least {low}"
    if f.type in (bool, "bool"):
        return "`true`, `false`"
    if f.name in hostport:
        return "HOST:PORT"
    return ""


def _flags() -> dict[str, str]:
    """Setting name -> the ``overcast controller`` flag that sets it."""
    from controller.cli.main import parser

    ap = parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    ctl = sub.choices["controller"]
    names = {f.name for f in fields(Settings)}
    return {a.dest: a.option_strings[-1] for a in ctl._actions
            if a.dest in names and a.option_strings}


def render() -> str:
    by_name = {f.name: f for f in fields(Settings)}
    flags = _flags()
    hostport = _hostport_fields()
    out = [INTRO]
    for g in groups():
        text = (g.description[0].upper() + g.description[1:]).replace("<", "&lt;")
        out += ["## " + ", ".join(f"`{n}`" for n in g.names), "",
                text if text.endswith((".", ")")) else text + ".", "",
                "| Setting | Type | Default | Variable | Flag | Allowed |",
                "|---|---|---|---|---|---|"]
        for name in g.names:
            f = by_name[name]
            flag = f"`{flags[name]}`" if name in flags else ""
            out.append(f"| `{name}` | {_type(f)} | {_default(f)} | `OVERCAST_{name.upper()}` "
                       f"| {flag} | {_allowed(f, hostport)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.ops.configref",
                                 description="Write docs/configuration.md from the settings.")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    g.add_argument("--stdout", action="store_true", help="print it instead of writing it")
    ap.add_argument("--output", type=Path, default=DOC, help=f"default {DOC}")
    args = ap.parse_args(argv)
    try:
        text = render()
    except ValueError as exc:
        print(f"configref: {exc}", file=sys.stderr)
        return 1
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"configref: {args.output} is stale: run .venv/bin/python -m "
                  "controller.ops.configref", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
