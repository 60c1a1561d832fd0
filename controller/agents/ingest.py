"""Metric ingest with group commit: batches from many agents wait at most ``max_delay`` and
are written together in one synced store write, then each agent is acknowledged. A batch
whose sequence number is at or below the agent's stored one is a replay: acknowledged,
not stored again (exactly once, across controller crashes and agent reconnects)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.monitor.tsdb import TSDB
from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

Sample = tuple[str, Mapping[str, str], float, int]  # metric, labels, value, time_ms


@dataclass
class _Item:
    agent_id: str
    org: str
    seq: int
    samples: Sequence[Sample]
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

    async def submit(self, agent_id: str, org: str, seq: int, samples: Sequence[Sample]) -> bool:
        """Resolves once the batch is durably stored (True) or known as a replay (False)."""
        if seq <= self.acked(agent_id):
            self.replays += 1
            return False
        loop = asyncio.get_running_loop()
        item = _Item(agent_id, org, seq, samples, loop.create_future())
        self._queue.append(item)
        self._queued_samples += len(samples)
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
        results: list[tuple[_Item, bool]] = []
        n = 0
        try:
            for it in items:
                if it.seq <= self.acked(it.agent_id):
                    results.append((it, False))
                    continue
                n += self.tsdb.add(batch, it.org, it.samples)
                self._acked[it.agent_id] = it.seq
                batch.put(f"agentseq/{it.agent_id}", str(it.seq).encode())
                results.append((it, True))
            if batch:
                await asyncio.to_thread(self.store.write, batch, True)
        except Exception as exc:
            # nothing of this group is stored: forget the seqs so replays are taken again
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
