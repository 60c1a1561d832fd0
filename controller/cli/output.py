"""Human tables and JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict):
        return ",".join(f"{k}={val}" if val not in (None, "") else str(k) for k, val in v.items())
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None,
          empty: str = "") -> None:
    if not rows:
        if empty:
            print(empty, file=sys.stderr)
        return
    heads = [h.upper() for h in (headers or columns)]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    widths = [min(w, 60) for w in widths]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v[:w].ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    print(line(heads))
    for row in cells:
        print(line(row))


def fields(obj: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for k in keys:
        if k in obj:
            print(f"{k.ljust(width)}  {_cell(obj[k])}")
