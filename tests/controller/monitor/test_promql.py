"""The query language's parser: every construct it takes, the tree it makes, precedence as
PromQL's, and errors that name the query field and the position of the mistake."""

from __future__ import annotations

import math
import time

import pytest

from controller.errors import BadRequest
from controller.monitor.promql import (
    DEFAULT_RANGE_MS,
    Aggregate,
    Binary,
    Call,
    Matcher,
    Number,
    Selector,
    Unary,
    parse,
    parse_duration,
    selectors,
)


def test_selectors_with_every_matcher_and_quoting() -> None:
    assert parse("system_load1") == Selector("system_load1")
    assert parse("node:cpu:rate5m {}") == Selector("node:cpu:rate5m")
    e = parse('cpu{a="x", b!="y",c=~"z.*", d!~\'w|v\',}')
    assert e == Selector("cpu", (Matcher("a", "=", "x"), Matcher("b", "!=", "y"),
                                 Matcher("c", "=~", "z.*"), Matcher("d", "!~", "w|v")))
    assert parse(r'x{path="C:\\dir \"q\"\n"}') == Selector("x", (Matcher("path", "=", 'C:\\dir "q"\n'),))
    assert parse('x{a=~`\\d+`}') == Selector("x", (Matcher("a", "=~", "\\d+"),))
    assert parse(r'x{a=~"\d+"}') == Selector("x", (Matcher("a", "=~", r"\d+"),))  # kept for regexes


def test_matchers_match_like_prometheus() -> None:
    assert Matcher("a", "=~", "b.").matches("bc") and not Matcher("a", "=~", "b.").matches("xbc")
    assert Matcher("a", "!~", "b.").matches("xbc") and not Matcher("a", "!~", "b").matches("b")
    assert Matcher("a", "!=", "").matches("v") and Matcher("a", "=", "").matches("")
    # anchored at both ends around the whole alternation, "." across newlines: ^(?s:...)$
    assert Matcher("a", "=~", "x|y").matches("y") and not Matcher("a", "=~", "x|y").matches("xy")
    assert Matcher("a", "=~", "b.").matches("b\n")


def test_a_pathological_regex_is_matched_at_once() -> None:
    """(a+)+$ backtracks exponentially in Python's re, holding the GIL: 27 a's and a b take
    it ~3 s here, twice that with each a more. RE2 matches in time linear in the text."""
    dev, other = parse('x{dev=~"(a+)+$", other!~"(a|aa)+c"}').matchers
    for text in ("a" * 27 + "b", "a" * 100_000 + "b"):
        started = time.perf_counter()
        assert not dev.matches(text) and other.matches(text)
        assert time.perf_counter() - started < 0.5, len(text)


def test_range_selectors_and_durations() -> None:
    assert parse("rate(x[5m])") == Call("rate", Selector("x", (), 300_000))
    assert parse('rate(x{a="b"}[ 1h30m ])') == Call(
        "rate", Selector("x", (Matcher("a", "=", "b"),), 5_400_000))
    assert {d: parse_duration(d) for d in ("250ms", "10s", "1d", "1w", "1y", "5", "m", "")} == {
        "250ms": 250, "10s": 10_000, "1d": 86_400_000, "1w": 604_800_000, "1y": 31_536_000_000,
        "5": None, "m": None, "": None}


@pytest.mark.parametrize("func", ["rate", "irate", "increase", "avg_over_time", "min_over_time",
                                  "max_over_time", "sum_over_time", "count_over_time"])
def test_range_functions(func: str) -> None:
    assert parse(f'{func}(net_bytes_sent{{interface="eth0"}}[5m])') == Call(
        func, Selector("net_bytes_sent", (Matcher("interface", "=", "eth0"),), 300_000))
    assert parse(f"{func}((x[1m]))") == Call(func, Selector("x", (), 60_000))
    # without a range (Mist's documented rate(net_bytes_sent{...})): the default window
    assert parse(f'{func}(net_bytes_sent{{interface="eth0"}})') == Call(
        func, Selector("net_bytes_sent", (Matcher("interface", "=", "eth0"),), DEFAULT_RANGE_MS))
    assert DEFAULT_RANGE_MS == 300_000


def test_the_mist_specs_example_queries_parse() -> None:
    """../shared/reference/mist-openapi.yaml, GET /api/v2/datapoints, the query examples."""
    assert parse("system_load1") == Selector("system_load1")
    assert parse('rate(net_bytes_sent{interface="eth0", machine_id="1234"})') == Call(
        "rate", Selector("net_bytes_sent", (Matcher("interface", "=", "eth0"),
                                            Matcher("machine_id", "=", "1234")), 300_000))


@pytest.mark.parametrize("op", ["sum", "avg", "min", "max", "count"])
def test_aggregations_with_grouping_before_or_after(op: str) -> None:
    assert parse(f"{op}(x)") == Aggregate(op, Selector("x"))
    assert parse(f"{op} by (a, b,) (x)") == Aggregate(op, Selector("x"), ("a", "b"))
    assert parse(f"{op}(x) without (a)") == Aggregate(op, Selector("x"), ("a",), True)
    assert parse(f"{op} by () (rate(x[5m]))") == Aggregate(op, Call("rate", Selector("x", (), 300_000)))


def test_arithmetic_precedence_and_folding_as_promql() -> None:
    x = Selector("x")
    assert parse("100 - cpu_usage_idle") == Binary("-", Number(100.0), Selector("cpu_usage_idle"))
    assert parse("x * 2 + 1") == Binary("+", Binary("*", x, Number(2.0)), Number(1.0))
    assert parse("1 + x * 2") == Binary("+", Number(1.0), Binary("*", x, Number(2.0)))
    assert parse("(1 + x) * 2") == Binary("*", Binary("+", Number(1.0), x), Number(2.0))
    assert parse("x - 1 - 2") == Binary("-", Binary("-", x, Number(1.0)), Number(2.0))
    assert parse("x / 1024 / 1024 % 7") == Binary(
        "%", Binary("/", Binary("/", x, Number(1024.0)), Number(1024.0)), Number(7.0))
    assert parse("x ^ 2 ^ 3") == Binary("^", x, Number(8.0))  # right-associative, folded
    assert parse("-2 ^ 2") == Number(-4.0)  # ^ binds tighter than unary minus
    assert parse("x * (1024 * 1024)") == Binary("*", x, Number(1048576.0))
    assert parse("-x") == Unary(x) and parse("+x") == x and parse("- -x") == Unary(Unary(x))
    assert parse("x / 0.5e1") == Binary("/", x, Number(5.0))
    assert parse("1 / 0 * x") == Binary("*", Number(math.inf), x)
    assert parse("x > Inf") == Binary(">", x, Number(math.inf))


def test_comparisons_filter_or_take_bool() -> None:
    x = Selector("x")
    for op in ("==", "!=", ">", "<", ">=", "<="):
        assert parse(f"x {op} 80") == Binary(op, x, Number(80.0))
    assert parse("x > bool 80") == Binary(">", x, Number(80.0), bool_mod=True)
    assert parse("100 - x > 80") == Binary(">", Binary("-", Number(100.0), x), Number(80.0))
    assert parse("2 > bool 1") == Number(1.0) and parse("1 == bool 2") == Number(0.0)
    assert parse("avg by (machine_id) (rate(x[5m])) > 0.5") == Binary(
        ">", Aggregate("avg", Call("rate", Selector("x", (), 300_000)), ("machine_id",)), Number(0.5))


def test_selectors_lists_every_selector() -> None:
    assert selectors(parse("sum(rate(a[5m])) * 2")) == [Selector("a", (), 300_000)]
    assert selectors(parse("-(a > 1)")) == [Selector("a")]


@pytest.mark.parametrize(("query", "position", "words"), [
    ("", None, "required"),
    ("   ", None, "required"),
    ("1abc", 1, "duration"),
    ("cpu{", 5, "label name"),
    ('cpu{a="b"', 10, "'}'"),
    ("cpu{a=b}", 7, "quoted"),
    ('cpu{a="b}', 7, "not closed"),
    ('cpu{a=~"("}', 5, "regular expression"),
    ('cpu{a~"b"}', 6, "=, !=, =~ or !~"),
    ('cpu{"a"="b"}', 5, "label name"),
    ('cpu{a="b" c="d"}', 11, "','"),
    ('cpu{a="b"} extra', 12, "unexpected 'extra'"),
    ("{a=\"b\"}", 1, "metric name"),
    ("rate(1)", 6, "range selector"),
    ("rate(cpu > 1)", 6, "range selector"),
    ('cpu{a=~"(?=b)"}', 5, "RE2"),  # look-ahead: not in RE2's (Prometheus's) syntax
    ('cpu{a=~"(a)\\1"}', 5, "RE2"),  # back-references neither
    ("rate(cpu[5m] + 1)", 14, "instant value"),
    ("rate(sum(cpu[5m]))", 10, "instant value"),
    ("cpu[5m]", 1, "instant value"),
    ("sum(cpu[5m])", 5, "instant value"),
    ("cpu[5]", 5, "duration"),
    ("cpu[]", 5, "duration"),
    ("cpu[5m", 7, "']'"),
    ("(cpu)[5m]", 6, "metric selector only"),
    ("histogram_quantile(0.9, x)", 1, "unknown function histogram_quantile()"),
    ("topk(3, x)", 1, "unknown function topk()"),
    ("cpu + mem", 5, "one side must be a number"),
    ("sum(a) / sum(b)", 8, "one side must be a number"),
    ("1 > 2", 3, "bool"),
    ("x + bool 1", 5, "unexpected 'bool'"),
    ("sum by (a) (x) by (b)", 16, "grouped twice"),
    ("sum by (a b) (x)", 11, "','"),
    ("sum by a (x)", 8, "'('"),
    ("x offset 5m", 3, "unexpected 'offset'"),
    ("(x", 3, "')'"),
    ("x +", 4, "end of the query"),
    ("x & 1", 3, "unexpected '&'"),
    ("1 + 1", None, None),  # parses (a number): refused when evaluated, not here
])
def test_errors_name_the_field_and_the_position(query: str, position: int | None,
                                                words: str | None) -> None:
    if words is None:
        assert parse(query) == Number(2.0)
        return
    with pytest.raises(BadRequest) as e:
        parse(query)
    assert e.value.details["field"] == "query"
    assert words in e.value.message, e.value.message
    if position is not None:
        assert e.value.details["position"] == position, e.value.message
        assert e.value.message.endswith(f"at position {position}")


def test_a_query_over_the_length_limit_is_refused() -> None:
    with pytest.raises(BadRequest) as e:
        parse("x" * 4001)
    assert e.value.details["field"] == "query" and "4000" in e.value.message
