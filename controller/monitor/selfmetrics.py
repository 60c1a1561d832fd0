"""The controller's own metrics, served at ``/metrics`` in the Prometheus text exposition
format (version 0.0.4). Any module registers into the one :class:`SelfMetrics` of the
process (``services.selfmetrics``)::

    evals = services.selfmetrics.counter("overcast_rule_evaluations_total",
                                         "Rule evaluations", ("outcome",))
    evals.inc(outcome="ok")
    took = services.selfmetrics.histogram("overcast_rule_cycle_seconds", "One rules cycle")
    took.observe(0.12)
    services.selfmetrics.gauge_fn("overcast_rules", "Rules", lambda: {(): len(rules)})

Registering a name again with the same type and labels returns the same metric (a callback
is replaced), so a restartable component may register on each start; anything else raises
ValueError. Values
may be updated from any thread. No third-party client library: the format is a few lines of
text, and prometheus_client's process-global default registry is what this avoids."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]
# seconds: from a fast local call to a slow cloud API
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class _Metric:
    kind: Kind

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes the labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[k]) for k in self.labels)

    def samples(self) -> Iterable[tuple[str, LabelValues, tuple[tuple[str, str], ...], float]]:
        """(name suffix, label values, extra labels, value) of each sample."""
        raise NotImplementedError


class Counter(_Metric):
    kind: Kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        super().__init__(name, help, labels)
        # without labels there is one series: 0 until it changes (as Prometheus clients do)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError(f"{self.name} is a counter: it only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[tuple[str, LabelValues, tuple[tuple[str, str], ...], float]]:
        with self._lock:
            items = list(self._values.items())
        return [("", k, (), v) for k, v in items]


class Gauge(Counter):
    kind: Kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind: Kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"{name}: buckets must be increasing")
        self.buckets = tuple(float(b) for b in buckets if b != math.inf)
        self._counts: dict[LabelValues, list[int]] = {}  # per bucket, then +Inf
        self._sums: dict[LabelValues, float] = {}
        if not labels:
            self._counts[()] = [0] * (len(self.buckets) + 1)
            self._sums[()] = 0.0

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
                self._sums[key] = 0.0
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self._sums[key] += value

    def count(self, **labels: object) -> int:
        return sum(self._counts.get(self._key(labels), []))

    def samples(self) -> Iterable[tuple[str, LabelValues, tuple[tuple[str, str], ...], float]]:
        with self._lock:
            items = [(k, list(c), self._sums[k]) for k, c in self._counts.items()]
        out: list[tuple[str, LabelValues, tuple[tuple[str, str], ...], float]] = []
        for key, counts, total in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                out.append(("_bucket", key, (("le", _number(bound)),), float(running)))
            out.append(("_sum", key, (), total))
            out.append(("_count", key, (), float(running)))
        return out


class _Callback(_Metric):
    """A counter or gauge read when scraped: ``fn`` returns label values -> value."""

    def __init__(self, name: str, help: str, labels: Sequence[str], kind: Kind,
                 fn: Callable[[], Mapping[LabelValues, float]]) -> None:
        super().__init__(name, help, labels)
        self.kind = kind
        self.fn = fn

    def samples(self) -> Iterable[tuple[str, LabelValues, tuple[tuple[str, str], ...], float]]:
        out = []
        for key, value in self.fn().items():
            if len(key) != len(self.labels):
                raise ValueError(f"{self.name}: {key} does not match the labels {self.labels}")
            out.append(("", tuple(str(k) for k in key), (), float(value)))
        return out


class SelfMetrics:
    """The registry: metrics by name, rendered in name order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _register(self, metric: _Metric) -> _Metric:
        with self._lock:
            old = self._metrics.get(metric.name)
            if old is None:
                self._metrics[metric.name] = metric
                return metric
        if type(old) is type(metric) and old.labels == metric.labels and old.kind == metric.kind:
            if isinstance(old, _Callback) and isinstance(metric, _Callback):
                old.fn = metric.fn  # the newer reader wins
            return old
        raise ValueError(f"the metric {metric.name} is already registered differently")

    def __contains__(self, name: str) -> bool:
        return name in self._metrics

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        m = self._register(Counter(name, help, labels))
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        m = self._register(Gauge(name, help, labels))
        assert isinstance(m, Gauge)
        return m

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        m = self._register(Histogram(name, help, labels, buckets))
        assert isinstance(m, Histogram)
        return m

    def gauge_fn(self, name: str, help: str, fn: Callable[[], Mapping[LabelValues, float]],
                 labels: Sequence[str] = ()) -> None:
        """A gauge whose values ``fn`` returns when scraped (label values -> value)."""
        self._register(_Callback(name, help, labels, "gauge", fn))

    def counter_fn(self, name: str, help: str, fn: Callable[[], Mapping[LabelValues, float]],
                   labels: Sequence[str] = ()) -> None:
        """A counter kept elsewhere (a total since the start), read when scraped."""
        self._register(_Callback(name, help, labels, "counter", fn))

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def render(self) -> str:
        """The exposition text. A callback that fails leaves its metric out (and says so in
        a comment) instead of failing the scrape."""
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        lines: list[str] = []
        for m in metrics:
            try:
                samples = list(m.samples())
            except Exception as exc:
                lines.append(f"# {m.name} not collected: {type(exc).__name__}")
                continue
            lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for suffix, key, extra, value in sorted(samples, key=_order):
                pairs = [*zip(m.labels, key, strict=True), *extra]
                text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs)
                lines.append(f"{m.name}{suffix}{{{text}}} {_number(value)}" if text
                             else f"{m.name}{suffix} {_number(value)}")
        return "\n".join(lines) + "\n"


def _order(sample: tuple[str, LabelValues, tuple[tuple[str, str], ...], float]) -> tuple[LabelValues, int]:
    # a histogram's series together (buckets in order, then _sum, _count)
    suffix, key, _, _ = sample
    return key, {"_bucket": 0, "_sum": 1, "_count": 2}.get(suffix, 0)


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
