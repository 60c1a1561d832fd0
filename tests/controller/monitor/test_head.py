"""The TSDB's head: an agent's compact batch stored as one entry, read back per series before
it is sealed, sealed into one block per series and bucket, and read the same afterwards;
rollups over blocks the same as over samples stored one by one; late samples beside blocks;
sealing in slices or twice writing the same blocks; batches far ahead of the clock kept out;
many series read in a row through a Reader (one cursor, an agent's series taken from the
same entries) the same as one by one."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from controller.agents import ingest as ingest_mod
from controller.agents.ingest import Compact, Ingestor
from controller.monitor import rollup
from controller.monitor.compact import Compactor, run_once
from controller.monitor.rollup import HOUR, MINUTE
from controller.monitor.tsdb import BLOCK_MS, TSDB, Reader, head_key_bytes, head_value
from controller.store import Batch, open_store

T0 = 1_699_999_200_000  # a whole hour (ms)
STEP = 10_000
SERIES = [("cpu", {"machine_id": "m1"}), ("net", {"machine_id": "m1"}),
          ("load", {"machine_id": "m1"})]


def value(j: int, i: int) -> float:
    return float(i * (j + 1)) if j != 2 else float((i * 7) % 5)  # two counters, a gauge


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TSDB]:
    # the ingest path writes to the head what is not late (now - 60 s): here, from T0 on
    monkeypatch.setattr(ingest_mod, "late_before", lambda: T0 - HOUR)
    d = TSDB(open_store(tmp_path / "db"))
    d.head_from = d.head_closed = T0 - HOUR
    yield d
    d.store.close()


def send(db: TSDB, batches: list[tuple[str, int, int]], start_seq: int = 1) -> None:
    """(agent, first sample index, count) -> batches through the ingest path, every 10 s."""
    async def go() -> None:
        ing = Ingestor(db.store, db, max_delay=0)
        for agent, first, count in batches:
            table: array[int] = array("q")
            labels: list[tuple[str, Mapping[str, str]]] = [
                (m, {**lab, "machine_id": agent}) for m, lab in SERIES]
            for k, i in enumerate(range(first, first + count)):
                c = Compact(table, labels if k == 0 else [], [0, 1, 2],
                            [value(j, i) for j in range(3)], T0 + i * STEP)
                task = asyncio.create_task(ing.submit(agent, "o1", start_seq + k, [], c))
                await asyncio.sleep(0)
                await ing.flush()
                assert await task is True
    asyncio.run(go())


def sids(db: TSDB, agent: str) -> list[int]:
    out = []
    for m, _ in SERIES:
        out += [s.sid for s in db.select("o1", m) if s.labels["machine_id"] == agent]
    return out


def expected(j: int, first: int, count: int) -> tuple[list[int], list[float]]:
    return ([T0 + i * STEP for i in range(first, first + count)],
            [value(j, i) for i in range(first, first + count)])


def head_keys(db: TSDB) -> list[str]:
    return [k for k, _ in db.store.scan("tsh/", keys_only=True)]


def raw_keys(db: TSDB, sid: int) -> list[str]:
    return [k for k, _ in db.store.scan("tsr/", keys_only=True) if f"/{sid:08x}/" in k]


def test_a_batch_is_one_head_entry_read_back_per_series_then_one_block_per_bucket(db: TSDB) -> None:
    send(db, [("a1", 0, 90), ("a2", 0, 90)])  # 15 minutes: three buckets
    assert len(head_keys(db)) == 180  # one entry per batch, none per sample
    a1 = sids(db, "a1")
    assert all(raw_keys(db, s) == [] for s in a1)
    for j, s in enumerate(a1):
        assert db.read_columns(s, 0, T0 + HOUR) == expected(j, 0, 90)
    before = {s: db.read_columns(s, T0 + 95_000, T0 + 612_345) for s in a1}
    assert db.last_before(a1[0], T0 + 305_000, HOUR) == (T0 + 300_000, value(0, 30))

    n, done = db.seal(T0 + 10 * MINUTE)  # the first two buckets end by then
    assert (n, done) == (2 * 60 * 3, True)
    assert len(head_keys(db)) == 60  # the third bucket's entries stay
    assert db.head_from == T0 + 10 * MINUTE
    keys = raw_keys(db, a1[1])
    assert keys == [f"tsr/{T0 // HOUR:06x}/{a1[1]:08x}/{ms:06x}~" for ms in (0, BLOCK_MS)]
    for j, s in enumerate(a1):
        assert db.read_columns(s, 0, T0 + HOUR) == expected(j, 0, 90)
        assert db.read_columns(s, T0 + 95_000, T0 + 612_345) == before[s]
        assert db.read_columns(s, 0, T0 + HOUR, limit=40) == expected(j, 0, 40)
    # the sample before, from a block, the head, or the bucket before
    assert db.last_before(a1[0], T0 + 305_000, HOUR) == (T0 + 300_000, value(0, 30))
    assert db.last_before(a1[0], T0 + 299_999, HOUR) == (T0 + 290_000, value(0, 29))
    assert db.last_before(a1[0], T0 + HOUR, HOUR) == (T0 + 890_000, value(0, 89))
    assert db.last_before(a1[0], T0 + HOUR, 10 * STEP) is None
    assert db.read_after(a1[2], T0 + 300_000, T0 + 320_000) == (
        value(2, 29), [T0 + 300_000, T0 + 310_000, T0 + 320_000],
        [value(2, i) for i in (30, 31, 32)])

    assert db.seal(T0 + HOUR) == (60 * 3, True)
    assert head_keys(db) == []
    for j, s in enumerate(a1 + sids(db, "a2")):
        assert db.read_columns(s, 0, T0 + HOUR) == expected(j % 3, 0, 90)


def test_sealing_in_slices_or_again_writes_the_same_blocks(tmp_path: Path, db: TSDB) -> None:
    send(db, [("a1", 0, 60), ("a2", 0, 60), ("a3", 0, 60)])
    heads = list(db.store.scan("tsh/"))
    slices = 0
    while not db.seal(T0 + HOUR, max_entries=40)[1]:
        slices += 1
    assert slices >= 5
    blocks = list(db.store.scan("tsr/"))
    assert len(blocks) == 3 * 3 * 2  # agents x series x buckets: an agent's bucket in one piece

    # a stop after the blocks were written and before the head was deleted: sealed again
    b = Batch()
    b.samples = [(k.encode(), v) for k, v in heads]
    db.store.write(b)
    db.head_from = T0 - HOUR
    assert db.seal(T0 + HOUR) == (3 * 3 * 60, True)
    assert list(db.store.scan("tsr/")) == blocks
    assert db.read_columns(sids(db, "a3")[2], 0, T0 + HOUR) == expected(2, 0, 60)


def test_late_samples_beside_blocks_are_read_in_time_order(db: TSDB) -> None:
    send(db, [("a1", 0, 30)])
    db.seal(T0 + HOUR)
    s = sids(db, "a1")[2]
    b = Batch()  # late, one by one: a new time inside the block's span, and one it holds
    db.add(b, "o1", [("load", {"machine_id": "a1"}, 99.0, T0 + 15_000),
                     ("load", {"machine_id": "a1"}, 42.0, T0 + 20_000)])
    db.store.write(b)
    times, values = db.read_columns(s, 0, T0 + HOUR)
    want = dict(zip(*expected(2, 0, 30), strict=True))
    want.update({T0 + 15_000: 99.0, T0 + 20_000: 42.0})
    assert times == sorted(want)
    assert values == [want[t] for t in sorted(want)]


def test_a_late_batch_is_not_written_to_the_head(db: TSDB) -> None:
    db.head_from = db.head_closed = T0 + HOUR  # sealed up to here: this batch's time is before
    send(db, [("a1", 0, 3)])
    assert head_keys(db) == []
    s = sids(db, "a1")[0]
    assert raw_keys(db, s) == [f"tsr/{T0 // HOUR:06x}/{s:08x}/{i * STEP:06x}" for i in range(3)]
    assert db.read_columns(s, 0, T0 + HOUR) == expected(0, 0, 3)


def test_a_batch_far_ahead_of_our_clock_goes_in_sample_by_sample(
        db: TSDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent whose clock runs an hour ahead: its batches are stored and read back, but
    not in the head (whose buckets are sealed in time order: they would wait there an hour,
    or a year); they are not late either (no hour rolled up again)."""
    monkeypatch.setattr(ingest_mod, "ahead_from", lambda: T0 + BLOCK_MS)
    send(db, [("a1", 0, 2), ("a2", 360, 3)])  # a2: an hour ahead of "now" (T0)
    s1, s2 = sids(db, "a1")[0], sids(db, "a2")[0]
    assert {k.split("/")[2] for k in head_keys(db)} == {"a1"}
    assert raw_keys(db, s2) == [f"tsr/{(T0 + HOUR) // HOUR:06x}/{s2:08x}/{i * STEP:06x}"
                                for i in range(3)]
    assert not any(True for _ in db.store.scan("tslate/", keys_only=True))
    assert db.read_columns(s2, 0, T0 + 2 * HOUR) == expected(0, 360, 3)
    assert db.read_columns(s1, 0, T0 + 2 * HOUR) == expected(0, 0, 2)


def test_rollups_over_blocks_are_those_over_samples(tmp_path: Path, db: TSDB) -> None:
    send(db, [("a1", 0, 360)])  # an hour
    ref = TSDB(open_store(tmp_path / "ref"))  # the same samples one by one
    b = Batch()
    for i in range(360):
        ref.add(b, "o1", [(m, {"machine_id": "a1"}, value(j, i), T0 + i * STEP)
                          for j, (m, _) in enumerate(SERIES)])
    ref.store.write(b)

    class Clock:
        t_ms = T0 + HOUR + 10 * MINUTE

        def __call__(self) -> float:
            return self.t_ms / 1000

    c = Compactor(db, 86_400, 30 * 86_400, clock=Clock())
    c.state.to = T0  # as if rolled up to the start
    assert not c.begin()  # the head holds everything: nothing rolled up before it is sealed
    asyncio.run(run_once(c, pause=0))  # seals, then rolls up
    assert head_keys(db) == []
    assert c.state.to == T0 + HOUR + 8 * MINUTE  # now - ROLL_DELAY
    for s_db, s_ref in zip(sids(db, "a1"), [x.sid for m, _ in SERIES
                                             for x in ref.select("o1", m)], strict=True):
        for res in (MINUTE, HOUR):
            got = rollup.read_buckets(db, s_db, res, T0, T0 + HOUR)
            b2 = Batch()
            rollup.roll_series(ref, b2, s_ref, T0, T0 + HOUR)
            ref.store.write(b2)
            assert got and got == rollup.read_buckets(ref, s_ref, res, T0, T0 + HOUR)
    ref.store.close()


def test_a_seal_whose_write_failed_seals_the_same_slice_again(db: TSDB,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    send(db, [("a1", 0, 30), ("a2", 0, 30), ("a3", 0, 30)])
    real = db.store.write
    calls = []

    def failing_once(batch: Batch, sync: bool = False) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(batch, sync)

    monkeypatch.setattr(db.store, "write", failing_once)
    assert db.seal(T0 + HOUR, max_entries=40) == (90, False)  # a1's bucket
    with pytest.raises(OSError):
        db.seal(T0 + HOUR, max_entries=40)  # a2's: not written
    while not db.seal(T0 + HOUR, max_entries=40)[1]:
        pass
    assert head_keys(db) == []
    for agent in ("a1", "a2", "a3"):
        for j, s in enumerate(sids(db, agent)):
            assert db.read_columns(s, 0, T0 + HOUR) == expected(j, 0, 30), agent


def test_two_batches_of_an_agent_at_one_time_are_both_kept(db: TSDB) -> None:
    async def go() -> None:
        ing = Ingestor(db.store, db, max_delay=0)
        table: array[int] = array("q")
        labels: list[tuple[str, Mapping[str, str]]] = [
            (m, {"machine_id": "a1"}) for m, _ in SERIES]
        for seq, c in enumerate([
                Compact(table, labels, [0, 1], [1.0, 2.0], T0),  # cpu, net
                Compact(table, [], [2], [3.0], T0),  # load, at the same time
                Compact(table, [], [0], [4.0], T0),  # cpu again: the later value counts
                Compact(table, [], [0, 1, 2], [5.0, 6.0, 7.0], T0 + STEP)], start=1):
            task = asyncio.create_task(ing.submit("a1", "o1", seq, [], c))
            await asyncio.sleep(0)
            await ing.flush()
            assert await task is True
    asyncio.run(go())
    cpu, net, load = sids(db, "a1")
    want = {cpu: ([T0, T0 + STEP], [4.0, 5.0]), net: ([T0, T0 + STEP], [2.0, 6.0]),
            load: ([T0, T0 + STEP], [3.0, 7.0])}
    assert len(head_keys(db)) == 4
    assert {s: db.read_columns(s, 0, T0 + HOUR) for s in want} == want
    assert db.seal(T0 + HOUR) == (6, True)  # samples stored: cpu at T0 once
    assert {s: db.read_columns(s, 0, T0 + HOUR) for s in want} == want


def test_a_series_added_within_a_bucket_is_read_and_sealed(db: TSDB) -> None:
    send(db, [("a1", 0, 10)])
    async def more() -> None:  # the agent's next stream: a new disk, a fourth series
        ing = Ingestor(db.store, db, max_delay=0)
        table: array[int] = array("q")
        labels: list[tuple[str, Mapping[str, str]]] = [
            (m, {"machine_id": "a1"}) for m, _ in [*SERIES, ("disk", {})]]
        for k, i in enumerate(range(10, 20)):
            c = Compact(table, labels if k == 0 else [], [0, 1, 2, 3],
                        [value(j, i) for j in range(3)] + [float(i)], T0 + i * STEP)
            task = asyncio.create_task(ing.submit("a1", "o1", 11 + k, [], c))
            await asyncio.sleep(0)
            await ing.flush()
            assert await task is True
    asyncio.run(more())
    disk = db.select("o1", "disk")[0].sid
    for _ in range(2):  # from the head, then from blocks
        for j, s in enumerate(sids(db, "a1")):
            assert db.read_columns(s, 0, T0 + HOUR) == expected(j, 0, 20)
        assert db.read_columns(disk, 0, T0 + HOUR) == (
            [T0 + i * STEP for i in range(10, 20)], [float(i) for i in range(10, 20)])
        db.seal(T0 + HOUR)
    assert head_keys(db) == []


def test_an_entry_in_a_bucket_closed_meanwhile_goes_in_sample_by_sample(db: TSDB) -> None:
    """A write of the ingest path that waited for its thread while sealing closed the
    bucket: its entry would land in a bucket being sealed; it is stored as late samples."""
    b = Batch()
    s1, s2 = (db.sid_for(b, "o1", "cpu", {"machine_id": f"m{i}"}) for i in (1, 2))
    db.store.write(b)
    entry = (head_key_bytes("a1", T0 + 20_000, 7), head_value(array("I", [s1, s2]), [1.5, 2.5]))
    db.head_closed = T0 + BLOCK_MS
    db.write_with_head(Batch(), [entry])
    assert head_keys(db) == []
    assert db.read_columns(s2, 0, T0 + HOUR) == ([T0 + 20_000], [2.5])
    assert {k for k, _ in db.store.scan("tslate/")} == {
        f"tslate/{s:08x}/{T0:012x}" for s in (s1, s2)}


def test_the_sample_before_is_found_hours_back_beside_other_series(db: TSDB) -> None:
    b = Batch()
    db.add(b, "o1", [("cpu", {"machine_id": "m1"}, 1.0, T0 + 50 * MINUTE),
                     ("cpu", {"machine_id": "m2"}, 2.0, T0 + 55 * MINUTE)])
    db.store.write(b)
    s1 = db.select("o1", "cpu")[0].sid
    assert db.last_before(s1, T0 + HOUR + 30 * MINUTE, HOUR) == (T0 + 50 * MINUTE, 1.0)
    assert db.read_after(s1, T0 + HOUR + 30 * MINUTE, T0 + 2 * HOUR) == (1.0, [], [])


def test_a_head_entry_ahead_of_time_does_not_close_the_head(tmp_path: Path) -> None:
    """An agent whose clock is ahead: its entries wait in the head for their time; a
    restarted controller still takes everyone's batches into the head."""
    store = open_store(tmp_path / "ahead")
    b = Batch()
    b.samples.append((head_key_bytes("a1", 2**42, 1), head_value(array("I", [1]), [1.0])))
    store.write(b)
    d = TSDB(store)
    assert d.head_from <= time.time() * 1000 and d.head_closed <= time.time() * 1000
    store.close()


def test_a_reader_reads_what_single_reads_do(db: TSDB) -> None:
    """Series of several agents, in the head (over two buckets) and in blocks, beside a late
    sample, two batches at one time and the samples of an agent that sends labels: read
    through a Reader (in a row, each agent's series one after the other, the rules' pattern:
    the first read of an agent gives the others from the same entries) the same as one by
    one, round after round, and with ranges that differ from series to series."""
    send(db, [("a1", 0, 70), ("a2", 0, 70)])
    send(db, [("a2", 65, 1)], start_seq=100)  # a second batch at 650 s
    db.seal(T0 + 5 * MINUTE)  # the first bucket in blocks, two in the head
    late = Batch()
    s_a1 = sids(db, "a1")
    db.add(late, "o1", [("cpu", {"machine_id": "a1"}, -1.0, T0 + 325_001)])  # a late sample
    db.add(late, "o1", [("up", {"machine_id": "old"}, 7.0, T0 + 200_000)])  # labelled samples
    db.store.write(late)
    db.settle(True)
    labelled = db.select("o1", "up")[0].sid
    every = sids(db, "a1") + sids(db, "a2") + [labelled]
    reader = Reader(db)
    ranges = [(0, T0 + HOUR), (T0 + 100_000, T0 + 350_000), (T0 + 550_000, T0 + 650_000),
              (T0 + 320_000, T0 + 330_000), (T0 + 620_000, T0 + 690_000)]
    for start, end in ranges:
        for shift in (0, 0, 10_000):  # the second time with the agents' series known
            with reader:
                got = {s: db.read_columns(s, start, end + k * shift, reader=reader)
                       for k, s in enumerate(every)}
            assert got == {s: db.read_columns(s, start, end + k * shift)
                           for k, s in enumerate(every)}, (start, end, shift)
            assert reader.cursor is None and not reader.prefetched
    with reader:  # a read within one bucket of the head gives the agent's other series
        db.read_columns(s_a1[0], T0 + 320_000, T0 + 330_000, reader=reader)
        assert set(reader.prefetched) == set(s_a1[1:])
    assert (T0 + 325_001, -1.0) in zip(*db.read_columns(s_a1[0], 0, T0 + HOUR), strict=True)
    assert labelled not in reader.sources and set(reader.by_source) == {"a1", "a2"}
    reader.forget(every)
    assert not reader.sources and not reader.by_source


def test_a_series_whose_agent_was_not_known_is_looked_up_again_next_round(db: TSDB) -> None:
    """A new agent's first batch stored after a round began: the round's cursor does not
    see its series' source, the next round does (and reads its samples)."""
    send(db, [("a1", 0, 3)])
    reader = Reader(db)
    with reader:
        send(db, [("a2", 0, 3)])
        s = sids(db, "a2")[0]
        assert db.read_columns(s, 0, T0 + HOUR, reader=reader) == ([], [])
    with reader:
        assert db.read_columns(s, 0, T0 + HOUR, reader=reader) == expected(0, 0, 3)
    assert reader.sources[s] == "a2"


def test_a_reader_sees_the_store_as_it_was_when_it_began(db: TSDB) -> None:
    """A bucket sealed while a round reads (the compaction task runs in its own thread): the
    round still finds its samples, in the head entries its cursor sees; a batch stored
    meanwhile shows in the next round."""
    send(db, [("a1", 0, 40)])
    s = sids(db, "a1")[1]
    reader = Reader(db)
    with reader:
        assert db.seal(T0 + 5 * MINUTE)[1]
        assert db.head_from == T0 + 5 * MINUTE
        assert db.read_columns(s, 0, T0 + HOUR, reader=reader) == expected(1, 0, 40)
        send(db, [("a1", 40, 1)], start_seq=41)
        assert db.read_columns(s, 0, T0 + HOUR, reader=reader) == expected(1, 0, 40)
    with reader:
        assert db.read_columns(s, 0, T0 + HOUR, reader=reader) == expected(1, 0, 41)
