"""The query language's tree (what :mod:`controller.monitor.promql` parses into) and the
arithmetic and comparisons it uses, as PromQL has them."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Literal

from controller import safe_regex

RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase", "avg_over_time", "min_over_time",
                             "max_over_time", "sum_over_time", "count_over_time"})
AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count"})
COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
# the window of a range function given a selector without one (rate(x) for rate(x[5m])):
# Mist's API documents rate(net_bytes_sent{...}). 5 minutes: Prometheus's lookback (how far
# back an instant selector looks) and the window of its documentation's rate() examples;
# ~30 samples at the agents' 10 s interval
DEFAULT_RANGE_MS = 5 * 60_000
ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "^"})

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000}
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")

Kind = Literal["scalar", "vector", "range"]


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self._regex.fullmatch(value)
        return hit if self.op == "=~" else not hit

    @functools.cached_property
    def _regex(self) -> safe_regex.Regex:
        """Anchored at both ends and ``.`` matching newlines, as Prometheus's
        ``^(?s:...)$``; linear time (RE2). The parser checked it (BadRequest otherwise)."""
        return regex(self.value)


def regex(pattern: str) -> safe_regex.Regex:
    """A matcher's pattern compiled; BadRequest (field ``query``) if RE2 does not take it."""
    return safe_regex.compile(pattern, "query", dot_all=True)


@dataclass(frozen=True)
class Number:
    value: float
    kind: Kind = "scalar"


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()
    range_ms: int | None = None  # x[5m]: a range vector

    @property
    def kind(self) -> Kind:
        return "vector" if self.range_ms is None else "range"


@dataclass(frozen=True)
class Call:
    func: str
    arg: Selector  # always a range selector
    kind: Kind = "vector"


@dataclass(frozen=True)
class Aggregate:
    op: str
    expr: Expr
    labels: tuple[str, ...] = ()
    without: bool = False
    kind: Kind = "vector"


@dataclass(frozen=True)
class Unary:
    """``-expr`` on a vector (on a number the parser folds it)."""

    expr: Expr
    kind: Kind = "vector"


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr
    bool_mod: bool = False

    @property
    def kind(self) -> Kind:
        return "scalar" if self.lhs.kind == "scalar" and self.rhs.kind == "scalar" else "vector"


Expr = Number | Selector | Call | Aggregate | Unary | Binary


def selectors(expr: Expr) -> list[Selector]:
    """Every selector in ``expr``, in order."""
    if isinstance(expr, Selector):
        return [expr]
    if isinstance(expr, Call):
        return [expr.arg]
    if isinstance(expr, Aggregate | Unary):
        return selectors(expr.expr)
    if isinstance(expr, Binary):
        return selectors(expr.lhs) + selectors(expr.rhs)
    return []


def parse_duration(text: str) -> int | None:
    """Milliseconds of a PromQL duration (``5m``, ``1h30m``, ``250ms``); None if it is none."""
    if not _DURATION.fullmatch(text):
        return None
    return sum(int(n) * _UNIT_MS[u] for n, u in _DURATION_PART.findall(text))


def arithmetic(op: str, a: float, b: float) -> float:
    """``a op b`` with IEEE results where Python raises (x/0, overflow), as PromQL."""
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "%":
            return math.fmod(a, b)
        return math.pow(a, b)
    except ZeroDivisionError:
        if op == "%" or a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    except (OverflowError, ValueError):
        if op == "%":
            return math.nan
        return math.inf if op != "^" or a > 0 else math.nan


def compare(op: str, a: float, b: float) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == ">":
        return a > b
    if op == "<":
        return a < b
    if op == ">=":
        return a >= b
    return a <= b
