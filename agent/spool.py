"""The on-disk, bounded queue of metric batches waiting for the controller's acknowledgement."""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from agent.state import private_dir, write_atomic
from overcast.agent.v1 import agent_pb2

log = logging.getLogger(__name__)

# Each file: magic, payload length, CRC-32 of the payload, then the serialized MetricBatch.
# A protobuf cut at a field boundary still parses (with samples missing), so the length and
# checksum are what tell a damaged file from a good one.
_MAGIC = b"OCB1"
_HEADER = struct.Struct(">4sII")
_NAME = re.compile(r"^(\d{16})\.batch$")
_ACKED = "acked"      # the highest seq the controller acknowledged
_DROPPED = "dropped"  # "<dropped_total> <dropped since the last batch>"


class Spool:
    """Batches in seq order, one file each (`0000000000000042.batch`, 0600, written
    atomically) in a 0700 directory, at most max_bytes in all: past that the oldest go first
    and are counted as dropped. Seqs and counters survive restarts. One asyncio loop uses
    it: the collector may append while the sender iterates `pending()`."""

    def __init__(self, directory: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = private_dir(Path(directory))
        self.max_bytes = max_bytes
        self._acked = self._read_ints(_ACKED, 1)[0]
        self._dropped_total, self._carry = self._read_ints(_DROPPED, 2)
        # seq -> file size, oldest first (appends only ever add a higher seq); sizes only,
        # the batches themselves stay on disk
        self._files: dict[int, int] = {}
        found: list[tuple[int, int]] = []
        for entry in os.scandir(self.directory):
            m = _NAME.match(entry.name)
            if m is None:
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    _unlink(Path(entry.path))  # a write a crash cut short: never renamed
                continue
            seq = int(m.group(1))
            if seq <= self._acked:
                _unlink(Path(entry.path))  # acknowledged, the deletion interrupted
                continue
            try:
                found.append((seq, entry.stat().st_size))
            except FileNotFoundError:
                continue
        for seq, size in sorted(found):
            self._files[seq] = size
        self._bytes = sum(self._files.values())
        self._last = max(max(self._files, default=0), self._acked)

    # ---- API --------------------------------------------------------------------------

    def next_seq(self) -> int:
        """The seq the next append will take: above every batch spooled or acknowledged."""
        return self._last + 1

    def append(self, samples: list[agent_pb2.Sample]) -> agent_pb2.MetricBatch:
        """Spool samples as the next batch and return it. Makes room first by dropping the
        oldest batches (the batch says how many were dropped since the previous one). Raises
        OSError only if the file cannot be written even with the whole spool given up."""
        seq = self._last + 1
        batch = agent_pb2.MetricBatch(seq=seq, samples=samples, dropped=self._carry)
        size = _HEADER.size + batch.ByteSize()
        victims: list[int] = []
        room = self._bytes
        for old, old_size in self._files.items():
            if room + size <= self.max_bytes:
                break
            victims.append(old)
            room -= old_size
            batch.dropped = self._carry + len(victims)
            size = _HEADER.size + batch.ByteSize()
        # a batch larger than max_bytes alone is still written: it is the newest measurement
        self._drop(victims)
        batch.dropped = self._carry
        data = _encode(batch)
        while True:
            try:
                write_atomic(self._path(seq), data)
                break
            except OSError as e:
                # a full disk is when metrics matter most: give up the oldest batch for it
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._files:
                    raise
                log.warning("spool: disk full, dropping the oldest batch")
                self._drop([next(iter(self._files))])
                batch.dropped = self._carry
                data = _encode(batch)
        self._files[seq] = len(data)
        self._bytes += len(data)
        self._last = seq
        if self._carry:
            # the batch now carries them; a crash before this write reports them twice,
            # never not at all
            self._carry = 0
            self._write_counters()
        return batch

    def pending(self, after_seq: int = 0) -> Iterator[agent_pb2.MetricBatch]:
        """The batches with seq > after_seq, oldest first, read from disk one at a time. The
        list of seqs is taken now: batches appended later wait for the next call; batches
        acknowledged or dropped meanwhile are skipped."""
        seqs = [s for s in self._files if s > after_seq]
        return self._read_each(seqs)

    def ack(self, seq: int) -> None:
        """The controller has stored every batch up to seq: forget them, durably. Also
        raises the next seq above seq (the controller ignores batches at or below it)."""
        if seq <= self._acked:
            return
        self._acked = seq
        try:
            write_atomic(self.directory / _ACKED, f"{seq}\n".encode())
        except OSError as e:
            # deleting what the controller has is what frees a full disk: go on; the next
            # Welcome's acked_seq repairs the record if the agent restarts before
            log.warning("spool: cannot record ack %d: %s", seq, e)
        for s in [s for s in self._files if s <= seq]:
            self._forget(s)
        self._last = max(self._last, seq)

    def stats(self) -> dict[str, int]:
        return {
            "batches": len(self._files),
            "bytes": self._bytes,
            "dropped_total": self._dropped_total,
            "acked_seq": self._acked,
        }

    # ---- inside -----------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}.batch"

    def _read_each(self, seqs: list[int]) -> Iterator[agent_pb2.MetricBatch]:
        for seq in seqs:
            if seq not in self._files:
                continue
            try:
                data = self._path(seq).read_bytes()
            except FileNotFoundError:
                self._forget(seq)  # removed behind our back
                continue
            except OSError as e:
                self._corrupt(seq, f"unreadable: {e}")
                continue
            batch, why = _decode(data, seq)
            if batch is None:
                self._corrupt(seq, why)
                continue
            yield batch

    def _corrupt(self, seq: int, why: str) -> None:
        name = self._path(seq).name
        log.warning("spool: %s is damaged (%s): deleted, counted as dropped", name, why)
        self._drop([seq])

    def _drop(self, seqs: list[int]) -> None:
        if not seqs:
            return
        # counted before deleting: a crash in between over-counts rather than forgets
        self._dropped_total += len(seqs)
        self._carry += len(seqs)
        self._write_counters()
        for s in seqs:
            self._forget(s)

    def _forget(self, seq: int) -> None:
        size = self._files.pop(seq, None)
        if size is not None:
            self._bytes -= size
        _unlink(self._path(seq))

    def _write_counters(self) -> None:
        try:
            text = f"{self._dropped_total} {self._carry}\n"
            write_atomic(self.directory / _DROPPED, text.encode())
        except OSError as e:
            # the counts in memory stay right and are written again at the next change;
            # on a full disk this must not stop the drop that makes room
            log.warning("spool: cannot record the dropped count: %s", e)

    def _read_ints(self, name: str, n: int) -> list[int]:
        path = self.directory / name
        try:
            values = [int(v) for v in path.read_text().split()]
            if len(values) != n or min(values) < 0:
                raise ValueError(f"expected {n} counts")
        except FileNotFoundError:
            return [0] * n
        except (OSError, ValueError) as e:
            log.warning("spool: %s unreadable (%s): starting it from 0", path, e)
            return [0] * n
        return values


def _encode(batch: agent_pb2.MetricBatch) -> bytes:
    payload = batch.SerializeToString()
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode(data: bytes, seq: int) -> tuple[agent_pb2.MetricBatch | None, str]:
    if len(data) < _HEADER.size:
        return None, "truncated header"
    magic, length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if magic != _MAGIC:
        return None, "not a batch file"
    if len(payload) != length:
        return None, f"{len(payload)} bytes of {length}"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch"
    batch = agent_pb2.MetricBatch()
    try:
        batch.ParseFromString(payload)
    except Exception as e:  # protobuf's DecodeError, or worse
        return None, f"undecodable: {e}"
    if batch.seq != seq:
        return None, f"holds seq {batch.seq}"
    return batch, ""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        # a file that will not go is only space: forgotten all the same, never fatal
        log.warning("spool: cannot delete %s: %s", path.name, e)
