"""A rule's metric target: its regex matchers run on RE2 (linear time) in the evaluator's
thread, so a pathological pattern cannot stall every organisation's rules."""

from __future__ import annotations

import time

import pytest

from controller.errors import BadRequest
from controller.rules.target import parse_metric


def test_a_backtracking_pattern_matches_in_linear_time() -> None:
    t = parse_metric('cpu_usage_active{path=~"(a+)+$"}')
    label = {"path": "a" * 26 + "b"}  # Python's re backtracks for seconds here (2**26 ways)
    started = time.monotonic()
    assert not t.matches(label)
    assert time.monotonic() - started < 0.5
    assert t.matches({"path": "aaaa"})
    assert not parse_metric('x{path!~"(a+)+$"}').matches({"path": "aaaa"})


def test_matchers_are_anchored_and_dot_matches_newlines_as_in_promql() -> None:
    t = parse_metric('x{cpu=~"cpu.*"}')
    assert t.matches({"cpu": "cpu-total"}) and not t.matches({"cpu": "my-cpu"})
    assert parse_metric('x{l=~"a.b"}').matches({"l": "a\nb"})


def test_a_pattern_re2_does_not_take_is_refused_naming_the_field() -> None:
    with pytest.raises(BadRequest) as e:
        parse_metric('x{path=~"(?=a)b"}', "conditions[0].query.target")
    assert e.value.status == 400 and e.value.details["field"] == "conditions[0].query.target"
    assert "RE2" in e.value.message
