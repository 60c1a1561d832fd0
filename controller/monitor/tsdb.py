"""An embedded time-series store on the state store.

A series is a metric name plus labels (one of them ``machine_id``), interned to a short id.
Keys: ``ts/<sid:8 hex>/<time_ms:12 hex>`` → the value as a big-endian double, so one series'
samples are contiguous and in time order; ``tsidx/<org>/<metric>/<sid>`` finds the series of
a metric; ``tsmeta/<sid>`` holds its labels. Samples are written in batches (the ingest path
groups many agents' batches into one write); a sample at the same time overwrites, so
replaying a batch stores nothing twice. Raw samples are kept ``retention`` seconds; rolled-up
buckets (:mod:`controller.monitor.rollup`) longer. A sample stored more than ``LATE_MS``
after its time (an agent's spool, replayed after it reconnects) leaves a mark
``tslate/<sid>/<hour_ms>`` in the same batch, so the compaction task rolls that hour up again."""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain

from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

_DOUBLE = struct.Struct(">d")
NEXT_SID_KEY = "meta/tsdb/next_sid"
KEYED_MARK = "meta/tsdb/keyed"  # the series index is in the store (tskey/, tsmetric/)
LATE_PREFIX = "tslate/"
# A sample is late when stored this long after its time; the compaction task rolls up only
# minutes that ended longer ago than that (compact.ROLL_DELAY), so a sample that is not late
# was stored before the run that rolls up its minute reads it.
LATE_MS = 60_000
_HOUR_MS = 3_600_000
# read_after reads forward from this long before its range (agents sample every 10 s), where
# the sample before it most often is, instead of seeking back to it
NEAR_MS = 30_000
_chain = chain.from_iterable
# What one query may use (the settings query_max_samples and query_timeout; see
# controller/monitor/source.py, Budget): reading a sample takes ~0.5 us here (a raw sample
# 0.53, a 1-minute bucket 0.35, measured on the 2-core benchmark machine), so 20 million
# are ~10 s of reading, ~15 s with the evaluation, in a worker thread that cannot be cancelled
QUERY_MAX_SAMPLES = 20_000_000
QUERY_TIMEOUT = 30.0  # seconds


@dataclass(frozen=True)
class Series:
    sid: int
    org: str
    metric: str
    labels: Mapping[str, str]


def series_prefix(sid: int) -> str:
    return f"ts/{sid:08x}/"


def sample_key(sid: int, t_ms: int) -> str:
    return f"ts/{sid:08x}/{t_ms:012x}"


def late_key(sid: int, hour_ms: int) -> str:
    return f"{LATE_PREFIX}{sid:08x}/{hour_ms:012x}"


def late_before() -> int:
    """Samples before this time (ms) are late if stored now."""
    return int(time.time() * 1000) - LATE_MS


class TSDB:
    """The series index lives in the store, with a bounded cache in memory.

    ``tskey/<series key as JSON>`` -> sid finds a series by ``(org, metric, k1, v1, ...)``
    (labels sorted by name); ``tsmeta/<sid>`` has its labels; ``tsidx/<org>/<metric>/<sid>``
    lists a metric's series; ``tsmetric/<org>/<metric>`` lists the metrics (the only part
    kept whole in memory: a few hundred entries). With ~100 series per agent, 10,000 agents
    make a million series: a full in-memory index cost ~185 MiB there. Agents name their
    series once per stream (compact batches, :meth:`sid_for`), so those lookups go to the
    store and are not cached. Agents that send every sample with its labels (before the
    compact form, :meth:`add`) look up every sample: those lookups are cached, up to
    ``CACHE`` series; a fuller cache is emptied after a write. Series made for a batch that
    is not written yet are in ``_pending`` until :meth:`settle`."""

    CACHE = 262_144

    def __init__(self, store: Store) -> None:
        self.store = store
        # the limits of one query (set from the settings when the controller starts)
        self.query_max_samples = QUERY_MAX_SAMPLES
        self.query_timeout = QUERY_TIMEOUT
        self._ids: dict[tuple[str, ...], int] = {}  # series key -> sid, for add()
        self._pending: dict[tuple[str, ...], int] = {}  # made, not yet written
        self._metrics: set[tuple[str, str]] = set()
        raw = store.get(NEXT_SID_KEY)
        self._next = int(raw) if raw else 1
        if not store.read_only and store.get(KEYED_MARK) is None:
            self._index_old_series()
        for key, _ in store.scan("tsmetric/", keys_only=True):
            org, _, metric = key[len("tsmetric/"):].partition("/")
            self._metrics.add((org, metric))

    def _index_old_series(self) -> None:
        """Series written before the store kept the index: add tskey/ and tsmetric/ once."""
        batch = Batch()
        n = 0
        for key, value in self.store.scan("tsmeta/"):
            meta = json.loads(value)
            skey = _series_key(meta["org"], meta["metric"], meta["labels"])
            batch.put(_key_of(skey), key.rsplit("/", 1)[1].encode())
            batch.put(f"tsmetric/{meta['org']}/{meta['metric']}", b"")
            n += 1
            if len(batch.puts) >= 20_000:
                self.store.write(batch)
                batch = Batch()
        batch.put(KEYED_MARK, b"1")
        self.store.write(batch)
        if n:
            log.info("indexed %d time series in the store", n)

    def _lookup(self, key: tuple[str, ...]) -> int | None:
        """For :meth:`add`: cached."""
        sid = self._ids.get(key)
        if sid is None:
            sid = self._stored(key)
            if sid is not None:
                self._ids[key] = sid
        return sid

    def _stored(self, key: tuple[str, ...]) -> int | None:
        sid = self._pending.get(key)
        if sid is None:
            raw = self.store.get(_key_of(key))
            if raw is not None:
                sid = int(raw, 16)
        return sid

    def settle(self, written: bool) -> None:
        """After the ingest path wrote (or failed to write) its batch: the series it made are
        in the store now (or, not written, forgotten); a full cache is emptied."""
        if not written:
            for key in self._pending:
                self._ids.pop(key, None)
        self._pending = {}
        if len(self._ids) > self.CACHE:
            self._ids = {}

    def _make_series(self, sid: int, meta: dict[str, object]) -> Series:
        labels = meta["labels"]
        assert isinstance(labels, dict)
        return Series(sid, str(meta["org"]), str(meta["metric"]), dict(labels))

    @property
    def _series(self) -> dict[int, Series]:
        """Every series by sid (reads the whole index: for tests and tools)."""
        return {int(k.rsplit("/", 1)[1], 16): self._make_series(int(k.rsplit("/", 1)[1], 16), json.loads(v))
                for k, v in self.store.scan("tsmeta/")}

    @property
    def series_count(self) -> int:
        return self.store.count("tsmeta/")

    def sid_for(self, batch: Batch, org: str, metric: str, labels: Mapping[str, str]) -> int:
        """The series id, creating the series (in ``batch``) when new."""
        key = _series_key(org, metric, labels)
        sid = self._stored(key)
        if sid is not None:
            return sid
        return self._create(batch, key, org, metric, labels)

    def _create(self, batch: Batch, key: tuple[str, ...], org: str, metric: str,
                labels: Mapping[str, str]) -> int:
        sid = self._next
        self._next += 1
        batch.put(f"tsmeta/{sid:08x}", json.dumps({"org": org, "metric": metric,
                                                    "labels": dict(labels)}).encode())
        batch.put(f"tsidx/{org}/{metric}/{sid:08x}", b"")
        batch.put(_key_of(key), f"{sid:08x}".encode())
        if (org, metric) not in self._metrics:
            batch.put(f"tsmetric/{org}/{metric}", b"")
            self._metrics.add((org, metric))
        batch.put(NEXT_SID_KEY, str(self._next).encode())
        self._pending[key] = sid
        return sid

    def add(self, batch: Batch, org: str, samples: Iterable[tuple[str, Mapping[str, str], float, int]]) -> int:
        """Put ``(metric, labels, value, time_ms)`` samples into ``batch``; returns how many."""
        n = 0
        append = batch.samples.append
        pack = _DOUBLE.pack
        get = self._lookup
        last_t: int | None = None
        tail = b""
        late = late_before()
        marks: set[tuple[int, int]] = set()
        for metric, labels, value, t_ms in samples:
            key = (org, metric, *_chain(sorted(labels.items())))
            sid = get(key)
            if sid is None:
                sid = self._create(batch, key, org, metric, labels)
            if t_ms != last_t:  # a batch's samples mostly share one time
                last_t, tail = t_ms, b"%012x" % t_ms
            append((b"ts/%08x/%b" % (sid, tail), pack(value)))
            if t_ms < late:
                marks.add((sid, t_ms - t_ms % _HOUR_MS))
            n += 1
        for sid, hour in marks:
            self.mark_late(batch, (sid,), hour)
        return n

    @staticmethod
    def mark_late(batch: Batch, sids: Iterable[int], t_ms: int) -> None:
        """Samples of ``sids`` at ``t_ms`` stored late: their hour is rolled up again. The
        value (the time now) changes with every mark, so the compaction task deletes only
        the marks it has seen (compare-and-set)."""
        hour = t_ms - t_ms % _HOUR_MS
        stamp = str(time.time_ns()).encode()
        for sid in sids:
            batch.put(late_key(sid, hour), stamp)

    def select(self, org: str, metric: str) -> list[Series]:
        hexes = [key.rsplit("/", 1)[1] for key, _ in
                 self.store.scan(f"tsidx/{org}/{metric}/", keys_only=True)]
        metas = self.store.get_many([f"tsmeta/{h}" for h in hexes])
        return [self._make_series(int(h, 16), json.loads(raw))
                for h, raw in zip(hexes, metas, strict=True) if raw is not None]

    def metrics(self, org: str) -> list[str]:
        return sorted({m for (o, m) in self._metrics if o == org})

    def read(self, sid: int, start_ms: int, end_ms: int) -> Iterator[tuple[int, float]]:
        """Samples of one series with start_ms <= t <= end_ms, in time order."""
        prefix = series_prefix(sid)
        end_key = sample_key(sid, end_ms)
        for key, value in self.store.scan(prefix, start=sample_key(sid, max(start_ms, 0))):
            if key > end_key:
                return
            yield int(key[-12:], 16), _DOUBLE.unpack(value)[0]

    def read_columns(self, sid: int, start_ms: int, end_ms: int,
                     limit: int | None = None) -> tuple[list[int], list[float]]:
        """:meth:`read` as two lists (times, values): what queries read, made faster; at most
        ``limit`` samples (a query's budget)."""
        if end_ms < start_ms:
            return [], []
        return _columns(*self.store.scan_range(
            series_prefix(sid), sample_key(sid, max(start_ms, 0)), sample_key(sid, end_ms), limit))

    def read_after(self, sid: int, start_ms: int,
                   end_ms: int) -> tuple[float | None, list[int], list[float]]:
        """:meth:`read_columns` of ``[start_ms, end_ms]`` and first the value of the last
        sample before ``start_ms`` however old (None without one): what a rollup reads."""
        before, keys, raws = self.store.scan_range_after(
            series_prefix(sid), sample_key(sid, max(start_ms, 0)), sample_key(sid, end_ms),
            near=sample_key(sid, max(start_ms - NEAR_MS, 0)))
        return (None if before is None else _DOUBLE.unpack(before)[0], *_columns(keys, raws))

    def last_before(self, sid: int, t_ms: int, lookback_ms: int) -> tuple[int, float] | None:
        for key, value in self.store.scan(series_prefix(sid), start=sample_key(sid, t_ms),
                                          reverse=True, limit=1):
            ts = int(key[-12:], 16)
            if ts >= t_ms - lookback_ms:
                return ts, _DOUBLE.unpack(value)[0]
        return None

    def sids(self) -> list[int]:
        """Every series id, in order."""
        return [int(k.rsplit("/", 1)[1], 16) for k, _ in self.store.scan("tsmeta/", keys_only=True)]

    def sids_from(self, first: int, limit: int) -> list[int]:
        """Up to ``limit`` series ids from ``first`` on, in order."""
        return [int(k.rsplit("/", 1)[1], 16) for k, _ in
                self.store.scan("tsmeta/", start=f"tsmeta/{first:08x}", limit=limit, keys_only=True)]

    def last_sid(self) -> int:
        return self._next - 1

    def expire(self, cutoff_ms: int, sids: Iterable[int] | None = None) -> int:
        """Drop samples older than ``cutoff_ms`` in every series (or in ``sids`` only: the
        retention task goes through them in slices); returns series touched."""
        n = 0
        for sid in self.sids() if sids is None else sids:
            if delete_before(self.store, series_prefix(sid), sample_key(sid, cutoff_ms)):
                n += 1
        return n


def _columns(keys: list[bytes], raws: list[bytes]) -> tuple[list[int], list[float]]:
    """Stored sample keys and values -> their times and values."""
    return ([int(k[-12:], 16) for k in keys],
            list(struct.unpack(f">{len(raws)}d", b"".join(raws))))


def delete_before(store: Store, prefix: str, end: str) -> bool:
    """Delete the keys with ``prefix`` before ``end``, if there is one (a look first: a
    range deletion is a tombstone RocksDB keeps in memory and checks on every read until a
    compaction drops it, and retention goes through every series every hour: with 10,000
    agents, three million tombstones an hour, nearly all over nothing, raised the
    controller's RSS by ~500 MiB). True if it deleted."""
    keys, _ = store.scan_range(prefix, prefix, end, limit=1)
    if not keys or keys[0] >= end.encode():
        return False
    store.delete_range(prefix, end)
    return True


def _key_of(key: tuple[str, ...]) -> str:
    return "tskey/" + json.dumps(key, separators=(",", ":"), ensure_ascii=False)


def _series_key(org: str, metric: str, labels: Mapping[str, str]) -> tuple[str, ...]:
    """What identifies a series: ``(org, metric, name1, value1, ...)``, names sorted."""
    return (org, metric, *_chain(sorted(labels.items())))
