"""Custom metric sources on the agent: the Prometheus text format parsed strictly (bad lines
reported with their number, the good ones kept, limits), and real scripts run: samples
labelled with machine_id and source, a failing or slow script (killed at its timeout, its
whole process group) giving none, a script that does not match its sha256 never run, and the
status messages sent up."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
from pathlib import Path

import pytest

from agent.collect import custom
from agent.collect.custom import CustomMetrics
from agent.collect.exposition import MAX_BAD_REPORTED, BadLine, parse, parse_line
from overcast.agent.v1 import agent_pb2 as pb

NOW = 1_764_142_200_000


def test_samples_with_labels_timestamps_and_the_special_values() -> None:
    text = ("# HELP queue_depth Jobs waiting.\n# TYPE queue_depth gauge\n"
            'queue_depth{queue="mail",role="mx"} 42\n'
            "\n"
            f'http_requests_total{{code="200",}} 1027 {NOW - 5000}\n'
            "temperature -3.5e1\n"
            'empty{} +Inf\n'
            'escaped{path="C:\\\\tmp",say="a \\"quote\\"\\nnext"} NaN\n'
            "  spaced_out\t 1  \n")
    p = parse(text, NOW)
    assert p.bad == [] and p.bad_count == 0
    rows = {r[0]: r for r in p.rows}
    assert rows["queue_depth"] == ("queue_depth", {"queue": "mail", "role": "mx"}, 42.0, None)
    assert rows["http_requests_total"][1:] == ({"code": "200"}, 1027.0, NOW - 5000)
    assert rows["temperature"][2] == -35.0 and rows["empty"][2] == math.inf
    assert rows["escaped"][1] == {"path": "C:\\tmp", "say": 'a "quote"\nnext'}
    assert math.isnan(rows["escaped"][2]) and rows["spaced_out"][2] == 1.0


@pytest.mark.parametrize(("line", "why"), [
    ("9lives 1", "must start with a metric name"),
    ("m", "no value"),
    ("m abc", "is not a number"),
    ("m 1 2 3", "unexpected '3'"),
    ("m 1 12.5", "not whole milliseconds"),
    (f"m 1 {NOW - 2 * 3600 * 1000}", "more than an hour old"),
    ('m{a="1" 2', "',' or '}' was expected"),
    ("m{a=1} 2", "double quotes"),
    ('m{a="1",a="2"} 2', "given twice"),
    ('m{__name__="x"} 2', "reserved"),
    ('m{a="x\\q"} 1', "unknown escape"),
    ('m{a="open} 1', "no closing quote"),
    ("m{1a=\"x\"} 1", "label name was expected"),
    ('m{a="1"}2', "unexpected"),
    ("m" + "x" * 300 + " 1", "longer than 200"),
])
def test_a_bad_line_says_why(line: str, why: str) -> None:
    p = parse(f"good 1\n{line}\ngood_too 2\n", NOW)
    assert [r[0] for r in p.rows] == ["good", "good_too"]  # the good ones are kept
    assert p.bad_count == 1 and p.bad[0].startswith("line 2: ") and why in p.bad[0], p.bad


def test_limits_bound_a_run() -> None:
    p = parse("".join(f"m{i} {i}\n" for i in range(30)), NOW, max_samples=20)
    assert len(p.rows) == 20 and p.bad_count == 10
    assert "more than 20 samples" in p.bad[0]
    p = parse("x\n" * 50, NOW)
    assert p.bad_count == 50 and len(p.bad) == MAX_BAD_REPORTED  # counted, the first named
    p = parse("m{" + ",".join(f'l{i}="v"' for i in range(40)) + "} 1\n", NOW)
    assert "more than 32 labels" in p.bad[0]
    with pytest.raises(BadLine):
        parse_line("", NOW)
    p = parse("m 1 " + "9" * 5000 + "\n", NOW)
    assert "longer than 4096" in p.bad[0]


# ---- running real scripts ---------------------------------------------------------------------

def source(sid: str, name: str, content: str, interval: int = 1, timeout: int = 5,
           sha: str | None = None) -> pb.MetricSource:
    data = content.encode()
    return pb.MetricSource(id=sid, name=name, content=data,
                           sha256=sha if sha is not None else hashlib.sha256(data).hexdigest(),
                           interval_s=interval, timeout_s=timeout)


class Sink:
    def __init__(self) -> None:
        self.sent: list[pb.AgentMessage] = []

    async def __call__(self, msg: pb.AgentMessage) -> None:
        self.sent.append(msg)

    def statuses(self, sid: str) -> list[pb.MetricSourceStatus]:
        return [m.metric_source_status for m in self.sent
                if m.metric_source_status.source_id == sid]


async def wait_for(check, seconds: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_sources_run_and_their_samples_are_labelled(tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink()
        cm = CustomMetrics("agent-1", lambda: 1.0, sink)
        good = source("s1", "queues", "#!/bin/sh\necho 'queue_depth{queue=\"mail\",source=\"x\"} 7'\n"
                                      "echo 'workers 3'\n")
        bad = source("s2", "half", "echo 'ok_metric 1'\necho 'not a metric line'\n"
                                   "echo 'ok_too{a=\"b\"} 2'\n")  # no #!: run by /bin/sh
        cm.configure([good, bad])
        await wait_for(lambda: len(sink.statuses("s1")) >= 1 and len(sink.statuses("s2")) >= 1)
        samples = cm.drain()
        by = {(s.metric, s.labels["source"]): s for s in samples}
        q = by[("queue_depth", "queues")]
        # the script's own "source" label is replaced; machine_id is the agent's
        assert dict(q.labels) == {"queue": "mail", "machine_id": "agent-1", "source": "queues"}
        assert q.value == 7 and abs(q.time_ms - time.time() * 1000) < 10_000
        assert ("workers", "queues") in by and ("ok_metric", "half") in by
        assert by[("ok_too", "half")].labels["a"] == "b"
        s2 = sink.statuses("s2")[0]
        assert s2.samples == 2 and s2.bad_line_count == 1 and s2.error == ""
        assert s2.bad_lines == ["line 2: unexpected 'line' after the value and timestamp"]
        assert sink.statuses("s1")[0].bad_line_count == 0
        # the same outcome again is not reported again (until a minute passed)
        await asyncio.sleep(2.5)
        assert len(sink.statuses("s1")) == 1 and len(cm.drain()) >= 4  # it kept running
        directory = cm.dir
        assert directory and os.path.isdir(directory)
        await cm.close()
        assert not os.path.exists(directory)

    asyncio.run(main())


def test_a_slow_script_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"

    async def main() -> None:
        sink = Sink()
        cm = CustomMetrics("a", lambda: 60.0, sink)
        script = (f"#!/bin/sh\necho 'early 1'\nsleep 300 &\necho $! > {marker}\n"
                  "sleep 300\necho 'late 1'\n")
        cm.configure([source("slow", "slow", script, interval=60, timeout=1)])
        t0 = time.monotonic()
        await wait_for(lambda: bool(sink.statuses("slow")))
        assert time.monotonic() - t0 < 8
        st = sink.statuses("slow")[0]
        assert st.timed_out and "timed out after 1s" in st.error and st.samples == 0
        assert cm.drain() == []  # a run that timed out gives nothing, not even "early"
        pid = int(marker.read_text())
        await wait_for(lambda: not _alive(pid), 5)  # its background child went with it
        await cm.close()

    asyncio.run(main())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_failures_give_no_samples_and_say_why() -> None:
    async def main() -> None:
        sink = Sink()
        cm = CustomMetrics("a", lambda: 60.0, sink)
        cm.configure([
            source("exit", "exit", "#!/bin/sh\necho 'm 1'\necho 'disk gone' >&2\nexit 3\n"),
            source("sha", "sha", "#!/bin/sh\necho 'm 1'\n", sha="0" * 64),
        ])
        await wait_for(lambda: bool(sink.statuses("exit")) and bool(sink.statuses("sha")))
        e = sink.statuses("exit")[0]
        assert e.exit_code == 3 and e.error == "exit status 3: disk gone" and e.samples == 0
        s = sink.statuses("sha")[0]
        assert "does not match its sha256" in s.error and s.samples == 0
        assert cm.drain() == []
        await cm.close()

    asyncio.run(main())


def test_output_past_the_limit_is_cut_at_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(custom, "MAX_OUTPUT", 1000)

    async def main() -> None:
        sink = Sink()
        cm = CustomMetrics("a", lambda: 60.0, sink)
        cm.configure([source("big", "big", "#!/bin/sh\ni=0\nwhile [ $i -lt 500 ]; do "
                                             "echo \"metric_$i $i\"; i=$((i+1)); done\n")])
        await wait_for(lambda: bool(sink.statuses("big")))
        st = sink.statuses("big")[0]
        assert 50 < st.samples < 120 and "output over 1000 bytes" in st.bad_lines[-1]
        assert len(cm.drain()) == st.samples
        await cm.close()

    asyncio.run(main())


def test_configure_replaces_the_list_and_leaves_unchanged_sources_running() -> None:
    async def main() -> None:
        sink = Sink()
        cm = CustomMetrics("a", lambda: 60.0, sink)
        one = source("one", "one", "#!/bin/sh\necho 'm 1'\n", interval=60)
        cm.configure([one])
        await wait_for(lambda: bool(sink.statuses("one")))
        task = cm._sources["one"].task
        cm.configure([one, source("two", "two", "#!/bin/sh\necho 'n 2'\n", interval=60)])
        assert cm._sources["one"].task is task and cm.source_ids == ["one", "two"]
        cm.configure([source("two", "two", "#!/bin/sh\necho 'n 3'\n", interval=60)])
        await asyncio.sleep(0)
        assert cm.source_ids == ["two"] and task is not None and task.done()
        cm.configure([])
        assert cm.source_ids == []
        await cm.close()

    asyncio.run(main())


def test_the_agent_loads_the_custom_code_only_for_a_source() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom agent.control import Agent\n"
            "assert 'agent.collect.custom' not in sys.modules\n"
            "assert 'agent.collect.exposition' not in sys.modules\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2],
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [str(Path(__file__).resolve().parents[2]),
                            str(Path(__file__).resolve().parents[2] / "proto")])})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
