"""An embedded time-series store on the state store.

A series is a metric name plus labels (one of them ``machine_id``), interned to a short id.
An agent's compact batch goes to the head first (one entry for all its samples, see
HEAD_PREFIX), and is sealed into one block per series and bucket later. Raw keys are
partitioned by hour: ``tsr/<hour:6 hex>/<sid:8 hex>/<ms in the hour:6 hex>`` → one sample's
value as a big-endian double (samples written one by one: late batches, agents that send
labels with each sample), the same key with ``~`` after it → a block; so within an hour one
series' keys are contiguous (a late sample's key may fall inside a block's span: reads put
them in time order), and new keys only ever overlap the current hour. (With one range per
series for all time, ``ts/<sid>/<time_ms>`` before, every memtable flush overlapped every
series' range and RocksDB rewrote the older data level after level: its compaction writes
grew with the store, ~10x the ingest after 8 hours of 60,000 series, where hour partitions
stay at ~3x; and retention deleted a range in every series where it now deletes whole
hours at once. A store from before keeps its ``ts/`` samples, read beside the new ones, until
retention has deleted them: see :attr:`TSDB.legacy`.) ``tsidx/<org>/<metric>/<sid>`` finds
the series of a metric; ``tsmeta/<sid>`` holds its labels. Samples are written in batches
(the ingest path groups many agents' batches into one write); a replayed batch is not
stored again (its sequence number says so, :mod:`controller.agents.ingest`), and where a
series has two samples at one time, reads and sealing keep the later one. Raw samples are kept ``retention`` seconds; rolled-up
buckets (:mod:`controller.monitor.rollup`) longer; retention deletes whole hours, so a raw
sample is kept up to an hour past ``retention``. A sample stored more than ``LATE_MS``
after its time (an agent's spool, replayed after it reconnects) leaves a mark
``tslate/<sid>/<hour_ms>`` in the same batch, so the compaction task rolls that hour up again."""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, repeat

from controller.store.base import Batch, Cursor, Store

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
# read_after reads from this long before its range (agents sample every 10 s), where the
# sample before it most often is, instead of seeking back to it ...
NEAR_MS = 30_000
# ... and looks this far back at most (the rollups' and queries' "value before", which a
# counter's increase starts from: a series silent longer starts again from its next sample)
PREV_LOOKBACK_MS = _HOUR_MS
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


RAW_PREFIX = "tsr/"
HEAD_PREFIX = "tsh/"
SRC_PREFIX = "tssrc/"
# The head: an agent's compact batch is stored as it comes, one key for all its samples
# (``tsh/<bucket:8 hex>/<agent id>/<time_ms:12 hex>/<seq:12 hex>`` -> count, series ids,
# values; two batches of one agent at the same time are two entries), where a
# key per sample cost ~100 times the RocksDB work (writes, compaction, reads back for the
# rollups). The compaction task seals a bucket of the head once it ended SEAL_DELAY_MS ago:
# each series' samples of the bucket become one block, ``tsr/<hour>/<sid>/<first ms>~``, then
# the bucket is deleted. So a series' keys stay series id + time, with values packed.
BLOCK_MS = 300_000
SEAL_DELAY_MS = 2 * LATE_MS  # later batches are late: written as samples, never to the head
# Batches dated further ahead of the controller's clock than this (an agent whose clock is
# wrong) are written as samples too: the head holds the last minutes only, and its buckets
# are sealed in time order (an entry a year ahead would wait there a year).
HEAD_AHEAD_MS = BLOCK_MS
_BLOCK = b"B"  # a block's first byte (a sample's value is 8 bytes: a block never is)
_U32 = struct.Struct("<I")
_LE_DOUBLE = struct.Struct("<d")
_SWAP = sys.byteorder != "little"  # head and blocks hold little-endian arrays
_NO_HOUR = 1 << 30  # past every hour a 6-digit key holds: nothing stored from there on
LEGACY_PREFIX = "ts/"  # raw samples of a store from before hour partitions


def part_prefix(hour: int) -> str:
    """The keys of every series' samples in ``hour`` (an hour's index: time_ms // HOUR)."""
    return f"{RAW_PREFIX}{hour:06x}/"


def series_part_prefix(sid: int, hour: int) -> str:
    return f"{RAW_PREFIX}{hour:06x}/{sid:08x}/"


def sample_key(sid: int, t_ms: int) -> str:
    return f"{RAW_PREFIX}{t_ms // _HOUR_MS:06x}/{sid:08x}/{t_ms % _HOUR_MS:06x}"


def sample_key_parts(t_ms: int) -> tuple[bytes, bytes]:
    """What goes before and after the series id (``b"%08x" % sid``) in the key of a sample
    at ``t_ms``, as ``Batch.samples`` takes it: the ingest path makes them once per time."""
    return b"tsr/%06x/" % (t_ms // _HOUR_MS), b"/%06x" % (t_ms % _HOUR_MS)


def sample_key_bytes(sid: int, t_ms: int) -> bytes:
    """:func:`sample_key` as ``Batch.samples`` takes it."""
    head, tail = sample_key_parts(t_ms)
    return b"%b%08x%b" % (head, sid, tail)


def block_key_parts(first_ms: int) -> tuple[bytes, bytes]:
    """What goes before and after the series id in the key of a block of samples from
    ``first_ms`` on: a sample's key with a ``~`` after it (no sample written alone, late, can
    replace a block). Sealing makes them once per agent's bucket."""
    head, tail = sample_key_parts(first_ms)
    return head, tail + b"~"


def block_key_bytes(sid: int, first_ms: int) -> bytes:
    head, tail = block_key_parts(first_ms)
    return b"%b%08x%b" % (head, sid, tail)


def _block_head(times: list[int]) -> bytes:
    """A block's value up to its values: the marker, how many, each time's offset from the
    first (the key's)."""
    first = times[0]
    return _BLOCK + _U32.pack(len(times)) + _le(array("I", [t - first for t in times]))


def head_key_bytes(src: str, t_ms: int, seq: int) -> bytes:
    return b"tsh/%08x/%b/%012x/%012x" % (t_ms // BLOCK_MS, src.encode(), t_ms,
                                          seq & 0xFFFF_FFFF_FFFF)


def _head_time(key: bytes) -> int:
    return int(key[-25:-13], 16)


def _le(a: array) -> bytes:  # type: ignore[type-arg]
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def _from_le(code: str, raw: bytes | memoryview) -> array:  # type: ignore[type-arg]
    a = array(code, raw)
    if _SWAP:
        a.byteswap()
    return a


def head_value(sids: Iterable[int], values: Iterable[float]) -> bytes:
    """A head entry: how many samples, their series ids (uint32), their values (doubles)."""
    ids = array("I", sids)
    return _U32.pack(len(ids)) + _le(ids) + _le(array("d", values))


def legacy_prefix(sid: int) -> str:
    return f"{LEGACY_PREFIX}{sid:08x}/"


def legacy_key(sid: int, t_ms: int) -> str:
    return f"{LEGACY_PREFIX}{sid:08x}/{t_ms:012x}"


def late_key(sid: int, hour_ms: int) -> str:
    return f"{LATE_PREFIX}{sid:08x}/{hour_ms:012x}"


def late_before() -> int:
    """Samples before this time (ms) are late if stored now."""
    return int(time.time() * 1000) - LATE_MS


def ahead_from() -> int:
    """Samples from this time (ms) on are too far ahead for the head if stored now."""
    return int(time.time() * 1000) + HEAD_AHEAD_MS


class Reader:
    """Many series read in a row, as the rules do every round: ``with reader:`` opens one
    store cursor that every read in the block goes through (``tsdb.read_columns(...,
    reader=reader)``), and the agent each series comes from is remembered between rounds
    (it never changes). Reads through it see the store as it was when the block began. One
    thread at a time."""

    def __init__(self, tsdb: TSDB) -> None:
        self.tsdb = tsdb
        self.cursor: Cursor | None = None
        self.head_from = 0
        self.sources: dict[int, str] = {}  # series id -> the agent whose head entries hold it
        self.by_source: dict[str, list[int]] = {}  # and the other way
        # series with no source in this round's store (an agent that sends labelled samples,
        # or one whose first batch came after the cursor was made): looked for again next round
        self.missing: set[int] = set()
        self._names: dict[str, str] = {}  # one string per agent
        # series of an agent read from the head together with another of its series (the
        # same entries), for when they are read in the same round: sid -> (start, end,
        # times, values)
        self.prefetched: dict[int, tuple[int, int, list[int], list[float]]] = {}

    def __enter__(self) -> Reader:
        # where the head starts, then the cursor: a bucket sealed in between is in the
        # cursor's blocks, or its head entries are (where the head is read from)
        self.head_from = self.tsdb.head_from
        self.cursor = self.tsdb.store.cursor()
        return self

    def __exit__(self, *exc: object) -> None:
        cursor, self.cursor = self.cursor, None
        self.prefetched.clear()
        self.missing.clear()
        if cursor is not None:
            cursor.close()

    def remember(self, sid: int, src: str) -> None:
        """``sid`` comes from agent ``src`` (the agent's name stored once)."""
        if sid not in self.sources:
            src = self._names.setdefault(src, src)
            self.by_source.setdefault(src, []).append(sid)
            self.sources[sid] = src

    def forget(self, sids: Iterable[int]) -> None:
        for sid in sids:
            src = self.sources.pop(sid, None)
            if src is not None:
                left = self.by_source[src]
                left.remove(sid)
                if not left:
                    del self.by_source[src], self._names[src]


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
        # samples of a store from before hour partitions: read beside the new ones (each read
        # looks in both) until retention has deleted the last of them (expire)
        self.legacy = any(True for _ in store.scan(LEGACY_PREFIX, limit=1, keys_only=True))
        # Nothing in the head is older than head_from (ms), and the ingest path writes
        # nothing older than head_closed to it (a late batch goes in sample by sample):
        # sealing closes the buckets it seals first, under head_lock, which the ingest path's
        # writes hold too, so no entry lands in a bucket being sealed or sealed already
        now = late_before()
        first = self._head_bucket(0)
        self.head_from = min(now - now % BLOCK_MS,
                             first * BLOCK_MS if first is not None else now)
        self.head_closed = self.head_from
        self.head_lock = threading.Lock()
        self._seal_cursor = ""

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
        head = b""
        for metric, labels, value, t_ms in samples:
            key = (org, metric, *_chain(sorted(labels.items())))
            sid = get(key)
            if sid is None:
                sid = self._create(batch, key, org, metric, labels)
            if t_ms != last_t:  # a batch's samples mostly share one time
                last_t = t_ms
                head, tail = sample_key_parts(t_ms)
            append((b"%b%08x%b" % (head, sid, tail), pack(value)))
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
        yield from zip(*self.read_columns(sid, start_ms, end_ms), strict=True)

    def read_columns(self, sid: int, start_ms: int, end_ms: int,
                     limit: int | None = None,
                     reader: Reader | None = None) -> tuple[list[int], list[float]]:
        """:meth:`read` as two lists (times, values): what queries read, made faster; at most
        ``limit`` samples (a query's budget). One read per hour of the range, and one per
        bucket of it the head holds (read first: a bucket sealed meanwhile is then found in
        the blocks, where it is read twice at worst, never missed). Through ``reader``'s
        cursor when given (many series read in a row)."""
        start_ms = max(start_ms, 0)
        if end_ms < start_ms:
            return [], []
        head_t, head_v = self.head_columns(sid, start_ms, end_ms, reader)
        times: list[int] = []
        values: list[float] = []
        left = -1 if limit is None else limit
        cursor = reader.cursor if reader is not None else None
        scan_range = cursor.range if cursor is not None else self.store.scan_range
        hour, last_hour = start_ms // _HOUR_MS, end_ms // _HOUR_MS
        found = False
        while hour <= last_hour:
            if not found and hour < last_hour:
                # the first hour, or one this series had nothing in: go to the next hour
                # anything is stored in (a range from 0 is 490,000 hours; a week holds 168)
                hour = self._stored_hour(hour, cursor)
                if hour > last_hour:
                    break
            base = hour * _HOUR_MS
            lo, hi = max(start_ms, base), min(end_ms, base + _HOUR_MS - 1)
            # a block holds one bucket's samples at most: the one holding ``lo`` starts in
            # its bucket
            keys, raws = scan_range(series_part_prefix(sid, hour),
                                    sample_key(sid, lo - lo % BLOCK_MS), sample_key(sid, hi) + "~")
            found = bool(keys)
            if keys:
                t, v = _decode(base, keys, raws, lo, hi)
                times += t
                values += v
                if left >= 0:
                    left -= len(t)
                    if left <= 0:
                        break
            hour += 1
        if head_t:
            times, values = _merge(times, values, head_t, head_v)
        if self.legacy:
            old_times, old_values = _columns(*scan_range(
                legacy_prefix(sid), legacy_key(sid, start_ms), legacy_key(sid, end_ms), limit))
            times, values = _merge(old_times, old_values, times, values)
        if limit is not None:
            del times[limit:], values[limit:]
        return times, values

    def head_columns(self, sid: int, start_ms: int, end_ms: int,
                     reader: Reader | None = None) -> tuple[list[int], list[float]]:
        """The samples of ``sid`` in ``[start_ms, end_ms]`` that are in the head (not sealed
        yet): one read per bucket, of the batches of the agent that sends the series."""
        cursor = reader.cursor if reader is not None else None
        if cursor is None:
            reader = None  # a reader works within its block only
        # the head as the cursor sees it (sealing may move head_from meanwhile)
        start_ms = max(start_ms, reader.head_from if reader is not None else self.head_from)
        if end_ms < start_ms:
            return [], []
        src: str | None = None
        if reader is not None:
            if reader.prefetched:
                hit = reader.prefetched.pop(sid, None)
                if hit is not None and hit[0] == start_ms and hit[1] == end_ms:
                    return hit[2], hit[3]
            if sid in reader.missing:
                return [], []
            src = reader.sources.get(sid)
        if src is None:
            key = f"{SRC_PREFIX}{sid:08x}"
            raw_src = cursor.get(key) if cursor is not None else self.store.get(key)
            if raw_src is None:
                if reader is not None:
                    reader.missing.add(sid)
                return [], []
            src = raw_src.decode()
            if reader is not None:
                reader.remember(sid, src)
        scan_range = cursor.range if cursor is not None else self.store.scan_range
        times: list[int] = []
        values: list[float] = []
        where: dict[bytes, int] = {}  # a batch's series ids -> the place of sid in them
        b, last = start_ms // BLOCK_MS, end_ms // BLOCK_MS
        # the entries read, when there is one set of them of one layout (for prefetching)
        one: tuple[bytes, list[bytes]] | None = None
        several = False
        while b <= last:
            if last - b > 3:  # the head holds a few buckets: skip to the next one it has
                nxt = self._head_bucket(b, cursor)
                if nxt is None or nxt > last:
                    break
                b = nxt
            p = f"{HEAD_PREFIX}{b:08x}/{src}/"
            keys, raws = scan_range(p, f"{p}{start_ms:012x}", f"{p}{end_ms:012x}~")
            b += 1
            if not raws:
                continue
            layout = raws[0][:4 + 4 * _U32.unpack_from(raws[0])[0]]
            several = several or one is not None
            if all(map(bytes.startswith, raws, repeat(layout))):
                # the agent sent the same series in each batch (nearly always): one place
                one = (layout, raws)
                i = _place(layout, sid)
                if i >= 0:
                    at = len(layout) + 8 * i
                    times += [int(k[-25:-13], 16) for k in keys]
                    values += _from_le("d", b"".join([v[at:at + 8] for v in raws]))
                continue
            several = True
            for k, v in zip(keys, raws, strict=True):
                ids = v[:4 + 4 * _U32.unpack_from(v)[0]]
                i = where.get(ids, -2)
                if i == -2:
                    i = where[ids] = _place(ids, sid)
                if i >= 0:
                    times.append(_head_time(k))
                    values.append(_LE_DOUBLE.unpack_from(v, len(ids) + 8 * i)[0])
        if not all(map(int.__lt__, times, times[1:])):  # batches at one time: the last
            both = dict(zip(times, values, strict=True))
            times = sorted(both)
            values = [both[t] for t in times]
        elif reader is not None and one is not None and not several and times:
            # the agent's other series this reader reads: from the same entries, now
            others = reader.by_source.get(src, ())
            if len(others) > 1:
                layout, raws = one
                order = _from_le("I", layout[4:])
                order.reverse()  # the last place of a series there twice, as _place
                n, unpack = len(order) - 1, _LE_DOUBLE.unpack_from
                for other in others:
                    try:
                        at = len(layout) + 8 * (n - order.index(other))
                    except ValueError:  # not in these batches
                        continue
                    if other != sid:
                        reader.prefetched[other] = (start_ms, end_ms, times[:],
                                                    [unpack(v, at)[0] for v in raws])
        return times, values

    def head_start(self) -> int | None:
        """The start (ms) of the first bucket the head holds anything in, None if empty."""
        b = self._head_bucket(0)
        return None if b is None else b * BLOCK_MS

    def _head_bucket(self, bucket: int, cursor: Cursor | None = None) -> int | None:
        """The first bucket from ``bucket`` on that the head holds anything in."""
        key = self._first_key(HEAD_PREFIX, f"{HEAD_PREFIX}{bucket:08x}/", cursor)
        return None if key is None else int(key[len(HEAD_PREFIX):len(HEAD_PREFIX) + 8], 16)

    def _stored_hour(self, hour: int, cursor: Cursor | None = None) -> int:
        """The first hour from ``hour`` on that holds samples (of any series); past the
        last one if none does."""
        key = self._first_key(RAW_PREFIX, part_prefix(hour), cursor)
        return _NO_HOUR if key is None else int(key[len(RAW_PREFIX):len(RAW_PREFIX) + 6], 16)

    def _first_key(self, prefix: str, start: str, cursor: Cursor | None) -> str | None:
        if cursor is not None:
            return cursor.first_key(prefix, start)
        for key, _ in self.store.scan(prefix, start=start, limit=1, keys_only=True):
            return key
        return None

    def first_hour(self) -> int | None:
        """The start (ms) of the first hour samples are stored in (hour partitions and the
        head), None if there is none."""
        hour = self._stored_hour(0)
        firsts = [] if hour == _NO_HOUR else [hour * _HOUR_MS]
        head = self.head_start()
        if head is not None:
            firsts.append(head - head % _HOUR_MS)
        return min(firsts, default=None)

    def read_after(self, sid: int, start_ms: int,
                   end_ms: int) -> tuple[float | None, list[int], list[float]]:
        """:meth:`read_columns` of ``[start_ms, end_ms]`` and first the value of the last
        sample before ``start_ms`` (None without one in ``PREV_LOOKBACK_MS``): what a rollup
        reads."""
        times, values = self.read_columns(sid, start_ms - NEAR_MS, end_ms)
        i = bisect_left(times, start_ms)
        if i:
            return values[i - 1], times[i:], values[i:]
        hit = self.last_before(sid, start_ms - 1, PREV_LOOKBACK_MS)
        return (None if hit is None else hit[1]), times, values

    def last_before(self, sid: int, t_ms: int, lookback_ms: int) -> tuple[int, float] | None:
        """The last sample at or before ``t_ms`` and not before ``t_ms - lookback_ms``."""
        if t_ms < 0:
            return None
        first = max(t_ms - lookback_ms, 0)
        lo = max(first, t_ms - t_ms % BLOCK_MS)
        times, values = self.read_columns(sid, lo, t_ms)  # its bucket: one or two reads
        if times:
            return times[-1], values[-1]
        if lo <= first:
            return None
        # before it: the last key there (of the blocks, samples, head) tells which bucket
        # holds the sample
        t_head, _ = self.head_columns(sid, first, lo - 1)
        last = t_head[-1] if t_head else None
        for hour in range((lo - 1) // _HOUR_MS, first // _HOUR_MS - 1, -1):
            if last is not None and last >= hour * _HOUR_MS:
                break
            # from lo's time in its hour, from the end of the series' keys in hours before
            end = (sample_key(sid, lo - 1) if hour == (lo - 1) // _HOUR_MS
                   else series_part_prefix(sid, hour)) + "~"
            for key, _ in self.store.scan(series_part_prefix(sid, hour), start=end,
                                          reverse=True, limit=1, keys_only=True):
                ms = int(key[-7:-1] if key.endswith("~") else key[-6:], 16)
                last = max(last or 0, hour * _HOUR_MS + ms)
        if self.legacy:
            for key, _ in self.store.scan(legacy_prefix(sid), start=legacy_key(sid, lo - 1),
                                          reverse=True, limit=1, keys_only=True):
                last = max(last or 0, int(key[-12:], 16))
        if last is None or last < first - BLOCK_MS:
            return None
        times, values = self.read_columns(sid, max(first, last - last % BLOCK_MS), lo - 1)
        return (times[-1], values[-1]) if times else None

    def seal(self, cut_ms: int, max_entries: int = 5_000) -> tuple[int, bool]:
        """Turn the head's buckets that end by ``cut_ms`` into blocks, at most ``max_entries``
        head entries (agents' batches) a call; returns the samples sealed and whether every
        bucket before the cut is. The buckets are closed to the ingest path first; one is
        deleted from the head once all of it is sealed; sealing it again (after a stop or a
        failed write) writes the same blocks."""
        cut = cut_ms // BLOCK_MS
        if cut * BLOCK_MS <= self.head_from:
            return 0, True
        if self.head_closed < cut * BLOCK_MS:
            with self.head_lock:  # no write of the ingest path is between check and commit
                self.head_closed = max(self.head_closed, cut * BLOCK_MS)
        keys, raws = self.store.scan_range(HEAD_PREFIX, self._seal_cursor or HEAD_PREFIX,
                                           f"{HEAD_PREFIX}{cut - 1:08x}0", max_entries)
        more = len(keys) == max_entries
        groups: list[tuple[bytes, list[bytes], list[bytes]]] = []  # (bucket/src, keys, values)
        for k, v in zip(keys, raws, strict=True):
            g = k[:-26]  # less /<time>/<seq>
            if not groups or groups[-1][0] != g:
                groups.append((g, [], []))
            groups[-1][1].append(k)
            groups[-1][2].append(v)
        cursor = ""
        if more and len(groups) > 1:  # an agent's bucket is sealed in one piece
            cursor = groups.pop()[1][0].decode()
        elif more:  # one agent sent more than max_entries batches in a bucket
            cursor = keys[-1].decode() + "\x00"
        batch = Batch()
        n = 0
        for _, gkeys, gvalues in groups:
            n += _seal_group(batch, gkeys, gvalues)
            if len(batch.samples) >= 50_000:
                self.store.write(batch)
                batch = Batch()
        if batch:
            self.store.write(batch)
        self._seal_cursor = cursor  # only now: a failed write seals the same slice again
        if more:
            return n, False
        delete_before(self.store, HEAD_PREFIX, f"{HEAD_PREFIX}{cut:08x}/")
        self.head_from = max(self.head_from, cut * BLOCK_MS)
        return n, True

    def write_with_head(self, batch: Batch, head: list[tuple[bytes, bytes]],
                        sync: bool = False) -> None:
        """Write ``batch`` with the head entries ``head`` (the ingest path's group commit).
        An entry in a bucket sealing has closed since the entry was made (a write that
        waited long for its thread) goes in sample by sample instead, marked late."""
        with self.head_lock:
            closed = self.head_closed
            for key, value in head:
                if _head_time(key) >= closed:
                    batch.samples.append((key, value))
                else:
                    self._unhead(batch, key, value)
            self.store.write(batch, sync)

    def _unhead(self, batch: Batch, key: bytes, value: bytes) -> None:
        t_ms = _head_time(key)
        n = _U32.unpack_from(value)[0]
        ids = _from_le("I", value[4:4 + 4 * n])
        batch.samples += [(sample_key_bytes(sid, t_ms), _DOUBLE.pack(v))
                          for sid, v in zip(ids, _from_le("d", value[4 + 4 * n:]), strict=True)]
        self.mark_late(batch, set(ids), t_ms)

    def sids(self) -> list[int]:
        """Every series id, in order."""
        return [int(k.rsplit("/", 1)[1], 16) for k, _ in self.store.scan("tsmeta/", keys_only=True)]

    def sids_from(self, first: int, limit: int) -> list[int]:
        """Up to ``limit`` series ids from ``first`` on, in order."""
        return [int(k.rsplit("/", 1)[1], 16) for k, _ in
                self.store.scan("tsmeta/", start=f"tsmeta/{first:08x}", limit=limit, keys_only=True)]

    def last_sid(self) -> int:
        return self._next - 1

    def expire(self, cutoff_ms: int) -> int:
        """Drop the raw samples of the hours before ``cutoff_ms``'s (one range deletion for
        every series); returns the hours' index it deleted up to (0 if nothing). Samples of a
        store from before hour partitions are in a range per series: :meth:`expire_legacy`."""
        end = part_prefix(cutoff_ms // _HOUR_MS)
        return cutoff_ms // _HOUR_MS if delete_before(self.store, RAW_PREFIX, end) else 0

    def expire_legacy(self, cutoff_ms: int, sids: Iterable[int]) -> int:
        """Drop the samples older than ``cutoff_ms`` that a store from before hour partitions
        holds for ``sids``; returns series touched. (When none are left at all, after a pass,
        :meth:`check_legacy`.)"""
        n = 0
        for sid in sids:
            if delete_before(self.store, legacy_prefix(sid), legacy_key(sid, cutoff_ms)):
                n += 1
        return n

    def check_legacy(self) -> bool:
        """Whether samples from before hour partitions are left (reads stop looking for them
        once none are)."""
        if self.legacy:
            self.legacy = any(True for _ in self.store.scan(LEGACY_PREFIX, limit=1,
                                                            keys_only=True))
        return self.legacy


def _seal_group(batch: Batch, keys: list[bytes], values: list[bytes]) -> int:
    """One agent's head entries of one bucket (in key order: time, then sequence) -> a
    block per series in ``batch``; returns the samples."""
    layouts: dict[bytes, tuple[list[int], list[bytes]]] = {}  # series ids -> times, values
    for k, v in zip(keys, values, strict=True):
        n = _U32.unpack_from(v)[0]
        times, vals = layouts.setdefault(v[4:4 + 4 * n], ([], []))
        times.append(_head_time(k))
        vals.append(v[4 + 4 * n:])
    out = batch.samples.append
    if len(layouts) > 1 or not all(map(int.__lt__, times, times[1:])):
        return _seal_mixed(batch, keys, values)
    n = 0
    for ids, (times, vals) in layouts.items():
        head = _block_head(times)
        prefix, tail = block_key_parts(times[0])
        for sid, column in zip(_from_le("I", ids),
                               zip(*[_from_le("d", raw) for raw in vals], strict=True),
                               strict=True):
            out((b"%b%08x%b" % (prefix, sid, tail), head + _le(array("d", column))))
        n += len(times) * (len(ids) // 4)
    return n


def _seal_mixed(batch: Batch, keys: list[bytes], values: list[bytes]) -> int:
    """:func:`_seal_group` where the agent's series changed within the bucket, or two of its
    batches have one time: sample by sample, in key order (the later batch's value at a
    time, as reads of the head give)."""
    series: dict[int, dict[int, float]] = {}
    for k, v in zip(keys, values, strict=True):
        t = _head_time(k)
        n = _U32.unpack_from(v)[0]
        for sid, x in zip(_from_le("I", v[4:4 + 4 * n]), _from_le("d", v[4 + 4 * n:]),
                          strict=True):
            series.setdefault(sid, {})[t] = x
    for sid, points in series.items():
        times = sorted(points)
        batch.samples.append((block_key_bytes(sid, times[0]), _block_head(times)
                              + _le(array("d", [points[t] for t in times]))))
    return sum(map(len, series.values()))


def _place(layout: bytes, sid: int) -> int:
    """Where ``sid`` is among a head entry's series (its count and ids; the last place if
    it is there twice, as sealing keeps), -1 if not there."""
    ids = _from_le("I", layout[4:])
    ids.reverse()
    try:
        return len(ids) - 1 - ids.index(sid)
    except ValueError:
        return -1


def _decode(base: int, keys: list[bytes], raws: list[bytes], lo: int,
            hi: int) -> tuple[list[int], list[float]]:
    """Stored samples and blocks of one series in the hour from ``base`` -> the times and
    values from ``lo`` to ``hi``."""
    if len(raws) * 8 == sum(map(len, raws)):  # samples only (a block is longer than 8)
        times = [base + int(k[-6:], 16) for k in keys]
        values = list(struct.unpack(f">{len(raws)}d", b"".join(raws)))
    else:
        times, values = [], []
        ordered = True  # blocks only, each after the last: no sample to look at
        for k, v in zip(keys, raws, strict=True):
            if len(v) == 8:
                times.append(base + int(k[-6:], 16))
                values.append(_DOUBLE.unpack(v)[0])
                ordered = False
            else:
                n = _U32.unpack_from(v, 1)[0]
                first = base + int(k[-7:-1], 16)
                if times and first <= times[-1]:
                    ordered = False
                times += map(first.__add__, _from_le("I", v[5:5 + 4 * n]))
                values += _from_le("d", v[5 + 4 * n:])
        if not ordered and not all(map(int.__lt__, times, times[1:])):
            # a late sample inside a block's span: in time order, the later key's value
            # where both have a time
            both = dict(zip(times, values, strict=True))
            times = sorted(both)
            values = [both[t] for t in times]
    i, j = bisect_left(times, lo), bisect_right(times, hi)
    return times[i:j], values[i:j]


def _columns(keys: list[bytes], raws: list[bytes]) -> tuple[list[int], list[float]]:
    """Stored samples of the layout before hour partitions -> their times and values."""
    return ([int(k[-12:], 16) for k in keys],
            list(struct.unpack(f">{len(raws)}d", b"".join(raws))))


def _merge(t1: list[int], v1: list[float], t2: list[int],
           v2: list[float]) -> tuple[list[int], list[float]]:
    """Two runs of samples in time order as one (the second's value where both have a
    time)."""
    if not t1:
        return t2, v2
    if not t2:
        return t1, v1
    if t1[-1] < t2[0]:
        return t1 + t2, v1 + v2
    both = dict(zip(t1, v1, strict=True))
    both.update(zip(t2, v2, strict=True))
    times = sorted(both)
    return times, [both[t] for t in times]


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
