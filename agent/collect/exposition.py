"""The Prometheus text exposition format (0.0.4), as custom metric sources print it: strict,
bounded parsing that never raises (``agent.collect.custom`` runs the sources).

One sample a line, ``#`` lines (HELP, TYPE, comments) and blank lines skipped::

    # HELP queue_depth Jobs waiting.
    # TYPE queue_depth gauge
    queue_depth{queue="mail",host_role="mx"} 42
    http_requests_total{code="200"} 1027 1764142200000

``name{label="value",...} value [timestamp]``: names as Prometheus (``[a-zA-Z_:][a-zA-Z0-9_:]*``;
labels ``[a-zA-Z_][a-zA-Z0-9_]*``, not starting with ``__``, each once), label values in double
quotes with the ``\\\\``, ``\\"`` and ``\\n`` escapes, the value a decimal number or ``NaN``,
``+Inf``, ``-Inf``, the optional timestamp whole milliseconds since the epoch (at most an hour
old, at most ten minutes ahead). A line that does not follow it is left out and reported
(its number and why); the good ones are kept."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

MAX_SAMPLES = 2000          # samples one run may give; lines past it are bad lines
MAX_LINE = 4096             # characters in one line
MAX_LABELS = 32             # labels on one sample
MAX_LABEL_VALUE = 1024
MAX_NAME = 200
MAX_BAD_REPORTED = 10       # bad lines named; all are counted
PAST_MS = 3600 * 1000       # a sample's own timestamp may be this old...
FUTURE_MS = 600 * 1000      # ...or this far ahead of the host's clock

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SPACE = " \t"

Row = tuple[str, dict[str, str], float, int | None]  # metric, labels, value, its own time


class BadLine(ValueError):
    """A line that does not follow the format; the message says why."""


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)   # "line N: why", the first MAX_BAD_REPORTED
    bad_count: int = 0

    def reject(self, number: int, why: str) -> None:
        self.bad_count += 1
        if len(self.bad) < MAX_BAD_REPORTED:
            self.bad.append(f"line {number}: {why}")


def parse(text: str, now_ms: int, max_samples: int = MAX_SAMPLES) -> Parsed:
    """The samples of one run's output; never raises (bad lines are in ``bad``)."""
    out = Parsed()
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        stripped = line.strip(_SPACE)
        if not stripped or stripped.startswith("#"):
            continue  # HELP and TYPE say nothing the samples need
        if len(out.rows) >= max_samples:
            out.reject(number, f"more than {max_samples} samples in one run: the rest left out")
            continue
        try:
            if len(line) > MAX_LINE:
                raise BadLine(f"longer than {MAX_LINE} characters")
            out.rows.append(parse_line(stripped, now_ms))
        except BadLine as exc:
            out.reject(number, str(exc))
    return out


def parse_line(line: str, now_ms: int) -> Row:
    """One sample line (without surrounding blanks); raises BadLine."""
    m = _NAME.match(line)
    if m is None:
        raise BadLine("it must start with a metric name")
    name, i = m.group(), m.end()
    if len(name) > MAX_NAME:
        raise BadLine(f"the metric name is longer than {MAX_NAME} characters")
    labels: dict[str, str] = {}
    if i < len(line) and line[i] == "{":
        labels, i = _labels(line, i + 1)
    rest = line[i:]
    if rest and rest[0] not in _SPACE:
        raise BadLine(f"unexpected {rest[:10]!r} after the metric name")
    words = rest.split()
    if not words:
        raise BadLine("no value")
    if len(words) > 2:
        raise BadLine(f"unexpected {words[2][:20]!r} after the value and timestamp")
    value = _value(words[0])
    t_ms = None
    if len(words) == 2:
        try:
            t_ms = int(words[1])
        except ValueError:
            raise BadLine(f"the timestamp {words[1][:20]!r} is not whole milliseconds") from None
        if not now_ms - PAST_MS <= t_ms <= now_ms + FUTURE_MS:
            raise BadLine(f"the timestamp {t_ms} is more than an hour old or ten minutes ahead "
                          "(milliseconds since the epoch are expected)")
    return name, labels, value, t_ms


def _labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """The labels from just after "{" to just after "}"; (labels, index after "}")."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        m = _LABEL.match(line, i)
        if m is None:
            raise BadLine(f"a label name was expected at column {i + 1}")
        label, i = m.group(), m.end()
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n or line[i] != "=":
            raise BadLine(f"'=' was expected after the label {label}")
        i += 1
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n or line[i] != '"':
            raise BadLine(f"the value of {label} must be in double quotes")
        value, i = _quoted(line, i + 1, label)
        if label.startswith("__"):
            raise BadLine(f"label names starting with __ are reserved ({label})")
        if label in labels:
            raise BadLine(f"the label {label} is given twice")
        if len(value) > MAX_LABEL_VALUE:
            raise BadLine(f"the value of {label} is longer than {MAX_LABEL_VALUE} characters")
        labels[label] = value
        if len(labels) > MAX_LABELS:
            raise BadLine(f"more than {MAX_LABELS} labels")
        while i < n and line[i] in _SPACE:
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i < n and line[i] == "}":
            return labels, i + 1
        else:
            raise BadLine(f"',' or '}}' was expected after the label {label}")


def _quoted(line: str, i: int, label: str) -> tuple[str, int]:
    out: list[str] = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            nxt = line[i + 1] if i + 1 < n else ""
            if nxt not in ('"', "\\", "n"):
                raise BadLine(f"the value of {label} has an unknown escape \\{nxt}")
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    raise BadLine(f"the value of {label} has no closing quote")


def _value(word: str) -> float:
    special = {"nan": math.nan, "+inf": math.inf, "inf": math.inf, "-inf": -math.inf}
    if word.lower() in special:
        return special[word.lower()]
    if not _NUMBER.fullmatch(word):
        raise BadLine(f"the value {word[:20]!r} is not a number")
    return float(word)
