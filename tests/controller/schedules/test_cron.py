"""Cron fields: what parses, where a mistake is reported, and the next time an expression
matches — checked against a minute-by-minute reference over years of random expressions,
and across daylight-saving changes."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest

from controller.schedules.cron import Cron, CronError, parse_field

UTC = ZoneInfo("UTC")
ATHENS = ZoneInfo("Europe/Athens")  # clocks go forward 03:00 -> 04:00, back 04:00 -> 03:00


def ts(s: str, tz: ZoneInfo = UTC) -> float:
    return dt.datetime.fromisoformat(s).replace(tzinfo=tz).timestamp()


def local(t: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M %Z")


def test_fields_parse_lists_ranges_steps_and_names() -> None:
    assert parse_field("minute", "*/15")[0] == {0, 15, 30, 45}
    assert parse_field("minute", "5-10/2,30")[0] == {5, 7, 9, 30}
    assert parse_field("hour", "22/1")[0] == {22, 23}  # a/n: from a to the end
    assert parse_field("month_of_year", "jan,MAR-may")[0] == {1, 3, 4, 5}
    assert parse_field("day_of_week", "7")[0] == {0}  # 7 is Sunday too
    assert parse_field("day_of_week", "mon-fri")[0] == {1, 2, 3, 4, 5}
    assert parse_field("day_of_month", "*")[1] is True
    assert parse_field("day_of_month", "1,15")[1] is False


@pytest.mark.parametrize(("field", "text", "position", "words"), [
    ("minute", "61", 1, "out of range 0-59"),
    ("minute", "1,2,99", 5, "out of range"),
    ("hour", "5-3", 1, "runs backwards"),
    ("hour", "*/0", 3, "at least 1"),
    ("hour", "*/x", 3, "not a number"),
    ("day_of_month", "0", 1, "out of range 1-31"),
    ("month_of_year", "foo", 1, "jan-dec"),
    ("day_of_week", "1-funday", 3, "sun-sat"),
    ("minute", "1,,2", 3, "empty list item"),
    ("minute", "", 1, "empty"),
    ("minute", "1-", 3, "expected a number"),
])
def test_a_mistake_names_its_field_and_position(field: str, text: str, position: int,
                                                words: str) -> None:
    with pytest.raises(CronError) as e:
        parse_field(field, text)
    assert e.value.field == field and e.value.position == position
    assert words in e.value.reason


def test_an_expression_reports_positions_in_the_whole_line() -> None:
    with pytest.raises(CronError) as e:
        Cron.parse_expression("*/5 25 * * *")
    assert (e.value.field, e.value.position) == ("hour", 5)
    with pytest.raises(CronError) as e:
        Cron.parse_expression("0  0 * *  mon-xyz")
    assert (e.value.field, e.value.position) == ("day_of_week", 15)
    with pytest.raises(CronError) as e:
        Cron.parse_expression("* * * *")
    assert e.value.field == "expression" and "5 fields" in e.value.reason
    assert Cron.parse_expression("@daily") == Cron.parse_expression("0 0 * * *")


def _brute(c: Cron, after: float, tz: ZoneInfo, limit_minutes: int) -> float | None:
    """The reference: try every minute (on the UTC timeline), keep the first whose wall
    clock matches and that is the first occurrence of that wall-clock minute."""
    t = (int(after) // 60 + 1) * 60
    for _ in range(limit_minutes):
        w = dt.datetime.fromtimestamp(t, tz)
        if (w.minute in c.minutes and w.hour in c.hours and w.month in c.months
                and c.day_matches(w.date()) and w.fold == 0):
            return float(t)
        t += 60
    return None


def _random_field(rng: random.Random, low: int, high: int) -> str:
    pick = rng.random()
    if pick < 0.3:
        return "*"
    if pick < 0.45:
        return f"*/{rng.randint(2, 7)}"
    if pick < 0.7:
        return ",".join(str(rng.randint(low, high)) for _ in range(rng.randint(1, 3)))
    a = rng.randint(low, high)
    return f"{a}-{rng.randint(a, high)}" + (f"/{rng.randint(1, 3)}" if rng.random() < 0.5 else "")


def test_next_after_agrees_with_trying_every_minute() -> None:
    rng = random.Random(9)
    start = ts("2024-01-01T00:00:00")
    for _ in range(60):
        fields = {"minute": _random_field(rng, 0, 59), "hour": _random_field(rng, 0, 23),
                  "day_of_month": _random_field(rng, 1, 31) if rng.random() < 0.5 else "*",
                  "month_of_year": _random_field(rng, 1, 12) if rng.random() < 0.3 else "*",
                  "day_of_week": _random_field(rng, 0, 6) if rng.random() < 0.4 else "*"}
        c = Cron.parse(fields)
        after = start + rng.randint(0, 400) * 86400 + rng.random() * 86400
        got = c.next_after(after, UTC)
        assert got == _brute(c, after, UTC, 370 * 1440), fields


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    c = Cron.parse_expression("0 12 13 * fri")  # the 13th, or any Friday (Vixie cron)
    t = c.next_after(ts("2024-09-01T00:00:00"), UTC)
    assert local(t or 0, UTC) == "2024-09-06 12:00 UTC"  # a Friday before the 13th
    c = Cron.parse_expression("0 12 13 * *")
    assert local(c.next_after(ts("2024-09-01T00:00:00"), UTC) or 0, UTC) == "2024-09-13 12:00 UTC"


def test_an_impossible_date_has_no_next_time_and_leap_days_are_found() -> None:
    assert Cron.parse_expression("0 0 30 2 *").next_after(ts("2024-01-01T00:00:00"), UTC) is None
    t = Cron.parse_expression("0 0 29 2 *").next_after(ts("2024-03-01T00:00:00"), UTC)
    assert local(t or 0, UTC) == "2028-02-29 00:00 UTC"


def test_a_time_zone_moves_the_wall_clock_and_dst_never_runs_twice() -> None:
    c = Cron.parse_expression("30 9 * * *")
    t = c.next_after(ts("2024-06-01T00:00:00"), ATHENS)
    assert local(t or 0, ATHENS) == "2024-06-01 09:30 EEST" and local(t or 0, UTC).startswith(
        "2024-06-01 06:30")
    # spring forward (2024-03-31, 03:00 -> 04:00): 03:30 does not exist, it runs at 04:30
    gap = Cron.parse_expression("30 3 * * *").next_after(ts("2024-03-31T00:00:00", ATHENS),
                                                         ATHENS)
    assert local(gap or 0, ATHENS) == "2024-03-31 04:30 EEST"
    # fall back (2024-10-27, 04:00 -> 03:00): every 15 minutes runs once per wall-clock time
    every = Cron.parse_expression("*/15 3 * * *")
    t = ts("2024-10-27T02:59:00", ATHENS)
    seen = []
    while True:
        nxt = every.next_after(t, ATHENS)
        assert nxt is not None
        if nxt > ts("2024-10-27T05:00:00", ATHENS):
            break
        seen.append(dt.datetime.fromtimestamp(nxt, ATHENS).strftime("%H:%M"))
        t = nxt
    assert seen == ["03:00", "03:15", "03:30", "03:45"]
