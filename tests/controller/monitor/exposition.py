"""A strict reader of the Prometheus text exposition format (0.0.4) for the tests: every
line must be a comment, a TYPE line of a known type, or a sample with well-formed labels;
a sample seen twice is an error."""

from __future__ import annotations

import re

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(m: re.Match[str]) -> str:
    return "\n" if m.group(1) == "n" else m.group(1)


def parse_exposition(text: str) -> tuple[dict[str, str], Samples]:
    """(type by family, value by (sample name, labels)), refusing anything malformed."""
    types: dict[str, str] = {}
    values: Samples = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels: list[tuple[str, str]] = []
        body = m.group(2) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            assert lm, (line, body[pos:])
            labels.append((lm.group(1), _UNESCAPE.sub(_unescape, lm.group(2))))
            pos = lm.end()
        key = (m.group(1), frozenset(labels))
        assert key not in values, f"duplicate sample {line}"
        values[key] = float(m.group(3))
    return types, values
