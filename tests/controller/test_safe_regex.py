"""Users' regular expressions in linear time: a pattern that makes Python's ``re`` backtrack
for ever is answered at once wherever users' patterns run (the helper itself, rules' field
selectors in the evaluator thread, schedules' field selectors); patterns RE2 does not take
are refused with a 400 naming the field; one stored before that check matches nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller import safe_regex
from controller.errors import BadRequest
from controller.rules.select import OrgMachines
from controller.rules.select import select as rule_select
from controller.schedules.selectors import matches as schedule_matches

# (a+)+$ against 27 a's and a b: ~3 s in Python's re here, twice as long with each a more
EVIL = "(a+)+$"
SHORT = "a" * 27 + "b"
LONG = "a" * 100_000 + "b"


def quick(fn: Any) -> Any:
    started = time.perf_counter()
    out = fn()
    assert time.perf_counter() - started < 0.5
    return out


def test_a_pathological_pattern_is_answered_at_once() -> None:
    rx = safe_regex.compile(EVIL, "value")
    for text in (SHORT, LONG):
        assert quick(lambda text=text: rx.search(text)) is False
        assert quick(lambda text=text: rx.fullmatch(text)) is False
    assert rx.search("xaa") and rx.fullmatch("aaa") and not rx.fullmatch("xaa")


def test_search_and_fullmatch_as_re_and_promql_have_them() -> None:
    assert safe_regex.compile("^web-[0-9]+", "f").search("web-12.example")
    assert not safe_regex.compile("web$", "f").search("web-1")
    assert safe_regex.compile("é+", "f").fullmatch("éé")  # text, not bytes
    assert not safe_regex.compile("a.b", "f").fullmatch("a\nb")
    assert safe_regex.compile("a.b", "f", dot_all=True).fullmatch("a\nb")


@pytest.mark.parametrize(("pattern", "words"), [
    ("(?=x)", "RE2"),  # look-ahead
    ("(?<=x)y", "RE2"),  # look-behind
    (r"(a)\1", "RE2"),  # a back-reference
    ("(", "missing )"),
    ("a{1001}", "RE2"),  # RE2 repeats at most 1000 times
    ("x" * 4001, "longer than 4000"),
])
def test_patterns_re2_does_not_take_are_refused_naming_the_field(pattern: str, words: str) -> None:
    with pytest.raises(BadRequest) as e:
        safe_regex.compile(pattern, "selectors[2].value")
    assert e.value.status == 400 and e.value.details == {"field": "selectors[2].value"}
    assert words in e.value.message and e.value.message.startswith("selectors[2].value: ")


def test_a_stored_pattern_that_no_longer_compiles_matches_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    assert safe_regex.stored("(?=old)") is None
    assert "cannot be used" in caplog.text
    assert safe_regex.stored("ok.*") is not None


def test_rule_field_selectors_run_in_linear_time() -> None:
    """controller/rules/select.py: every second in the evaluator thread."""
    machines = OrgMachines("o1")
    machines.docs = {"m1": {"name": SHORT}, "m2": {"name": LONG}, "m3": {"name": "aaa"}}
    sel = [{"type": "field", "field": "name", "operator": "regex", "value": EVIL}]
    assert quick(lambda: rule_select(machines, sel, {"m1", "m2", "m3"}, 0.0)) == {"m3"}
    bad = [{"type": "field", "field": "name", "operator": "regex", "value": "(?=a)"}]
    assert rule_select(machines, bad, {"m1", "m3"}, 0.0) == set()


def test_schedule_field_selectors_run_in_linear_time() -> None:
    """controller/schedules/selectors.py: at each run, on the scheduler's thread."""
    sel = [{"type": "field", "field": "name", "operator": "regex", "value": EVIL}]
    for text in (SHORT, LONG):
        assert quick(lambda text=text: schedule_matches({"id": "m", "name": text}, sel, 0.0)) is False
    assert schedule_matches({"id": "m", "name": "xaaa"}, sel, 0.0)
