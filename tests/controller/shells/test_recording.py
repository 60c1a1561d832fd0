"""Recordings (asciicast v2): what the client received is what the "o" events replay, even
with characters split across chunks; resizes are events, the size limit stops the file
without breaking it, files are private, and writing never waits on the disk per event."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

from controller.shells.model import parse_control
from controller.shells.recording import Recorder, parse


def _recorder(tmp_path: Path, max_bytes: int = 1 << 20) -> Recorder:
    return Recorder(tmp_path / "recordings" / "org1" / "a.cast", max_bytes, 80, 24,
                    "xterm-256color", "web-1")


async def test_output_split_inside_characters_replays_the_same_bytes(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    await rec.start()
    sent = "héllo wörld ✓ 日本語 🎉\r\n".encode() * 50
    chunks = [sent[i:i + 7] for i in range(0, len(sent), 7)]  # 7 splits most characters
    for c in chunks:
        rec.output(c)
    rec.resize(100, 30)
    rec.output(b"after\r\n")
    stats = await rec.close()
    text = rec.path.read_text()
    header, events = parse(text)
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["env"] == {"TERM": "xterm-256color"} and header["title"] == "web-1"
    assert "".join(d for _, c, d in events if c == "o").encode() == sent + b"after\r\n"
    assert ("r", "100x30") in [(c, d) for _, c, d in events]
    times = [t for t, _, _ in events]
    assert times == sorted(times) and times[0] >= 0
    assert stats.bytes == len(text.encode()) and not stats.truncated


async def test_invalid_utf8_is_replaced_and_an_incomplete_tail_is_kept(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    await rec.start()
    rec.output(b"ok \xff\xfe ")
    rec.output("é".encode()[:1])  # the shell ends in the middle of a character
    await rec.close()
    _, events = parse(rec.path.read_text())
    assert "".join(d for _, c, d in events if c == "o") == "ok \ufffd\ufffd \ufffd"


async def test_the_size_limit_stops_recording_at_a_whole_line(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, max_bytes=2000)
    await rec.start()
    for i in range(200):
        rec.output(f"line {i}\r\n".encode())
    stats = await rec.close()
    assert stats.truncated and stats.bytes <= 2000
    assert rec.path.stat().st_size == stats.bytes
    header, events = parse(rec.path.read_text())
    assert events and events[-1][2].startswith("line ")
    assert all(json.loads(line) for line in rec.path.read_text().splitlines())


async def test_files_are_private(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    await rec.start()
    await rec.close()
    assert stat.S_IMODE(os.stat(rec.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rec.path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(rec.path.parent.parent).st_mode) == 0o700


async def test_events_never_block_the_loop_and_are_written_in_batches(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, max_bytes=64 << 20)
    await rec.start()
    chunk = b"x" * 1000 + b"\r\n"
    worst = 0.0
    for _ in range(5000):  # 5 MB of output
        t = time.perf_counter()
        rec.output(chunk)
        worst = max(worst, time.perf_counter() - t)
    assert worst < 0.01, f"one event took {worst * 1000:.1f} ms"
    await asyncio.sleep(0.3)  # the flusher wrote (in a thread) while we waited
    assert rec.path.stat().st_size > 1_000_000
    await rec.close()
    _, events = parse(rec.path.read_text())
    assert len(events) == 5000


def test_parse_refuses_what_is_no_recording_and_skips_a_cut_last_line() -> None:
    for bad in ("", "{}\n", '{"version": 1}\n'):
        try:
            parse(bad)
        except ValueError:
            continue
        raise AssertionError(f"parsed {bad!r}")
    header, events = parse('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "a"]\n[0.2, "o"')
    assert events == [(0.1, "o", "a")]


def test_control_frames_are_told_from_keystrokes() -> None:
    assert parse_control('{"type":"resize","cols":100,"rows":30}') == (True, _r(100, 30))
    assert parse_control('{"type":"resize","cols":0,"rows":30}') == (True, None)
    assert parse_control('{"type":"resize","cols":true,"rows":30}') == (True, None)
    assert parse_control('{"type":"resize","cols":5000,"rows":30}') == (True, None)
    assert parse_control("ls -l\r") == (False, None)
    assert parse_control('{"a": 1}') == (False, None)
    assert parse_control('{"type": "other"}') == (False, None)
    assert parse_control('{"type": broken') == (False, None)


def _r(cols: int, rows: int) -> object:
    from controller.shells.model import Resize

    return Resize(cols, rows)
