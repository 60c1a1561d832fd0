"""The agent's metrics collector, on this machine's real psutil (and a few faked failures)."""

from __future__ import annotations

import os
import time
from collections import namedtuple
from typing import Any

import psutil
import pytest

from agent.collect import metrics
from agent.collect.metrics import MetricsCollector, real_filesystems

CPU_FIELDS = ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal", "guest", "active")
COUNTER_PREFIXES = ("diskio_", "net_")


def _index(samples: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for s in samples:
        key = (s.metric, tuple(sorted(s.labels.items())))
        assert key not in out, f"duplicate sample {key}"
        out[key] = s.value
    return out


def _values(samples: list[Any], metric: str, **labels: str) -> list[float]:
    return [s.value for s in samples
            if s.metric == metric and all(s.labels.get(k) == v for k, v in labels.items())]


def test_one_round_has_every_family_named_like_telegraf() -> None:
    samples = MetricsCollector().collect(now_ms=1_234_567)
    assert samples
    assert {s.time_ms for s in samples} == {1_234_567}
    names = {s.metric for s in samples}
    expected = {f"cpu_usage_{f}" for f in CPU_FIELDS} | {
        "system_load1", "system_load5", "system_load15", "system_n_cpus", "system_uptime",
        "mem_total", "mem_available", "mem_used", "mem_free", "mem_cached", "mem_buffers",
        "mem_used_percent", "mem_available_percent",
        "swap_total", "swap_used", "swap_free", "swap_used_percent",
        "disk_total", "disk_used", "disk_free", "disk_used_percent",
        "disk_inodes_total", "disk_inodes_used", "disk_inodes_free",
        "net_bytes_sent", "net_bytes_recv", "net_packets_sent", "net_packets_recv",
        "net_err_in", "net_err_out", "net_drop_in", "net_drop_out",
        "processes_total", "processes_running", "processes_sleeping", "processes_zombies",
    }
    assert expected <= names, sorted(expected - names)
    if psutil.disk_io_counters(perdisk=True):
        assert {"diskio_reads", "diskio_write_bytes", "diskio_io_time"} <= names
    assert all("machine_id" not in s.labels for s in samples)
    _index(samples)  # no metric twice with the same labels


def test_default_time_is_now_in_ms() -> None:
    before = int(time.time() * 1000)
    samples = MetricsCollector().collect()
    after = int(time.time() * 1000)
    assert len({s.time_ms for s in samples}) == 1
    assert before <= samples[0].time_ms <= after


def test_cpu_total_and_per_cpu_percentages() -> None:
    samples = MetricsCollector().collect()
    cpus = {s.labels["cpu"] for s in samples if s.metric.startswith("cpu_usage_")}
    n = len(psutil.cpu_times(percpu=True))
    assert cpus == {"cpu-total"} | {f"cpu{i}" for i in range(n)}
    for s in samples:
        if s.metric.startswith("cpu_usage_"):
            assert 0.0 <= s.value <= 100.0, s
    for cpu in cpus:
        parts = sum(_values(samples, f"cpu_usage_{f}", cpu=cpu)[0]
                    for f in ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal"))
        assert parts == pytest.approx(100.0, abs=0.01)
        idle = _values(samples, "cpu_usage_idle", cpu=cpu)[0]
        assert _values(samples, "cpu_usage_active", cpu=cpu)[0] == pytest.approx(100.0 - idle)


def test_cpu_usage_is_over_the_interval_since_the_previous_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    zero = dict(nice=0.0, iowait=0.0, irq=0.0, softirq=0.0, steal=0.0, guest_nice=0.0)
    rounds = iter([
        T(user=100.0, system=100.0, idle=800.0, guest=0.0, **zero),  # boot to now
        T(user=130.0, system=110.0, idle=860.0, guest=10.0, **zero),  # +30 +10 +60 (guest in user)
    ])
    now: list[T] = []

    def fake(percpu: bool = False) -> Any:
        if percpu:
            return [now[-1]]
        now.append(next(rounds))
        return now[-1]

    monkeypatch.setattr(metrics.psutil, "cpu_times", fake)
    c = MetricsCollector()
    first = c.collect()
    assert _values(first, "cpu_usage_user", cpu="cpu-total") == [pytest.approx(10.0)]
    assert _values(first, "cpu_usage_idle", cpu="cpu0") == [pytest.approx(80.0)]
    second = c.collect()
    for cpu in ("cpu-total", "cpu0"):
        assert _values(second, "cpu_usage_user", cpu=cpu) == [pytest.approx(30.0)]
        assert _values(second, "cpu_usage_system", cpu=cpu) == [pytest.approx(10.0)]
        assert _values(second, "cpu_usage_idle", cpu=cpu) == [pytest.approx(60.0)]
        assert _values(second, "cpu_usage_guest", cpu=cpu) == [pytest.approx(10.0)]
        assert _values(second, "cpu_usage_active", cpu=cpu) == [pytest.approx(40.0)]


def test_busy_interval_shows_as_active_cpu() -> None:
    c = MetricsCollector()
    c.collect()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # keep one CPU busy between the two rounds
        pass
    active = _values(c.collect(), "cpu_usage_active", cpu="cpu-total")
    assert active and 0.0 < active[0] <= 100.0


def test_system_memory_and_swap_are_plausible() -> None:
    s = MetricsCollector().collect()
    vm = psutil.virtual_memory()
    assert _values(s, "mem_total") == [vm.total] and vm.total > 0
    assert 0 < _values(s, "mem_available")[0] <= vm.total
    assert 0 <= _values(s, "mem_used")[0] <= vm.total
    for m in ("mem_used_percent", "mem_available_percent", "swap_used_percent"):
        assert 0.0 <= _values(s, m)[0] <= 100.0, m
    assert _values(s, "system_n_cpus") == [float(os.cpu_count() or 0)]
    assert abs(_values(s, "system_uptime")[0] - (time.time() - psutil.boot_time())) < 5
    assert _values(s, "system_load1")[0] >= 0
    sw = _values(s, "swap_total")[0]
    assert _values(s, "swap_used")[0] + _values(s, "swap_free")[0] == pytest.approx(sw, rel=0.01, abs=1 << 20)


def test_disks_are_real_filesystems_with_path_device_fstype() -> None:
    s = MetricsCollector().collect()
    assert len(_values(s, "disk_used_percent", path="/")) == 1
    disks = [x for x in s if x.metric.startswith("disk_")]
    assert disks
    for x in disks:
        assert set(x.labels) == {"path", "device", "fstype"}
        assert x.labels["fstype"] not in {"tmpfs", "proc", "sysfs", "devtmpfs", "cgroup", "cgroup2"}
        assert not x.labels["device"].startswith("/dev/")  # Telegraf's "sda1"
        if x.metric == "disk_used_percent":
            assert 0.0 <= x.value <= 100.0
    devices = [x.labels["device"] for x in disks if x.metric == "disk_total"]
    assert len(devices) == len(set(devices))  # one per device
    root = {x.metric: x.value for x in disks if x.labels["path"] == "/"}
    assert root["disk_total"] > 0 and root["disk_inodes_total"] >= root["disk_inodes_used"] >= 0
    assert root["disk_used"] <= root["disk_total"]


def test_filesystem_filter_skips_pseudo_and_dedupes(monkeypatch: pytest.MonkeyPatch) -> None:
    P = namedtuple("P", "device mountpoint fstype opts")
    parts = [
        P("proc", "/proc", "proc", ""), P("tmpfs", "/run", "tmpfs", ""),
        P("overlay", "/", "overlay", ""),  # a container's own root: kept
        P("overlay", "/var/lib/docker/overlay2/x/merged", "overlay", ""),
        P("/dev/sdc", "/etc/hosts", "ext4", ""),  # a file bind-mounted into a container
        P("/dev/sda1", "/srv/data", "ext4", ""), P("/dev/sda1", "/srv", "ext4", ""),  # bind mount
        P("/dev/sdb", "/backup", "xfs", ""), P("none", "/x", "", ""),
    ]
    monkeypatch.setattr(metrics.os.path, "isdir", lambda p: p != "/etc/hosts")
    monkeypatch.setattr(metrics.psutil, "disk_partitions", lambda all=False: parts)
    got = [(m.path, m.device, m.fstype) for m in real_filesystems()]
    assert got == [("/", "overlay", "overlay"), ("/backup", "/dev/sdb", "xfs"), ("/srv", "/dev/sda1", "ext4")]


def test_diskio_and_net_per_device_and_interface() -> None:
    s = MetricsCollector().collect()
    assert _values(s, "net_bytes_sent", interface="lo")
    assert _values(s, "net_bytes_recv", interface="lo")
    for x in s:
        if x.metric.startswith("diskio_"):
            assert set(x.labels) == {"name"}
            assert not x.labels["name"].startswith(("loop", "ram", "zram"))
        if x.metric.startswith("net_"):
            assert set(x.labels) == {"interface"}
    disks = set(psutil.disk_io_counters(perdisk=True) or {})
    real = {d for d in disks if not d.startswith(("loop", "ram", "zram"))}
    assert {x.labels["name"] for x in s if x.metric == "diskio_reads"} == real


def test_counters_never_decrease_between_rounds() -> None:
    c = MetricsCollector()
    first = _index(c.collect())
    second = _index(c.collect())
    counters = [k for k in first if k[0].startswith(COUNTER_PREFIXES)]
    assert counters
    for k in counters:
        if k in second:
            assert second[k] >= first[k], k


def test_processes_counted_by_status() -> None:
    s = MetricsCollector().collect()
    total = _values(s, "processes_total")[0]
    assert total >= 1
    assert abs(total - len(psutil.pids())) < 50
    parts = sum(_values(s, f"processes_{k}")[0]
                for k in ("running", "sleeping", "blocked", "stopped", "zombies", "idle"))
    assert 0 < parts <= total
    assert _values(s, "processes_running")[0] >= 1  # this very process is


def test_process_states_read_from_proc_agree_with_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = list(metrics.process_states())
    monkeypatch.setattr(metrics.sys, "platform", "other")  # psutil's way, as off Linux
    theirs = list(metrics.process_states())
    assert abs(len(mine) - len(theirs)) < 20  # processes come and go meanwhile
    assert mine.count("sleeping") > 0 and mine.count("running") >= 1
    assert abs(mine.count("sleeping") - theirs.count("sleeping")) < 20


def test_a_failing_psutil_call_is_left_out_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*a: Any, **k: Any) -> Any:
        raise PermissionError("denied")

    monkeypatch.setattr(metrics.psutil, "virtual_memory", denied)
    monkeypatch.setattr(metrics.psutil, "users", denied)
    monkeypatch.setattr(metrics.psutil, "net_io_counters", lambda pernic=False: None)
    monkeypatch.setattr(metrics, "process_states", denied)
    monkeypatch.setattr(metrics.os, "statvfs", lambda p: (_ for _ in ()).throw(OSError("gone")))
    s = MetricsCollector().collect()
    names = {x.metric for x in s}
    assert not {n for n in names if n.startswith(("mem_", "net_", "processes_", "disk_"))}
    assert "system_n_users" not in names
    assert {"system_load1", "swap_total", "cpu_usage_idle"} <= names


def test_collect_time_is_bounded() -> None:
    c = MetricsCollector()
    c.collect()
    t = time.perf_counter()
    samples = c.collect()
    elapsed = time.perf_counter() - t
    print(f"one collect: {elapsed * 1000:.1f} ms, {len(samples)} samples")
    assert elapsed < 0.5
