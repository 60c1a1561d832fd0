"""Cron expressions: the five fields of a crontab schedule parsed with the place of any
mistake, and the next time they match, on the wall clock of a time zone.

Each field is a list (``,``) of ``*``, a number, a name (``jan``-``dec``, ``sun``-``sat``), a
range ``a-b``, any of those with a step ``/n``, or ``a/n`` (from a to the end, every n).
Day of week 0 and 7 are Sunday. As in Vixie cron, when both day of month and day of week are
restricted (neither starts with ``*``), a day matches when either does.

Time zones: a wall-clock time that does not exist (the hour skipped when clocks go forward)
runs when that time would have been, had the clocks not changed (an hour later on the new
wall clock); a time that happens twice (clocks going back) runs once, the first time. So no
expression ever runs twice for one wall-clock minute."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

# (name, low, high) in the order of a cron line
FIELDS: tuple[tuple[str, int, int], ...] = (
    ("minute", 0, 59), ("hour", 0, 23), ("day_of_month", 1, 31), ("month_of_year", 1, 12),
    ("day_of_week", 0, 7))
NAMES = tuple(f[0] for f in FIELDS)
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
SEARCH_YEARS = 9  # Feb 29 on a given weekday... a leap day is at most 8 years away (2096->2104)
MAX_FIELD = 200


class CronError(ValueError):
    """A field is wrong: ``field`` names it, ``position`` is the 1-based character where the
    mistake starts (in the field's text, or in the whole expression when one was given)."""

    def __init__(self, field: str, position: int, message: str) -> None:
        super().__init__(f"{field}: {message} (at position {position})")
        self.field = field
        self.position = position
        self.reason = message


def _value(field: str, text: str, pos: int, low: int, high: int) -> int:
    names = _MONTHS if field == "month_of_year" else _DAYS if field == "day_of_week" else {}
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit() or len(text) > 4:
        hint = (" (or jan-dec)" if field == "month_of_year"
                else " (or sun-sat)" if field == "day_of_week" else "")
        shown = text if text else "nothing"
        raise CronError(field, pos, f"{shown!r} is not a number{hint}" if text
                        else f"expected a number{hint}, found {shown}")
    n = int(text)
    if not low <= n <= high:
        raise CronError(field, pos, f"{n} is out of range {low}-{high}")
    return n


def parse_field(field: str, text: str) -> tuple[frozenset[int], bool]:
    """(the values ``text`` allows, whether it starts with ``*``); CronError otherwise."""
    low, high = {f[0]: (f[1], f[2]) for f in FIELDS}[field]
    if not text.strip():
        raise CronError(field, 1, "is empty")
    if len(text) > MAX_FIELD:
        raise CronError(field, MAX_FIELD + 1, f"is longer than {MAX_FIELD} characters")
    if text != text.strip():
        raise CronError(field, 1, "has spaces around it")
    out: set[int] = set()
    pos = 1
    for item in text.split(","):
        if not item:
            raise CronError(field, pos, "has an empty list item (two commas, or one at an end)")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step_pos = pos + len(base) + 1
            if not step_text.isdigit():
                raise CronError(field, step_pos, f"the step {step_text!r} is not a number"
                                if step_text else "a step needs a number after /")
            step = int(step_text[:6])
            if step < 1:
                raise CronError(field, step_pos, "the step must be at least 1")
        if base == "*":
            first, last = low, high
        else:
            a, dash, b = base.partition("-")
            first = _value(field, a, pos, low, high)
            last = _value(field, b, pos + len(a) + 1, low, high) if dash else (
                high if slash else first)
            if last < first:
                raise CronError(field, pos, f"the range {base} runs backwards")
        out.update(range(first, last + 1, step))
        pos += len(item) + 1
    if field == "day_of_week" and 7 in out:
        out = (out - {7}) | {0}
    return frozenset(out), text.startswith("*")


def split_expression(expr: str) -> dict[str, str]:
    """The five fields of a one-line expression (or a @macro); CronError with the position
    in the whole line."""
    line = MACROS.get(expr.strip().lower(), expr)
    parts: list[tuple[int, str]] = []
    i = 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        j = i
        while j < len(line) and not line[j].isspace():
            j += 1
        parts.append((i + 1, line[i:j]))
        i = j
    if len(parts) != 5:
        where = parts[5][0] if len(parts) > 5 else len(line) + 1
        raise CronError("expression", where, f"needs 5 fields (minute hour day-of-month month "
                        f"day-of-week), found {len(parts)}")
    return {name: text for name, (_, text) in zip(NAMES, parts, strict=True)}


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool     # day of month starts with *
    any_weekday: bool  # day of week starts with *

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Cron:
        """From the five named fields (text); CronError naming the first bad one."""
        got = {}
        for name in NAMES:
            got[name] = parse_field(name, fields[name])
        return cls(tuple(sorted(got["minute"][0])), got["hour"][0], got["day_of_month"][0],
                   got["month_of_year"][0], got["day_of_week"][0], got["day_of_month"][1],
                   got["day_of_week"][1])

    @classmethod
    def parse_expression(cls, expr: str) -> Cron:
        """From one line; CronError positions count in the line."""
        line = MACROS.get(expr.strip().lower(), expr)
        fields = split_expression(expr)
        starts = _starts(line)
        try:
            return cls.parse(fields)
        except CronError as exc:
            at = starts[NAMES.index(exc.field)] + exc.position - 1
            raise CronError(exc.field, at, exc.reason) from None

    def day_matches(self, d: dt.date) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, ts: float, tz: ZoneInfo) -> float | None:
        """The first matching instant strictly after ``ts`` (seconds since the epoch), or
        None when there is none within SEARCH_YEARS (Feb 30, say)."""
        local = dt.datetime.fromtimestamp(ts, tz).replace(tzinfo=None, second=0, microsecond=0)
        t = local + dt.timedelta(minutes=1)
        last_year = t.year + SEARCH_YEARS
        while t.year <= last_year:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
                continue
            if not self.day_matches(t.date()):
                t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
                continue
            minute = next((m for m in self.minutes if m >= t.minute), None)
            if minute is None:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
                continue
            t = t.replace(minute=minute)
            # fold=0: a repeated time is its first occurrence; a skipped one maps past the gap
            at = t.replace(tzinfo=tz).timestamp()
            if at > ts:
                return at
            t += dt.timedelta(minutes=1)  # the first occurrence of a repeated hour is past
        return None


def _starts(line: str) -> list[int]:
    """1-based start of each whitespace-separated field of ``line``."""
    out = []
    prev_space = True
    for i, ch in enumerate(line):
        if not ch.isspace() and prev_space:
            out.append(i + 1)
        prev_space = ch.isspace()
    return out


def expression(fields: Mapping[str, str]) -> str:
    return " ".join(fields[n] for n in NAMES)
