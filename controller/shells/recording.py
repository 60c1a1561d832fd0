"""Shell recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a
JSON header line, then one ``[seconds, code, data]`` line per event: "o" for output, "r"
for a resize ("COLSxROWS"). What is typed is never recorded (passwords are typed).

Output bytes become text through an incremental UTF-8 decoder (errors replaced), so a
character split across two chunks is written whole: for UTF-8 output, the "o" events joined
are exactly the bytes the client received.

Nothing here blocks the event loop: events are buffered in memory and written by a thread
at most every FLUSH_INTERVAL seconds (sooner once FLUSH_BYTES are waiting). Only the
standard library is used: the CLI reads recordings with :func:`parse` too."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLUSH_INTERVAL = 0.1      # seconds events may wait in memory
FLUSH_BYTES = 64 * 1024   # bytes that are written at once, without waiting
CONTENT_TYPE = "application/x-asciicast"


@dataclass
class RecordingStats:
    bytes: int = 0            # the file's size
    truncated: bool = False   # stopped at the size limit; the shell went on unrecorded
    error: str = ""           # the file could not be written (the shell went on)


class Recorder:
    """One recording, written to ``path`` (created 0600, its directory 0700) as events come.
    ``output`` and ``resize`` never block; ``close`` (awaited once, by the relay) writes what
    is left and closes the file."""

    def __init__(self, path: Path, max_bytes: int, width: int, height: int, term: str,
                 title: str, command: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock
        self.stats = RecordingStats()
        self._start = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf: list[bytes] = []
        self._buffered = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._stopped = False
        self._fd = -1
        env = {"TERM": term}
        if command:
            env["SHELL"] = command  # what runs instead of the login shell, when asked
        header: dict[str, Any] = {"version": 2, "width": width, "height": height,
                                  "timestamp": int(time.time()), "env": env, "title": title}
        self._append(json.dumps(header, ensure_ascii=False).encode() + b"\n")
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the file; raises OSError when it cannot be (the caller goes on unrecorded)."""
        header = b"".join(self._buf)  # written at once: the file is valid from the start
        self._buf.clear()
        self._buffered = 0
        self._fd = await asyncio.to_thread(self._create, header)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def _create(self, header: bytes) -> int:
        d = self.path.parent
        d.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d.parent, 0o700)  # recordings hold what was shown on screens: owner only
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, header)
        except OSError:
            os.close(fd)
            raise
        return fd

    # ---- events -------------------------------------------------------------------------
    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def _event(self, code: str, text: str) -> None:
        if self._stopped:
            return
        t = round(self.clock() - self._start, 6)
        self._append(json.dumps([t, code, text], ensure_ascii=False).encode() + b"\n")

    def _append(self, line: bytes) -> None:
        if self.stats.bytes + len(line) > self.max_bytes:
            self._stopped = True  # the limit: nothing more is kept, not even a partial line
            self.stats.truncated = True
            return
        self.stats.bytes += len(line)
        self._buf.append(line)
        self._buffered += len(line)
        self._wake.set()
        if self._buffered >= FLUSH_BYTES:
            self._full.set()

    # ---- writing ------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            if not self._buf:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and self._buffered < FLUSH_BYTES:
                try:  # gather what comes within the interval: one write instead of many
                    await asyncio.wait_for(self._full.wait(), FLUSH_INTERVAL)
                except TimeoutError:
                    pass
            chunk = b"".join(self._buf)
            self._buf.clear()
            self._buffered = 0
            self._full.clear()
            if self.stats.error:
                continue  # the file broke: events are dropped, the shell goes on
            try:
                await asyncio.to_thread(self._write, chunk)
            except OSError as exc:
                self.stats.error = f"the recording could not be written: {exc.strerror or exc}"
                self._stopped = True

    def _write(self, data: bytes) -> None:
        _write_all(self._fd, data)

    async def close(self) -> RecordingStats:
        """Write the rest (a character left incomplete by the last chunk becomes U+FFFD) and
        close the file. Idempotent."""
        if self._closing:
            return self.stats
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await asyncio.to_thread(os.close, fd)
        return self.stats


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def parse(text: str) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    """The header and events of an asciicast v2 recording; ValueError when it is not one.
    A last line cut short (a controller killed mid-write) is left out."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("the recording is empty")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ValueError("not an asciicast v2 recording")
    events: list[tuple[float, str, str]] = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, code, data = json.loads(line)
        except ValueError:
            if n == len(lines):
                break
            raise ValueError(f"line {n} of the recording is not an event") from None
        events.append((float(t), str(code), str(data)))
    return header, events
