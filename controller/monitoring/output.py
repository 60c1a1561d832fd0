"""A monitoring job's output: what the install (or uninstall) prints on the machine, kept with
the job as runs keep theirs (``GET /api/v2/jobs/{id}/output`` reads it back) and published
live as ``output`` events of the job. Written every FLUSH_EVERY seconds and once at the end;
at most ``limit`` bytes are kept (the rest is counted)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from controller.events.bus import EventBus
from controller.events.model import Event
from controller.exec.service import output_key
from controller.store.base import Batch, Store

FLUSH_EVERY = 0.5
CHUNK = 16_384


class JobOutput:
    """An OutputSink for one machine of one job; ``run`` writes it out until ``close``."""

    def __init__(self, store: Store, bus: EventBus, org: str, job_id: str,
                 machine: dict[str, Any], limit: int) -> None:
        self.store, self.bus = store, bus
        self.org, self.job_id = org, job_id
        self.machine, self.name = str(machine["id"]), str(machine.get("name") or machine["id"])
        self.limit = limit
        self.kept = self.total = 0
        self.seq = 0
        self._chunks: list[tuple[int, dict[str, str]]] = []
        self._closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._flusher())

    def output(self, stream: str, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.kept
        if room <= 0 or not data:
            return
        text = data[:room].decode("utf-8", "replace")
        self.kept += min(room, len(data))
        self._add(stream, text)
        self.bus.publish([Event("output", "job", self.job_id, self.org, time.time(), {
            "machine": self.machine, "name": self.name, "stream": stream, "data": text})])

    def line(self, text: str) -> None:
        """A line of the controller's own (on stderr, as runs say what went wrong)."""
        self.output("stderr", f"overcast: {text}\n".encode())

    def _add(self, stream: str, text: str) -> None:
        if self._chunks:
            last = self._chunks[-1][1]
            if last["stream"] == stream and len(last["data"]) < CHUNK:
                last["data"] += text
                return
        self.seq += 1
        self._chunks.append((self.seq, {"machine": self.machine, "name": self.name,
                                        "stream": stream, "data": text}))

    def _write(self) -> None:
        chunks, self._chunks = self._chunks, []
        b = Batch()
        for seq, chunk in chunks:
            b.put(output_key(self.org, self.job_id, seq), json.dumps(chunk).encode())
        if b:
            self.store.write(b)

    async def _flusher(self) -> None:
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), FLUSH_EVERY)
            except TimeoutError:
                pass
            self._write()

    async def close(self) -> None:
        """Write what is left; the output is complete when this returns."""
        if self.total > self.kept:
            self._add("stderr", "\n[overcast: output truncated]\n")
        self._closed.set()
        await self._task
        self._write()
