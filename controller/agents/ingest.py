"""Metric ingest with group commit: batches from many agents wait at most ``max_delay`` and
are written together in one synced store write (an agent's compact batch as one entry of
the TSDB's head), then each agent is acknowledged. A batch
whose sequence number is at or below the agent's stored one is a replay: acknowledged,
not stored again (exactly once, across controller crashes and agent reconnects).

A batch comes as samples (metric, labels, value, time) or in the protocol's compact form
(:class:`Compact`: references to series defined earlier on the stream, values, one time),
which costs a tenth: no labels to merge, sort and look up per sample."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.monitor.tsdb import (
    SRC_PREFIX,
    TSDB,
    ahead_from,
    head_key_bytes,
    head_value,
    late_before,
    sample_key_parts,
)
from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

Sample = tuple[str, Mapping[str, str], float, int]  # metric, labels, value, time_ms
_DOUBLE = struct.Struct(">d")  # how the TSDB stores a value


@dataclass(slots=True)
class Compact:
    """The compact samples of one batch: ``values[i]`` of series ``sids[refs[i]]`` at
    ``t_ms``. ``sids`` is the stream's table (ref -> series id); ``defs`` are the series this
    batch defines, (metric, labels) in ref order, appended to it when the batch is taken —
    also when the batch is a replay, since later batches use them."""

    sids: array[int]
    defs: list[tuple[str, Mapping[str, str]]]
    refs: Sequence[int]
    values: Sequence[float]
    t_ms: int


@dataclass(slots=True)
class _Item:
    agent_id: str
    org: str
    seq: int
    samples: Sequence[Sample]
    compact: Compact | None
    done: asyncio.Future[bool] = field(repr=False)


class Ingestor:
    def __init__(self, store: Store, tsdb: TSDB, max_delay: float = 0.05,
                 max_samples: int = 50_000) -> None:
        self.store = store
        self.tsdb = tsdb
        self.max_delay = max_delay
        self.max_samples = max_samples
        self._queue: list[_Item] = []
        self._queued_samples = 0
        self._wake: asyncio.Event | None = None
        self._acked: dict[str, int] = {}
        self.samples_stored = 0
        self.batches_stored = 0
        self.replays = 0
        self._task: asyncio.Task[None] | None = None

    def acked(self, agent_id: str) -> int:
        seq = self._acked.get(agent_id)
        if seq is None:
            raw = self.store.get(f"agentseq/{agent_id}")
            seq = self._acked[agent_id] = int(raw) if raw else 0
        return seq

    async def submit(self, agent_id: str, org: str, seq: int, samples: Sequence[Sample],
                     compact: Compact | None = None) -> bool:
        """Resolves once the batch is durably stored (True) or known as a replay (False)."""
        if seq <= self.acked(agent_id) and (compact is None or not compact.defs):
            self.replays += 1
            return False
        loop = asyncio.get_running_loop()
        item = _Item(agent_id, org, seq, samples, compact, loop.create_future())
        self._queue.append(item)
        self._queued_samples += len(samples) + (len(compact.values) if compact else 0)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        return await item.done

    async def run(self) -> None:
        self._wake = self._wake or asyncio.Event()
        while True:
            await self._wake.wait()
            self._wake.clear()
            deadline = time.monotonic() + self.max_delay
            while self._queued_samples < self.max_samples and time.monotonic() < deadline:
                await asyncio.sleep(min(0.01, self.max_delay))
            await self.flush()

    async def flush(self) -> None:
        items, self._queue, self._queued_samples = self._queue, [], 0
        if not items:
            return
        batch = Batch()
        late = late_before()  # samples older than this are rolled up again (tsdb.py)
        ahead = ahead_from()  # and from this on too far ahead for the head
        results: list[tuple[_Item, bool]] = []
        head: list[tuple[bytes, bytes]] = []  # agents' batches as head entries
        n = 0
        try:
            for it in items:
                c = it.compact
                if c is not None and c.defs:
                    sid_for = self.tsdb.sid_for
                    new = [sid_for(batch, it.org, m, labels) for m, labels in c.defs]
                    c.sids.extend(new)
                    src = it.agent_id.encode()
                    for sid in new:  # where the head's readers find the series' samples
                        batch.put(f"{SRC_PREFIX}{sid:08x}", src)
                if it.seq <= self.acked(it.agent_id):
                    results.append((it, False))
                    continue
                if it.samples:
                    n += self.tsdb.add(batch, it.org, it.samples)
                if c is not None and c.refs:
                    if late <= c.t_ms < ahead and c.t_ms >= self.tsdb.head_closed:
                        # the whole batch as one head entry (sealed into blocks later)
                        head.append((head_key_bytes(it.agent_id, c.t_ms, it.seq), head_value(
                            map(c.sids.__getitem__, c.refs), c.values)))
                        n += len(c.refs)
                    else:
                        n += _add_compact(batch, c)
                        if c.t_ms < late:
                            self.tsdb.mark_late(batch, {c.sids[r] for r in c.refs}, c.t_ms)
                self._acked[it.agent_id] = it.seq
                batch.put(f"agentseq/{it.agent_id}", str(it.seq).encode())
                results.append((it, True))
            if batch or head:
                await asyncio.to_thread(self.tsdb.write_with_head, batch, head, True)
            self.tsdb.settle(True)
        except Exception as exc:
            # nothing of this group is stored: forget the seqs so replays are taken again
            self.tsdb.settle(False)
            for it, _ in results:
                self._acked.pop(it.agent_id, None)
            log.exception("storing metrics failed")
            for it in items:
                if not it.done.done():
                    it.done.set_exception(exc)
            return
        self.samples_stored += n
        self.batches_stored += sum(1 for _, stored in results if stored)
        self.replays += sum(1 for _, stored in results if not stored)
        for it, stored in results:
            if not it.done.done():
                it.done.set_result(stored)


def _add_compact(batch: Batch, c: Compact) -> int:
    """Put the compact samples of a batch not written to the head (late, far ahead of our
    clock, or in a bucket being sealed) into
    ``batch.samples`` one by one: the keys and values of ``TSDB.add``,
    ``tsdb.sample_key(sid, t_ms)`` -> big-endian double, made inline here as bytes."""
    append = batch.samples.append
    pack = _DOUBLE.pack
    sids = c.sids
    head, tail = sample_key_parts(c.t_ms)
    for ref, value in zip(c.refs, c.values, strict=True):
        append((b"%b%08x%b" % (head, sids[ref], tail), pack(value)))
    return len(c.refs)
