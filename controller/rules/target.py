"""What a condition's ``target`` names: for metrics a metric name with optional Prometheus
label matchers (``cpu_usage_active{cpu="cpu-total"}``; Mist's names such as
``load.shortterm`` are read as their equivalents), for logs a search over audit entries in the
list endpoints' syntax (``action:machine.destroy``; Mist's ``type:request and
action:destroy_machine`` works too)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from controller import safe_regex
from controller.errors import Invalid
from controller.listing import Search, parse_search
from controller.rules.model import MIST_METRICS

_METRIC = re.compile(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|\})')
# Mist's action names (verb_kind) -> ours (kind.verb)
_MIST_ACTION = re.compile(r"\baction:([a-z]+)_(machine|volume|network|cloud|key|script|zone|"
                          r"record|subnet|schedule|rule|tunnel)\b")
_WORD_OPS = re.compile(r"(?<![\w\"])(and|or)(?![\w\"])")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.label, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        rx = safe_regex.stored(self.value, dot_all=True)  # RE2: linear time, never stalls
        hit = rx is not None and rx.fullmatch(v)
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class MetricTarget:
    metric: str
    matchers: tuple[Matcher, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def __str__(self) -> str:
        if not self.matchers:
            return self.metric
        inner = ",".join(f'{m.label}{m.op}"{m.value}"' for m in self.matchers)
        return f"{self.metric}{{{inner}}}"


def parse_metric(target: str, field: str = "target") -> MetricTarget:
    """``metric`` or ``metric{label="v", label!="v", label=~"re", label!~"re"}``; Invalid
    naming ``field`` otherwise."""
    text = MIST_METRICS.get(target.strip(), target)
    m = _METRIC.match(text)
    if not m or len(text) > 2000:
        raise Invalid(f"{field} must be a metric name with optional {{label=\"value\"}} matchers, "
                      f"not {target[:60]!r}", field=field)
    pos = m.end()
    matchers: list[Matcher] = []
    if pos < len(text) and text[pos] == "{":
        pos += 1
        if text[pos:].lstrip().startswith("}"):
            pos = text.index("}", pos) + 1
        else:
            while True:
                mm = _MATCHER.match(text, pos)
                if not mm:
                    raise Invalid(f"{field}: bad label matcher at position {pos + 1} (write "
                                  "label=\"value\"; also !=, =~ and !~)", field=field)
                value = re.sub(r"\\(.)", r"\1", mm.group(3))
                if mm.group(2) in ("=~", "!~"):
                    safe_regex.compile(value, field, dot_all=True)  # 400 naming the field
                matchers.append(Matcher(mm.group(1), mm.group(2), value))
                pos = mm.end()
                if mm.group(4) == "}":
                    break
    if text[pos:].strip():
        raise Invalid(f"{field}: unexpected {text[pos:].strip()[:20]!r} after the metric (a rule "
                      "reads one metric; functions are not supported here)", field=field)
    return MetricTarget(m.group(1), tuple(matchers))


def parse_logs(target: str, field: str = "target") -> Search:
    """A search over audit entries; Mist's lower-case ``and``/``or`` and ``verb_kind`` action
    names are accepted."""
    text = _MIST_ACTION.sub(lambda m: f"action:{m.group(2)}.{m.group(1)}", target.strip())
    text = _WORD_OPS.sub(lambda m: m.group(1).upper(), text)
    if not text:
        raise Invalid(f"{field} must say which entries count, e.g. action:machine.destroy",
                      field=field)
    try:
        return parse_search(text)
    except Invalid as exc:
        raise Invalid(f"{field}: {exc.message}", field=field) from None
