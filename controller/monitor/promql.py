"""The query language: a subset of PromQL, parsed by recursive descent into a typed tree.

What it covers (the README documents it, "Queries")::

    expr       := compare
    compare    := additive (("==" | "!=" | ">" | "<" | ">=" | "<=") ["bool"] additive)*
    additive   := multiply (("+" | "-") multiply)*
    multiply   := unary (("*" | "/" | "%") unary)*
    unary      := ("-" | "+") unary | power
    power      := primary ["^" unary]                      (right-associative, as PromQL)
    primary    := NUMBER | "(" expr ")" | function | aggregation | selector
    selector   := METRIC ["{" [matcher ("," matcher)* [","]] "}"] ["[" DURATION "]"]
    matcher    := LABEL ("=" | "!=" | "=~" | "!~") STRING
    function   := ("rate" | "irate" | "increase" | "avg_over_time" | "min_over_time"
                   | "max_over_time" | "sum_over_time" | "count_over_time") "(" expr ")"
                  (the argument a range selector; a selector without a range, as in Mist's
                  own example rate(net_bytes_sent{...}), reads DEFAULT_RANGE_MS: 5m)
    aggregation:= ("sum" | "avg" | "min" | "max" | "count") [grouping] "(" expr ")" [grouping]
    grouping   := ("by" | "without") "(" [LABEL ("," LABEL)* [","]] ")"

Binary operators take a number on at least one side (no vector matching). Every error is a
:class:`BadRequest` on the ``query`` field that names the 1-based position."""

from __future__ import annotations

import re

from controller.errors import BadRequest
from controller.monitor.expr import (
    AGGREGATIONS,
    ARITHMETIC,
    COMPARISONS,
    DEFAULT_RANGE_MS,
    RANGE_FUNCTIONS,
    Aggregate,
    Binary,
    Call,
    Expr,
    Kind,
    Matcher,
    Number,
    Selector,
    Unary,
    arithmetic,
    compare,
    parse_duration,
    regex,
    selectors,
)

__all__ = ["AGGREGATIONS", "ARITHMETIC", "COMPARISONS", "DEFAULT_RANGE_MS", "RANGE_FUNCTIONS",
           "Aggregate", "Binary", "Call", "Expr", "Kind", "Matcher", "Number", "Selector", "Unary", "arithmetic",
           "compare", "parse", "parse_duration", "selectors"]

MAX_QUERY = 4000
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s*")
_OPERATORS = ("==", "!=", ">=", "<=", "=~", "!~", "+", "-", "*", "/", "%", "^", ">", "<",
              "=", "(", ")", "{", "}", "[", "]", ",")

def parse(query: str) -> Expr:
    """The tree of ``query``; raises BadRequest (field ``query``, with the position)."""
    if not query.strip():
        raise BadRequest("query is required, e.g. rate(net_bytes_sent[5m])", field="query")
    if len(query) > MAX_QUERY:
        raise BadRequest(f"query is longer than {MAX_QUERY} characters", field="query")
    p = _Parser(query)
    expr = p.expr()
    if p.peek() != "":
        p.fail(f"unexpected {p.peek()!r}")
    p._instant(expr, len(query) - len(query.lstrip()), "a query")
    return expr


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- tokens ------------------------------------------------------------------------------
    def _skip(self) -> None:
        m = _SPACE.match(self.text, self.pos)
        self.pos = m.end() if m else self.pos

    def peek(self) -> str:
        """The next token's text ("" at the end), without consuming it."""
        self._skip()
        if self.pos >= len(self.text):
            return ""
        for rx in (_NUMBER, _IDENT):
            m = rx.match(self.text, self.pos)
            if m:
                return m.group(0)
        for op in _OPERATORS:
            if self.text.startswith(op, self.pos):
                return op
        return self.text[self.pos]

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if expected is not None and tok != expected:
            self.fail(f"expected {expected!r} but found {tok!r}" if tok else
                      f"expected {expected!r} but the query ends")
        if not tok:
            self.fail("unexpected end of the query")
        self.pos += len(tok)
        return tok

    def fail(self, message: str, at: int | None = None) -> None:
        pos = (self.pos if at is None else at) + 1
        raise BadRequest(f"{message} at position {pos}", field="query", position=pos)

    # -- grammar -----------------------------------------------------------------------------
    def expr(self) -> Expr:
        return self.compare()

    def compare(self) -> Expr:
        lhs = self.additive()
        while self.peek() in COMPARISONS:
            at = self.pos
            op = self.take()
            bool_mod = False
            if self.peek() == "bool":
                self.take()
                bool_mod = True
            rhs = self.additive()
            lhs = self._binary(op, lhs, rhs, at, bool_mod)
        return lhs

    def additive(self) -> Expr:
        lhs = self.multiply()
        while self.peek() in ("+", "-"):
            at = self.pos
            op = self.take()
            lhs = self._binary(op, lhs, self.multiply(), at)
        return lhs

    def multiply(self) -> Expr:
        lhs = self.unary()
        while self.peek() in ("*", "/", "%"):
            at = self.pos
            op = self.take()
            lhs = self._binary(op, lhs, self.unary(), at)
        return lhs

    def unary(self) -> Expr:
        if self.peek() in ("-", "+"):
            at = self.pos
            sign = self.take()
            inner = self.unary()
            self._instant(inner, at)
            if sign == "+":
                return inner
            if isinstance(inner, Number):
                return Number(-inner.value)
            return Unary(inner)
        return self.power()

    def power(self) -> Expr:
        base = self.primary()
        if self.peek() == "^":
            at = self.pos
            self.take()
            return self._binary("^", base, self.unary(), at)
        return base

    def primary(self) -> Expr:
        self._skip()
        at = self.pos
        tok = self.peek()
        if not tok:
            self.fail("unexpected end of the query: expected a metric, a number or a function")
        if _NUMBER.fullmatch(tok):
            self.take()
            if _IDENT.match(self.text, self.pos) and not self.text[self.pos].isspace():
                self.fail("a duration such as 5m is only allowed inside [ ]", at)
            return Number(float(tok))
        if tok == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            if self.peek() == "[":
                self.fail("a range [...] applies to a metric selector only, not to ( ... )")
            return inner
        if tok == "{":
            self.fail("a selector needs a metric name before '{' (as in cpu_usage_idle{cpu=\"cpu0\"})")
        if not _IDENT.fullmatch(tok):
            self.fail(f"unexpected {tok!r}: expected a metric, a number or a function")
        self.take()
        nxt = self.peek()
        if tok in AGGREGATIONS and nxt in ("(", "by", "without"):
            return self.aggregation(tok, at)
        if nxt == "(":
            if tok not in RANGE_FUNCTIONS:
                self.fail(f"unknown function {tok}(): supported are "
                          f"{', '.join(sorted(RANGE_FUNCTIONS | AGGREGATIONS))}", at)
            return self.call(tok, at)
        if tok in ("by", "without", "bool"):
            self.fail(f"unexpected {tok!r}", at)
        if tok.lower() in ("inf", "nan"):
            return Number(float(tok))
        return self.selector(tok, at)

    def call(self, func: str, at: int) -> Call:
        self.take("(")
        arg_at = self.pos
        arg = self.expr()
        self.take(")")
        if not isinstance(arg, Selector):
            self._skip()
            self.fail(f"{func}() takes a range selector such as {func}(metric[5m])", arg_at)
        assert isinstance(arg, Selector)
        if arg.range_ms is None:  # Mist's API documents rate(metric{...}): the default window
            arg = Selector(arg.metric, arg.matchers, DEFAULT_RANGE_MS)
        return Call(func, arg)

    def aggregation(self, op: str, at: int) -> Aggregate:
        labels: tuple[str, ...] = ()
        without = False
        if self.peek() in ("by", "without"):
            without = self.take() == "without"
            labels = self.grouping()
        self.take("(")
        inner_at = self.pos
        inner = self.expr()
        self.take(")")
        if self.peek() in ("by", "without"):
            if labels:
                self.fail(f"{op}() is grouped twice")
            without = self.take() == "without"
            labels = self.grouping()
        self._instant(inner, inner_at, f"{op}()")
        return Aggregate(op, inner, labels, without)

    def grouping(self) -> tuple[str, ...]:
        self.take("(")
        labels: list[str] = []
        while self.peek() != ")":
            self._skip()
            m = _LABEL.match(self.text, self.pos)
            if not m:
                self.fail("expected a label name in by (...) / without (...)")
            assert m is not None
            labels.append(m.group(0))
            self.pos = m.end()
            if self.peek() == ",":
                self.take()
            elif self.peek() != ")":
                self.fail(f"expected ',' or ')' but found {self.peek()!r}" if self.peek() else
                          "expected ')' but the query ends")
        self.take(")")
        return tuple(labels)

    def selector(self, metric: str, at: int) -> Selector:
        matchers: list[Matcher] = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                matchers.append(self.matcher())
                if self.peek() == ",":
                    self.take()
                elif self.peek() != "}":
                    self.fail(f"expected ',' or '}}' after a label matcher but found "
                              f"{self.peek()!r}" if self.peek() else
                              "expected '}' but the query ends")
            self.take("}")
        range_ms = None
        if self.peek() == "[":
            self.take()
            self._skip()
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in "] \t\n":
                self.pos += 1
            range_ms = parse_duration(self.text[start:self.pos])
            if not range_ms:
                self.fail("expected a duration such as 30s, 5m or 1h inside [ ]", start)
            self.take("]")
        return Selector(metric, tuple(matchers), range_ms)

    def matcher(self) -> Matcher:
        self._skip()
        at = self.pos
        m = _LABEL.match(self.text, self.pos)
        if not m:
            self.fail("expected a label name in { } (as in {cpu=\"cpu0\"})")
        assert m is not None
        self.pos = m.end()
        op = self.peek()
        if op not in ("=", "!=", "=~", "!~"):
            self.fail(f"expected =, !=, =~ or !~ after {m.group(0)!r}")
        self.take()
        value = self.string()
        if op in ("=~", "!~"):
            try:
                regex(value)
            except BadRequest as exc:
                self.fail(f"bad regular expression {value[:100]!r}: "
                          f"{exc.message.removeprefix('query: ')}", at)
        return Matcher(m.group(0), op, value)

    def string(self) -> str:
        self._skip()
        at = self.pos
        quote = self.text[self.pos] if self.pos < len(self.text) else ""
        if quote == "`":  # a raw string: no escapes
            end = self.text.find("`", self.pos + 1)
            if end < 0:
                self.fail("the quoted value is not closed", at)
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        if quote not in ("'", '"'):
            self.fail("expected a quoted value (label=\"value\")")
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text):
            c = self.text[i]
            if c == "\\" and i + 1 < len(self.text):
                nxt = self.text[i + 1]
                out.append({"n": "\n", "t": "\t"}.get(nxt, nxt) if nxt in "nt\\'\"" else c + nxt)
                i += 2
                continue
            if c == quote:
                self.pos = i + 1
                return "".join(out)
            out.append(c)
            i += 1
        self.fail("the quoted value is not closed", at)
        raise AssertionError  # unreachable: fail raises

    # -- checks ------------------------------------------------------------------------------
    def _instant(self, expr: Expr, at: int, what: str = "this operator") -> None:
        if expr.kind == "range":
            self.fail(f"{what} needs an instant value, not a range: wrap it in a function such "
                      "as rate(...) or avg_over_time(...)", at)

    def _binary(self, op: str, lhs: Expr, rhs: Expr, at: int, bool_mod: bool = False) -> Expr:
        self._instant(lhs, at, f"'{op}'")
        self._instant(rhs, at, f"'{op}'")
        if lhs.kind == "vector" and rhs.kind == "vector":
            self.fail(f"'{op}' between two series selections is not supported: one side must be "
                      "a number (as in 100 - cpu_usage_idle, or x > 80)", at)
        if bool_mod and op not in COMPARISONS:
            self.fail("bool applies to comparisons only", at)
        if isinstance(lhs, Number) and isinstance(rhs, Number):
            if op in COMPARISONS:
                if not bool_mod:
                    self.fail("comparing two numbers needs the bool modifier (1 > bool 0)", at)
                return Number(1.0 if compare(op, lhs.value, rhs.value) else 0.0)
            return Number(arithmetic(op, lhs.value, rhs.value))
        return Binary(op, lhs, rhs, bool_mod)

