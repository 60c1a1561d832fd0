"""The agent's on-disk spool of metric batches."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest

from agent import spool as spool_mod
from agent.spool import Spool
from overcast.agent.v1 import agent_pb2


def _samples(n: int = 3, v: float = 1.0) -> list[agent_pb2.Sample]:
    return [agent_pb2.Sample(metric=f"m{i}", labels={"k": "v"}, value=v, time_ms=1000) for i in range(n)]


def _seqs(sp: Spool, after: int = 0) -> list[int]:
    return [b.seq for b in sp.pending(after)]


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".batch"))


def test_appends_in_order_one_file_each(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    assert sp.next_seq() == 1
    batches = [sp.append(_samples(v=float(i))) for i in range(3)]
    assert [b.seq for b in batches] == [1, 2, 3] and sp.next_seq() == 4
    assert _files(tmp_path / "spool") == ["0000000000000001.batch", "0000000000000002.batch",
                                          "0000000000000003.batch"]
    got = list(sp.pending())
    assert [b.seq for b in got] == [1, 2, 3]
    assert [b.samples[0].value for b in got] == [0.0, 1.0, 2.0]
    assert got[0] == batches[0] and got[0].dropped == 0
    assert _seqs(sp, after=2) == [3]
    assert sp.stats() == {"batches": 3, "bytes": sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.batch")),
                          "dropped_total": 0, "acked_seq": 0}


def test_private_directory_and_files(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    sp = Spool(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    sp.append(_samples())
    sp.ack(1)
    sp.append(_samples())
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    assert {p.name for p in d.iterdir()} == {"0000000000000002.batch", "acked"}  # no temp files left


def test_seq_survives_reopening(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for _ in range(3):
        sp.append(_samples())
    again = Spool(tmp_path)
    assert again.next_seq() == 4
    assert _seqs(again) == [1, 2, 3]
    assert again.append(_samples()).seq == 4


def test_ack_deletes_and_is_durable(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for _ in range(4):
        sp.append(_samples())
    sp.ack(2)
    assert _files(tmp_path) == ["0000000000000003.batch", "0000000000000004.batch"]
    assert _seqs(sp) == [3, 4] and sp.stats()["acked_seq"] == 2 and sp.stats()["batches"] == 2
    sp.ack(1)  # older: changes nothing
    assert sp.stats()["acked_seq"] == 2
    sp.ack(4)
    assert _files(tmp_path) == []
    again = Spool(tmp_path)
    assert again.next_seq() == 5  # from the acked file: the spool is empty
    assert again.stats() == {"batches": 0, "bytes": 0, "dropped_total": 0, "acked_seq": 4}


def test_ack_beyond_what_was_spooled_raises_the_next_seq(tmp_path: Path) -> None:
    # the controller's Welcome says it has seq 100 (e.g. the state directory was restored)
    sp = Spool(tmp_path)
    sp.append(_samples())
    sp.ack(100)
    assert sp.next_seq() == 101 and sp.append(_samples()).seq == 101
    assert Spool(tmp_path).next_seq() == 102


def test_leftovers_of_a_crash_are_cleaned_on_open(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for _ in range(3):
        sp.append(_samples())
    (tmp_path / "acked").write_text("2\n")  # ack recorded, crash before the deletions
    (tmp_path / ".0000000000000004.batch.tmp").write_bytes(b"half")  # crash mid-write
    again = Spool(tmp_path)
    assert _files(tmp_path) == ["0000000000000003.batch"]
    assert not (tmp_path / ".0000000000000004.batch.tmp").exists()
    assert _seqs(again) == [3] and again.next_seq() == 4


def _batch_size(n: int) -> int:
    # what one file of a batch of n samples takes (header + payload), dropped at 0
    return 12 + agent_pb2.MetricBatch(seq=1, samples=_samples(n)).ByteSize()


def test_size_bound_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    size = _batch_size(20)
    sp = Spool(tmp_path, max_bytes=3 * size + size // 2)  # room for three
    kept = [sp.append(_samples(20)) for _ in range(3)]
    assert all(b.dropped == 0 for b in kept)
    fourth = sp.append(_samples(20))
    assert fourth.dropped == 1  # the batch that made room says so
    assert _seqs(sp) == [2, 3, 4]
    fifth = sp.append(_samples(20))
    assert fifth.dropped == 1 and _seqs(sp) == [3, 4, 5]
    st = sp.stats()
    assert st["dropped_total"] == 2 and st["batches"] == 3 and st["bytes"] <= sp.max_bytes
    assert [b.dropped for b in sp.pending()] == [0, 1, 1]  # as written to disk
    sixth = Spool(tmp_path, max_bytes=10 * size).append(_samples(20))
    assert sixth.dropped == 0  # nothing dropped since the fifth
    assert Spool(tmp_path).stats()["dropped_total"] == 2  # the total survives reopening


def test_one_batch_dropping_several(tmp_path: Path) -> None:
    small = _batch_size(1)
    sp = Spool(tmp_path, max_bytes=_batch_size(20) + small + small // 2)  # big + one small
    for _ in range(4):
        sp.append(_samples(1))
    big = sp.append(_samples(20))
    assert big.dropped == 3 and sp.stats()["dropped_total"] == 3
    assert _seqs(sp) == [4, 5] and sp.stats()["bytes"] <= sp.max_bytes


def test_a_batch_larger_than_the_bound_is_still_written(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=100)
    sp.append(_samples(1))
    b = sp.append(_samples(50))
    assert b.dropped == 1 and _seqs(sp) == [2]


def test_full_disk_gives_up_the_oldest_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Spool(tmp_path)
    for _ in range(2):
        sp.append(_samples())
    real = spool_mod.write_atomic
    fails = [True, True]  # the batch, then the dropped counter: the disk is really full

    def full(path: Path, data: bytes, mode: int = 0o600) -> None:
        if fails:
            fails.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(spool_mod, "write_atomic", full)
    b = sp.append(_samples())
    assert b.seq == 3 and b.dropped == 1 and _seqs(sp) == [2, 3]
    assert Spool(tmp_path).stats()["dropped_total"] == 1  # recorded once there was room
    fails.extend([True])
    sp.ack(2)  # the ack record cannot be written: the batches go all the same
    assert _seqs(sp) == [3] and sp.stats()["acked_seq"] == 2


def test_other_write_errors_raise_and_keep_the_seq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Spool(tmp_path)
    sp.append(_samples())

    def broken(path: Path, data: bytes, mode: int = 0o600) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(spool_mod, "write_atomic", broken)
    with pytest.raises(OSError):
        sp.append(_samples())
    monkeypatch.undo()
    assert sp.append(_samples()).seq == 2 and _seqs(sp) == [1, 2]


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"garbage, not a batch at all"),
    lambda p: p.write_bytes(p.read_bytes()[:-5]),       # truncated payload
    lambda p: p.write_bytes(p.read_bytes()[:7]),        # truncated header
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])),  # flipped bit
])
def test_a_damaged_file_is_skipped_deleted_and_counted(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    sp = Spool(tmp_path)
    for _ in range(3):
        sp.append(_samples())
    victim = tmp_path / "0000000000000002.batch"
    damage(victim)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        assert _seqs(sp) == [1, 3]
    assert "0000000000000002.batch" in caplog.text
    assert not victim.exists()
    assert sp.stats()["dropped_total"] == 1 and sp.stats()["batches"] == 2
    assert sp.append(_samples()).dropped == 1  # carried in the next batch


def test_a_file_holding_another_seq_is_damaged(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(_samples())
    sp.append(_samples())
    os.replace(tmp_path / "0000000000000001.batch", tmp_path / "0000000000000002.batch")
    (tmp_path / "0000000000000001.batch").write_bytes((tmp_path / "0000000000000002.batch").read_bytes())
    assert _seqs(sp) == [1]


def test_pending_reads_lazily_and_tolerates_changes_while_iterating(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for _ in range(4):
        sp.append(_samples())
    it = sp.pending()
    assert next(it).seq == 1
    (tmp_path / "0000000000000002.batch").unlink()  # gone behind its back: read only now
    sp.ack(3)                                       # acknowledged meanwhile
    sp.append(_samples())                           # appended meanwhile: the next call's
    assert [b.seq for b in it] == [4]
    assert _seqs(sp) == [4, 5]
    assert sp.stats()["batches"] == 2


def test_pending_takes_its_snapshot_when_called(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(_samples())
    it = sp.pending()
    sp.append(_samples())  # after the call, before the first next()
    assert [b.seq for b in it] == [1]


def test_unreadable_counters_start_from_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sp = Spool(tmp_path)
    sp.append(_samples())
    (tmp_path / "acked").write_text("not a number")
    (tmp_path / "dropped").write_text("1")
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        again = Spool(tmp_path)
    assert again.stats()["acked_seq"] == 0 and again.stats()["dropped_total"] == 0
    assert again.next_seq() == 2 and "acked" in caplog.text
