"""Users' regular expressions, matched in time linear in the text (RE2), for PromQL's ``=~``
and ``!~``, rules' and schedules' ``field`` selectors.

Python's ``re`` backtracks: ``(a+)+$`` against ``"aaa…ab"`` takes exponential time, holding
the GIL, so one such pattern in a query, a rule evaluated every second or a schedule stalls
the whole controller. RE2 (``google-re2``, Google's binding) never backtracks. Its syntax is
Prometheus's (Go's regexp is RE2): no look-around, no back-references, no possessive
quantifiers; a pattern it does not take is refused with a 400 naming the field.

:func:`compile` checks a pattern a user sends (BadRequest naming ``field``); :func:`stored`
compiles one read back from the store (one saved before this check existed may not compile:
it then matches nothing, and a warning is logged once)."""

from __future__ import annotations

import functools
import logging

import re2

from controller.errors import BadRequest

log = logging.getLogger(__name__)

MAX_PATTERN = 4000  # characters; as long as a whole query may be (promql.MAX_QUERY)
# RE2's memory for one compiled pattern (its default): a pattern that needs more, such as
# a{1000}{1000}, fails to compile instead of growing
MAX_MEM = 8 << 20

# The binding's low-level object: a match is one call into C++ with the text as UTF-8. The
# module-level API (re2.compile) builds a Match object and maps byte offsets back to
# characters on every call, ~5x slower, and every label of every selected series is matched.
_RE2 = re2._re2.RE2  # noqa: SLF001
_ANCHOR_BOTH = _RE2.Anchor.ANCHOR_BOTH
_UNANCHORED = _RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


class Regex:
    """A compiled pattern. ``search``: anywhere in the text (as ``re.search``);
    ``fullmatch``: the whole text (as PromQL's anchored matchers). Thread-safe."""

    __slots__ = ("pattern", "_re")

    def __init__(self, pattern: str, compiled: object) -> None:
        self.pattern = pattern
        self._re: object = compiled

    def _hit(self, anchor: object, text: str) -> bool:
        b = text.encode("utf-8", "surrogatepass")
        span = self._re.Match(anchor, b, 0, len(b))  # type: ignore[attr-defined]
        return bool(span[0] != _NO_MATCH)

    def search(self, text: str) -> bool:
        return self._hit(_UNANCHORED, text)

    def fullmatch(self, text: str) -> bool:
        return self._hit(_ANCHOR_BOTH, text)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def compile(pattern: str, field: str, *, dot_all: bool = False) -> Regex:  # noqa: A001
    """``pattern`` compiled; BadRequest (400, ``details.field`` = ``field``) if it is too long
    or not a pattern RE2 takes. ``dot_all``: ``.`` matches a newline too (PromQL's
    ``(?s:...)``)."""
    if not isinstance(pattern, str):
        raise BadRequest(f"{field} must be a regular expression (text)", field=field)
    if len(pattern) > MAX_PATTERN:
        raise BadRequest(f"{field}: the regular expression is longer than {MAX_PATTERN} "
                         "characters", field=field)
    try:
        return _compile(pattern, dot_all)
    except ValueError as exc:
        raise BadRequest(f"{field}: {exc} (RE2 syntax, as Prometheus: no look-ahead, "
                         "look-behind or back-references)", field=field) from None


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str, dot_all: bool) -> Regex:
    """Raises ValueError with RE2's reason."""
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the regular expression is not valid text") from None
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print every refused pattern on stderr
    opts.never_capture = True  # only "does it match": no groups to track
    opts.max_mem = MAX_MEM
    opts.dot_nl = dot_all
    compiled = _RE2(encoded, opts)
    if not compiled.ok():
        reason = compiled.error()
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a regular expression RE2 accepts: {reason}")
    return Regex(pattern, compiled)


@functools.lru_cache(maxsize=1024)
def stored(pattern: str, *, dot_all: bool = False) -> Regex | None:
    """A pattern read back from the store, compiled; None (matches nothing) if it does not
    compile, with a warning logged once."""
    try:
        return compile(pattern, "pattern", dot_all=dot_all)
    except BadRequest as exc:
        log.warning("a stored regular expression %r cannot be used (it matches nothing): %s",
                    pattern[:100], exc.message)
        return None
