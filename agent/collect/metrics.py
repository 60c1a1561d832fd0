"""Metric samples from psutil, named and labelled like Telegraf's inputs (as Mist's queries use)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import psutil

from overcast.agent.v1 import agent_pb2

log = logging.getLogger(__name__)

# Memory and pseudo filesystems: nothing to measure on a disk. overlay is kept only at "/",
# which is a container's own root; elsewhere it is a container's layer seen from the host,
# one per container, all reporting the host's disk again.
PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devfs",
    "devpts", "devtmpfs", "efivarfs", "fusectl", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal",
    "fuse.snapfuse",
    "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "aufs", "proc", "pstore", "ramfs",
    "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs", "nfsd",
})

# Block devices that are not disks: loop files (snaps, images), RAM disks, compressed swap.
VIRTUAL_BLOCK_PREFIXES = ("loop", "ram", "zram")

# psutil's cpu_times fields and the Telegraf field each becomes (cpu_usage_<name>).
_CPU_FIELDS = ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal", "guest")
# On Linux user and nice already include guest and guest_nice: the total leaves those out,
# as Telegraf and psutil's cpu_percent do, or guest time would count twice.
_CPU_TOTAL_FIELDS = ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal")

_DISKIO_FIELDS = (
    ("diskio_reads", "read_count"), ("diskio_writes", "write_count"),
    ("diskio_read_bytes", "read_bytes"), ("diskio_write_bytes", "write_bytes"),
    ("diskio_read_time", "read_time"), ("diskio_write_time", "write_time"),
    ("diskio_io_time", "busy_time"),
)
_NET_FIELDS = (
    ("net_bytes_sent", "bytes_sent"), ("net_bytes_recv", "bytes_recv"),
    ("net_packets_sent", "packets_sent"), ("net_packets_recv", "packets_recv"),
    ("net_err_in", "errin"), ("net_err_out", "errout"),
    ("net_drop_in", "dropin"), ("net_drop_out", "dropout"),
)
# psutil status -> Telegraf's processes field ("disk-sleep" is D state, which Telegraf calls
# blocked); anything else (tracing-stop, waking, parked...) counts only in the total.
_PROC_STATUS = {
    psutil.STATUS_RUNNING: "running", psutil.STATUS_SLEEPING: "sleeping",
    psutil.STATUS_DISK_SLEEP: "blocked", psutil.STATUS_STOPPED: "stopped",
    psutil.STATUS_ZOMBIE: "zombies", psutil.STATUS_IDLE: "idle",
}


# the state letter of /proc/<pid>/stat -> the same fields (t, X, W, P...: the total only)
_PROC_STATE_LETTERS = {ord("R"): "running", ord("S"): "sleeping", ord("D"): "blocked",
                       ord("T"): "stopped", ord("Z"): "zombies", ord("I"): "idle"}


def process_states() -> Iterator[str | None]:
    """Each process's field name in _PROC_STATUS's terms (None: counted in the total only);
    processes gone meanwhile are skipped. On Linux from /proc/<pid>/stat directly:
    psutil.process_iter keeps a Process object per process between calls (~1 KiB each:
    megabytes of the agent's memory on a host with thousands of processes), for one letter."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        with os.scandir("/proc") as entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        stat = f.read(512)
                except OSError:
                    continue
                # "pid (comm) S ...": the name may hold spaces and parentheses
                i = stat.rfind(b")") + 2
                if 1 < i < len(stat):
                    yield _PROC_STATE_LETTERS.get(stat[i])
        return
    for p in psutil.process_iter(["status"]):
        yield _PROC_STATUS.get(p.info.get("status"))


# one sample before it is stamped: (metric, value, labels)
_Row = tuple[str, float, Mapping[str, str]]


class Mount(NamedTuple):
    path: str
    device: str
    fstype: str


def real_filesystems() -> list[Mount]:
    """Mounted filesystems that live on storage, one per device (its shortest mount point,
    so bind mounts of a disk don't report it again), sorted by path. Never raises."""
    try:
        parts = psutil.disk_partitions(all=True)
    except Exception as e:  # no /proc/mounts in a chroot: no filesystems
        log.debug("disk_partitions failed: %s", e)
        return []
    best: dict[str, Mount] = {}
    for p in parts:
        fstype = p.fstype or ""
        if fstype in PSEUDO_FSTYPES and not (fstype == "overlay" and p.mountpoint == "/"):
            continue
        if not fstype or not os.path.isdir(p.mountpoint):
            # a file bind-mounted into a container (/etc/hosts...) is not a filesystem to watch
            continue
        device = p.device or fstype
        seen = best.get(device)
        if seen is None or len(p.mountpoint) < len(seen.path):
            best[device] = Mount(p.mountpoint, device, fstype)
    return sorted(best.values(), key=lambda m: m.path)


def _device_label(device: str) -> str:
    # Telegraf reports "sda1", not "/dev/sda1"
    return device.removeprefix("/dev/")


def _is_virtual_block(name: str) -> bool:
    return name.startswith(VIRTUAL_BLOCK_PREFIXES)


class MetricsCollector:
    """One instance per agent: it keeps the previous CPU times, since CPU usage is a rate."""

    def __init__(self) -> None:
        self._prev_total: Any = None
        self._prev_percpu: list[Any] = []
        self._warned: set[str] = set()

    def collect(self, now_ms: int | None = None) -> list[agent_pb2.Sample]:
        """One round of samples, all stamped with the same time. A part that fails (no
        permission, a /proc file missing in a container) is left out; this never raises."""
        t = int(time.time() * 1000) if now_ms is None else now_ms
        out: list[agent_pb2.Sample] = []
        parts: tuple[tuple[str, Callable[[], Iterable[_Row]]], ...] = (
            ("cpu", self._cpu), ("system", self._system), ("mem", self._mem),
            ("swap", self._swap), ("disk", self._disk), ("diskio", self._diskio),
            ("net", self._net), ("processes", self._processes),
        )
        for name, part in parts:
            try:
                for metric, value, labels in part():
                    out.append(
                        agent_pb2.Sample(metric=metric, labels=labels, value=value, time_ms=t)
                    )
            except Exception as e:  # a measurement never takes the agent down
                # what the part yielded before failing is kept: it was measured
                self._failed(name, e)
        return out

    def _failed(self, part: str, e: BaseException) -> None:
        # once at warning, then quietly: the same failure recurs every interval
        if part not in self._warned:
            self._warned.add(part)
            log.warning("metrics: %s left out: %s: %s", part, type(e).__name__, e)
        else:
            log.debug("metrics: %s left out: %s", part, e)

    # ---- parts: each yields (metric, value, labels) ---------------------------------

    def _cpu(self) -> Iterator[_Row]:
        total = psutil.cpu_times()
        percpu = psutil.cpu_times(percpu=True)
        prev_total, prev_percpu = self._prev_total, self._prev_percpu
        self._prev_total, self._prev_percpu = total, percpu
        yield from _cpu_usage("cpu-total", prev_total, total)
        if len(prev_percpu) != len(percpu):
            prev_percpu = [None] * len(percpu)  # CPUs came or went: those report from boot
        for i, (before, now) in enumerate(zip(prev_percpu, percpu, strict=True)):
            yield from _cpu_usage(f"cpu{i}", before, now)

    def _system(self) -> Iterator[_Row]:
        load1, load5, load15 = psutil.getloadavg()
        yield "system_load1", load1, {}
        yield "system_load5", load5, {}
        yield "system_load15", load15, {}
        yield "system_n_cpus", float(psutil.cpu_count() or os.cpu_count() or 0), {}
        yield "system_uptime", float(int(time.time() - psutil.boot_time())), {}
        try:
            users = len(psutil.users())
        except Exception as e:  # no utmp in containers: leave only this out
            self._failed("system_n_users", e)
        else:
            yield "system_n_users", float(users), {}

    def _mem(self) -> Iterator[_Row]:
        vm = psutil.virtual_memory()
        yield "mem_total", vm.total, {}
        yield "mem_available", vm.available, {}
        yield "mem_used", vm.used, {}
        yield "mem_free", vm.free, {}
        yield "mem_cached", getattr(vm, "cached", 0), {}
        yield "mem_buffers", getattr(vm, "buffers", 0), {}
        if vm.total:
            # Telegraf's definitions (used/total), not psutil's percent ((total-available)/total)
            yield "mem_used_percent", 100.0 * vm.used / vm.total, {}
            yield "mem_available_percent", 100.0 * vm.available / vm.total, {}

    def _swap(self) -> Iterator[_Row]:
        sw = psutil.swap_memory()
        yield "swap_total", sw.total, {}
        yield "swap_used", sw.used, {}
        yield "swap_free", sw.free, {}
        yield "swap_used_percent", 100.0 * sw.used / sw.total if sw.total else 0.0, {}

    def _disk(self) -> Iterator[_Row]:
        for m in real_filesystems():
            try:
                st = os.statvfs(m.path)
            except OSError as e:
                log.debug("statvfs %s: %s", m.path, e)  # unmounted meanwhile, or no permission
                continue
            labels = {"path": m.path, "device": _device_label(m.device), "fstype": m.fstype}
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize  # what non-root can still use, as df and Telegraf
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            yield "disk_total", total, labels
            yield "disk_free", free, labels
            yield "disk_used", used, labels
            yield "disk_used_percent", 100.0 * used / (used + free) if used + free else 0.0, labels
            yield "disk_inodes_total", st.f_files, labels
            yield "disk_inodes_free", st.f_ffree, labels
            yield "disk_inodes_used", st.f_files - st.f_ffree, labels

    def _diskio(self) -> Iterator[_Row]:
        for name, io in sorted((psutil.disk_io_counters(perdisk=True) or {}).items()):
            if _is_virtual_block(name):
                continue
            labels = {"name": name}
            for metric, field in _DISKIO_FIELDS:
                if hasattr(io, field):  # busy_time is Linux/FreeBSD only
                    yield metric, getattr(io, field), labels

    def _net(self) -> Iterator[_Row]:
        for name, io in sorted((psutil.net_io_counters(pernic=True) or {}).items()):
            labels = {"interface": name}
            for metric, field in _NET_FIELDS:
                yield metric, getattr(io, field), labels

    def _processes(self) -> Iterator[_Row]:
        counts = dict.fromkeys(("running", "sleeping", "blocked", "stopped", "zombies", "idle"), 0)
        total = 0
        for key in process_states():
            total += 1
            if key is not None:
                counts[key] += 1
        yield "processes_total", float(total), {}
        for key, n in counts.items():
            yield f"processes_{key}", float(n), {}


def _cpu_usage(label: str, before: Any, now: Any) -> Iterator[_Row]:
    """cpu_usage_* percentages over the interval between two cpu_times (from boot if there is
    no previous one)."""

    def get(t: Any, f: str) -> float:
        return float(getattr(t, f, 0.0)) if t is not None else 0.0

    # a counter can step back a little (idle/iowait on some kernels): clamp, never negative
    delta = {f: max(0.0, get(now, f) - get(before, f)) for f in _CPU_FIELDS}
    total = sum(delta[f] for f in _CPU_TOTAL_FIELDS)
    if total <= 0:
        return  # no tick elapsed: no rate to report
    labels = {"cpu": label}
    for f in _CPU_FIELDS:
        yield f"cpu_usage_{f}", min(100.0, 100.0 * delta[f] / total), labels
    yield "cpu_usage_active", max(0.0, 100.0 - 100.0 * delta["idle"] / total), labels
