"""Shared helpers of the benchmarks: the repository on sys.path, machine facts, percentiles,
and writing ``bench/results/<name>.json``."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

for p in (str(ROOT), str(ROOT / "proto")):
    if p not in sys.path:
        sys.path.insert(0, p)


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    try:
        facts["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["mem_total_mib"] = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    from importlib import metadata

    for dist in ("rocksdict", "aiohttp"):
        try:
            facts[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return facts


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/min/max/mean of durations in seconds, reported in milliseconds."""
    if not samples_s:
        return {}
    ms = sorted(s * 1000 for s in samples_s)

    def pct(q: float) -> float:
        # nearest-rank percentile
        k = max(0, min(len(ms) - 1, math.ceil(q / 100 * len(ms)) - 1))
        return round(ms[k], 3)

    return {
        "n": len(ms),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "bench": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_facts(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)
    return path


def progress(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


def exit_on_sigterm() -> None:
    """SIGTERM (``bench/run.py`` stopping a benchmark that ran too long) unwinds through the
    ``finally`` blocks like an error: controllers and simulators are stopped."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def finish(name: str, result: dict[str, Any], summary: Any) -> int:
    """The end of every benchmark's ``main``: the summary lines (``summary(result)``) into
    the result, ``bench/results/<name>.json`` written, the lines printed."""
    result["summary"] = summary(result)
    path = write_result(name, result)
    for line in result["summary"]:
        print("  " + line)
    print(f"  -> {path}")
    return 0


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


# ---- realistic machine documents -------------------------------------------------------------

CLOUDS = [("aws", "c1a0"), ("gcp", "c2b1"), ("azure", "c3c2"), ("digitalocean", "c4d3"),
          ("openstack", "c5e4"), ("vsphere", "c6f5")]
SIZES = {"aws": ["t3.micro", "t3.small", "m5.large", "c6i.xlarge", "r6g.2xlarge"],
         "gcp": ["e2-micro", "e2-standard-2", "n2-standard-8", "c2-standard-16"],
         "azure": ["Standard_B1s", "Standard_D2s_v5", "Standard_E4s_v5"],
         "digitalocean": ["s-1vcpu-1gb", "s-2vcpu-4gb", "c-8"],
         "openstack": ["m1.small", "m1.medium", "m1.large"],
         "vsphere": ["2cpu-4gb", "4cpu-16gb"]}
IMAGES = ["ubuntu-24.04-amd64", "debian-12-generic", "rhel-9.4", "windows-2022-datacenter",
          "rocky-9", "amazon-linux-2023", "fedora-40-cloud"]
LOCATIONS = ["us-east-1a", "eu-west-1b", "europe-west4-a", "westeurope", "fra1", "regionOne",
             "ap-southeast-2c", "dc1/cluster-a"]
TEAMS = ["web", "db", "batch", "ml", "infra", "payments", "search"]
ENVS = ["prod", "staging", "dev", "test"]
# weights of the states, roughly what a real estate looks like
STATE_WEIGHTS = [("running", 60), ("stopped", 20), ("terminated", 8), ("pending", 3),
                 ("error", 2), ("starting", 2), ("stopping", 2), ("unknown", 3)]


def machine_doc(i: int, org: str, rng: Any) -> tuple[str, dict[str, Any]]:
    """The id and document of the i-th synthetic machine of ``org`` (about 1 KB of JSON)."""
    import uuid

    mid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
    cloud, cloud_id = rng.choice(CLOUDS)
    team, env = rng.choice(TEAMS), rng.choice(ENVS)
    state = rng.choices([s for s, _ in STATE_WEIGHTS], [w for _, w in STATE_WEIGHTS])[0]
    name = f"{team}-{env}-{i:06d}"
    created = 1_700_000_000 + rng.randrange(0, 50_000_000)
    cores = rng.choice([1, 2, 4, 8, 16])
    doc = {
        "id": mid,
        "org": org,
        "external_id": f"i-{rng.getrandbits(64):016x}",
        "name": name,
        "cloud": cloud_id,
        "state": state,
        "hostname": f"{name}.{env}.internal",
        "public_ips": [f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"] if rng.random() < 0.6 else [],
        "private_ips": [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"],
        "tags": {"team": team, "env": env, "owner": f"{team}-oncall", "cost-center": f"cc-{rng.randrange(100, 999)}"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created + rng.randrange(0, 9_000_000))),
        "size": rng.choice(SIZES[cloud]),
        "image": rng.choice(IMAGES),
        "location": rng.choice(LOCATIONS),
        "os_type": "windows" if "windows" in IMAGES[i % len(IMAGES)] else "linux",
        "cores": cores,
        "owned_by": "",
        "created_by": "",
        "extra": {
            "provider": cloud,
            "architecture": rng.choice(["x86_64", "arm64"]),
            "vpc": f"vpc-{rng.getrandbits(32):08x}",
            "subnet": f"subnet-{rng.getrandbits(32):08x}",
            "security_groups": [f"sg-{rng.getrandbits(32):08x}" for _ in range(rng.randrange(1, 3))],
            "disk_gb": rng.choice([20, 50, 100, 500]),
            "ram_mb": cores * rng.choice([1024, 2048, 4096]),
        },
        "cost": {"monthly": round(rng.uniform(3, 900), 2), "currency": "USD"},
        "key_associations": [],
        "monitoring": rng.random() < 0.3,
    }
    return mid, doc


# ---- processes: limits and their figures ----------------------------------------------------

def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit to the hard one (children inherit it): thousands of
    agent connections need as many descriptors. Returns (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_figures(pid: int, uss: bool = False) -> dict[str, Any]:
    """RSS (and USS, which reads smaps: slower), CPU seconds (user+system, all threads),
    threads and open descriptors of a process, from psutil. Empty if it is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            out: dict[str, Any] = {"rss_mib": round(p.memory_info().rss / 2**20, 1),
                                   "cpu_s": round(t.user + t.system, 3),
                                   "threads": p.num_threads()}
            try:
                out["fds"] = p.num_fds()
            except (psutil.Error, AttributeError):
                pass
        if uss:
            out["uss_mib"] = round(p.memory_full_info().uss / 2**20, 1)
        return out
    except psutil.Error:
        return {}


class CpuMeter:
    """CPU used by a process between two points, as a percentage of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = proc_figures(self.pid).get("cpu_s", 0.0)

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        cpu = proc_figures(self.pid).get("cpu_s", 0.0) - self.c0
        return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                "cpu_pct_of_one_core": round(100 * cpu / wall, 1) if wall > 0 else 0.0}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by a process's live threads, summed by thread name (digits
    dropped: ``rocksdb:low0`` and ``rocksdb:low1`` are one group). Python's own threads are
    all named after the program; RocksDB's and grpc's name theirs."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")].rstrip("0123456789") or "?"
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class ThreadCpuMeter:
    """CPU per thread group between two points, as percentages of one core. A thread that
    ended in between is not counted (the total from CpuMeter is)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = thread_cpu(self.pid)

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        now = thread_cpu(self.pid)
        pct = {k: round(100 * (v - self.c0.get(k, 0.0)) / wall, 1) for k, v in now.items()
               if wall > 0}
        return dict(sorted(((k, v) for k, v in pct.items() if v > 0), key=lambda kv: -kv[1]))


# ---- what a real agent sends ----------------------------------------------------------------

def agent_sample_shapes(n: int = 100) -> list[tuple[str, dict[str, str]]]:
    """``n`` (metric, labels) pairs shaped like one collection round of the real agent
    (agent/collect/metrics.py, Telegraf names: 101 samples on the 2-core test machine):
    cpu for cpu-total and 2 cores, mem, swap, system, processes, disk for two mounts, diskio,
    net for three interfaces. More than 100 asked: more cores."""
    shapes: list[tuple[str, dict[str, str]]] = []
    cpu_fields = ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal",
                  "guest", "active")
    cores = ["cpu-total"] + [f"cpu{i}" for i in range(max(2, (n - 70) // 10 + 1))]
    for c in cores[:3]:
        shapes += [(f"cpu_usage_{f}", {"cpu": c}) for f in cpu_fields]
    shapes += [(f"mem_{f}", {}) for f in ("total", "available", "used", "free", "cached",
                                          "buffers", "used_percent", "available_percent")]
    shapes += [(f"swap_{f}", {}) for f in ("total", "used", "free", "used_percent")]
    shapes += [(f"system_{f}", {}) for f in ("load1", "load5", "load15", "n_cpus", "n_users",
                                             "uptime")]
    shapes += [(f"processes_{f}", {}) for f in ("total", "running", "sleeping", "blocked",
                                                "stopped", "zombies", "idle")]
    for path, dev in (("/", "vda1"), ("/var", "vdb1")):
        shapes += [(f"disk_{f}", {"path": path, "device": dev, "fstype": "ext4"})
                   for f in ("total", "free", "used", "used_percent", "inodes_total",
                             "inodes_free", "inodes_used")]
    shapes += [(f"diskio_{f}", {"name": "vda"}) for f in ("reads", "writes", "read_bytes",
                                                           "write_bytes", "read_time",
                                                           "write_time", "io_time")]
    net_fields = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "err_in",
                  "err_out", "drop_in", "drop_out")
    for iface in ("eth0", "eth1", "lo"):
        shapes += [(f"net_{f}", {"interface": iface}) for f in net_fields]
    for c in cores[3:]:
        shapes += [(f"cpu_usage_{f}", {"cpu": c}) for f in cpu_fields]
    return shapes[:n]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class BatchEncoder:
    """``AgentMessage{metrics: MetricBatch}`` as wire bytes, built by hand from pre-encoded
    parts: a simulator sending thousands of batches a second should spend its CPU on the
    connection, not on protobuf objects. ``encode`` makes the first form (``samples``, each
    with its metric, labels and time: what agents before the compact form sent and what the
    spool keeps), ``encode_compact`` the compact one the real agent sends when the Welcome
    offers it (series 0..n-1 defined in the stream's first batch, then references and
    values). ``check()`` compares the bytes with what protobuf (and the agent's own
    ``agent.control.compact_batch``) makes of the same batch."""

    def __init__(self, shapes: list[tuple[str, dict[str, str]]]) -> None:
        import random
        import struct

        self.shapes = shapes
        self.prefixes: list[bytes] = []
        defs: list[bytes] = []
        for ref, (metric, labels) in enumerate(shapes):
            m = metric.encode()
            p = b"\x0a" + _varint(len(m)) + m
            entries = b""
            for k, v in labels.items():
                kb, vb = k.encode(), v.encode()
                entry = b"\x0a" + _varint(len(kb)) + kb + b"\x12" + _varint(len(vb)) + vb
                p += b"\x12" + _varint(len(entry)) + entry
                entries += b"\x1a" + _varint(len(entry)) + entry
            self.prefixes.append(p)
            body = (b"\x08" + _varint(ref) if ref else b"") + b"\x12" + _varint(len(m)) + m + entries
            defs.append(b"\x22" + _varint(len(body)) + body)
        self.defs = b"".join(defs)
        packed = b"".join(_varint(i) for i in range(len(shapes)))
        self.refs = b"\x2a" + _varint(len(packed)) + packed if shapes else b""
        self.values_head = b"\x32" + _varint(8 * len(shapes)) if shapes else b""
        rng = random.Random(7)
        self._raw = [struct.pack("<d", rng.uniform(0, 1e9)) for _ in range(997)]
        self._dbl = [b"\x19" + d for d in self._raw]

    def encode(self, seq: int, t_ms: int, ack_now: bool = False) -> bytes:
        tail = b"\x20" + _varint(t_ms)
        dbl = self._dbl
        k = len(dbl)
        parts = [b"\x08" + _varint(seq)]
        for i, p in enumerate(self.prefixes):
            body = p + dbl[(seq * 31 + i) % k] + tail
            parts.append(b"\x12" + _varint(len(body)) + body)
        if ack_now:
            parts.append(b"\x40\x01")
        inner = b"".join(parts)
        return b"\x62" + _varint(len(inner)) + inner

    def encode_compact(self, seq: int, t_ms: int, define: bool, ack_now: bool = False) -> bytes:
        """The compact form; ``define``: the stream's first batch (it defines the series)."""
        raw = self._raw
        k = len(raw)
        n = len(self.shapes)
        start = seq * 31
        values = b"".join([raw[(start + i) % k] for i in range(n)])
        inner = b"".join([b"\x08" + _varint(seq), self.defs if define else b"", self.refs,
                          self.values_head, values, b"\x38" + _varint(t_ms),
                          b"\x40\x01" if ack_now else b""])
        return b"\x62" + _varint(len(inner)) + inner

    def check(self) -> None:
        from agent.control import compact_batch
        from overcast.agent.v1 import agent_pb2 as pb

        t = 1_800_000_000_123
        raw = self.encode(42, t)
        msg = pb.AgentMessage.FromString(raw)
        assert msg.WhichOneof("body") == "metrics" and msg.metrics.seq == 42
        assert len(msg.metrics.samples) == len(self.shapes)
        for s, (metric, labels) in zip(msg.metrics.samples, self.shapes, strict=True):
            assert s.metric == metric and dict(s.labels) == labels and s.time_ms == t
        again = pb.AgentMessage(metrics=pb.MetricBatch(seq=42, samples=[
            pb.Sample(metric=s.metric, labels=dict(s.labels), value=s.value, time_ms=s.time_ms)
            for s in msg.metrics.samples]))
        assert pb.AgentMessage.FromString(again.SerializeToString()) == msg
        assert pb.AgentMessage.FromString(self.encode(42, t, ack_now=True)).metrics.ack_now
        # the compact form says the same as the agent's own conversion of that batch
        table: dict[Any, int] = {}
        for define in (True, False):
            mine = pb.AgentMessage.FromString(self.encode_compact(42, t, define, ack_now=not define))
            agents = compact_batch(msg.metrics, table)
            agents.ack_now = not define
            assert mine.metrics == agents, (mine, agents)
        assert not pb.AgentMessage.FromString(self.encode_compact(43, t, False)).metrics.series


# ---- simulated agents: worker processes ------------------------------------------------------
#
# A worker is ``python -c "...common.simulator_main()" CONFIG_JSON``: one asyncio loop with many
# simulated agents, each with its own EC P-256 key and certificate (enrolled through the real
# REST route with a join token) and its own mTLS gRPC channel and Connect stream, speaking the
# real protocol: Hello (with an inventory), Welcome, MetricBatch every ``interval`` seconds at
# a random phase, at most IN_FLIGHT unacknowledged, replay of the unacknowledged after a
# reconnect, and the real agent's reconnect backoff (agent.control.backoff_delays). The parent
# (SimPool) drives workers with JSON lines on stdin; each answers one JSON line on stdout.

SIM_METHOD = "/overcast.agent.v1.AgentService/Connect"


def _sim_inventory_bytes(hostname: str) -> Any:
    from agent import AGENT_VERSION
    from agent.collect.inventory import inventory

    inv = inventory(AGENT_VERSION)
    inv.hostname = hostname
    return inv


class _SimAgent:
    __slots__ = ("w", "i", "agent_id", "key", "cert", "seq", "acked", "sent", "pending",
                 "wake", "up", "welcomed_once", "sessions", "failures", "down_at", "up_at",
                 "attempts_since_down", "last_error", "task", "hello", "flood_base", "downs",
                 "compact", "defined")

    def __init__(self, w: Any, i: int, agent_id: str, key: bytes, cert: bytes) -> None:
        import asyncio
        import collections

        self.w, self.i, self.agent_id, self.key, self.cert = w, i, agent_id, key, cert
        self.seq = self.acked = self.sent = 0
        self.pending: collections.deque[tuple[int, float]] = collections.deque()
        self.wake = asyncio.Event()
        self.up = False
        self.welcomed_once = asyncio.Event()
        self.sessions = self.failures = 0
        self.down_at: float | None = None
        self.up_at: float | None = None
        self.attempts_since_down = 0
        self.downs = 0  # times the stream went down since the last mark
        self.last_error = ""
        self.task: Any = None
        self.hello = b""
        self.flood_base = 1_700_000_000_000 + i * 10_000_000
        self.compact = False  # this stream takes the compact form
        self.defined = False  # its series are defined (they are, after its first batch)

    # the collector: called by the worker's ticker (or by the sender in flood mode)
    def collect(self, now: float) -> None:
        self.seq += 1
        self.pending.append((self.seq, now))
        if len(self.pending) > self.w.spool_max:
            self.pending.popleft()  # the spool is full: the oldest batch is dropped
            self.w.dropped += 1
        self.wake.set()

    async def run(self, first_gate: Any) -> None:
        import asyncio

        import grpc

        from agent.control import backoff_delays

        delays = backoff_delays(self.w.rng)
        gate = first_gate
        while not self.w.stopping:
            try:
                if gate is not None:  # the ramp: at most so many handshakes at once
                    async with gate:
                        ch, call = await self._open()
                    gate = None
                else:
                    ch, call = await self._open()
                await self._stream(ch, call)
                delays = backoff_delays(self.w.rng)  # a session that ran resets the backoff
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                self.failures += 1
            except Exception as exc:  # noqa: BLE001 - counted, then retried like the agent
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.failures += 1
            self._went_down()
            if self.w.stopping:
                return
            self.attempts_since_down += 1
            await asyncio.sleep(next(delays))

    def _went_down(self) -> None:
        if self.up:
            self.up = False
            self.w.up_count -= 1
            self.down_at = time.time()
            self.up_at = None
            self.attempts_since_down = 0
            self.downs += 1

    async def _stream(self, ch: Any, call: Any) -> None:
        import asyncio

        import grpc

        try:
            sender = asyncio.create_task(self._send(call))
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    if msg.WhichOneof("body") == "batch_ack":
                        self.w.ack_msgs += 1
                        self._ack(msg.batch_ack.seq)
                    if sender.done():
                        sender.result()
            finally:
                sender.cancel()
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise ConnectionError(f"{code.name}: {await call.details()}")
            self.last_error = "stream ended by the controller (OK)"
        finally:
            await ch.close()

    async def _open(self) -> tuple[Any, Any]:
        import grpc

        from agent.control import KEEPALIVE as keepalive
        from overcast.agent.v1 import agent_pb2 as pb

        w = self.w
        creds = grpc.ssl_channel_credentials(root_certificates=w.ca_pem, private_key=self.key,
                                             certificate_chain=self.cert)
        ch = grpc.aio.secure_channel(w.endpoint, creds, options=keepalive)
        try:
            call = ch.stream_stream(SIM_METHOD, request_serializer=None,
                                    response_deserializer=pb.ControllerMessage.FromString)()
            if not self.hello:
                self.hello = pb.AgentMessage(hello=pb.Hello(
                    agent_id=self.agent_id, protocol_version=1, agent_version=w.inv.agent_version,
                    inventory=w.inventory_for(self.i))).SerializeToString()
            await call.write(self.hello)
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                code = await call.code()
                raise ConnectionError(f"not welcomed: {code.name} {await call.details()}")
        except BaseException:
            await ch.close()
            raise
        acked = first.welcome.acked_seq
        self.compact = w.compact and first.welcome.compact_metrics
        self.defined = False
        self._ack(acked, record=False)
        self.sent = max(self.acked, acked)
        self.sessions += 1
        now = time.time()
        if not self.up:
            self.up = True
            w.up_count += 1
            self.up_at = now
        self.welcomed_once.set()
        return ch, call

    def _ack(self, seq: int, record: bool = True) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        now = time.time()
        p = self.pending
        w = self.w
        lat = w.lat if record and w.recording else None
        probe = w.probe_every
        n = 0
        while p and p[0][0] <= seq:
            s, t = p.popleft()
            n += 1
            if lat is not None:
                lat.append(now - t)
                if probe and (s + self.i) % probe == 0:
                    w.store_lat.append(now - t)
        self.w.acks += n  # batches acknowledged
        self.wake.set()

    def _t_ms(self, seq: int, t: float) -> int:
        return self.flood_base + seq if self.w.flood else int(t * 1000)

    async def _send(self, call: Any) -> None:
        w = self.w
        enc = w.encoder
        while True:
            while self.sent - self.acked < w.in_flight:
                if w.flood and self.sent >= self.seq:
                    self.collect(time.time())
                p = self.pending
                if not p or self.sent >= self.seq:
                    break
                s = max(self.sent + 1, p[0][0])
                t = p[s - p[0][0]][1]
                # (each agent its own phase: the agents of a run start together)
                probe = w.probe_every > 0 and (s + self.i) % w.probe_every == 0
                if self.compact:
                    data = enc.encode_compact(s, self._t_ms(s, t), not self.defined, probe)
                    self.defined = True
                else:
                    data = enc.encode(s, self._t_ms(s, t), probe)
                await call.write(data)
                self.sent = s
                w.sent += 1
            self.wake.clear()
            await self.wake.wait()


class _SimWorker:
    agent_class: Any = None  # the simulated agent's class (_SimAgent unless a subclass says)

    def __init__(self, cfg: dict[str, Any]) -> None:
        import random

        self.cfg = cfg
        self.index = int(cfg["index"])
        self.rng = random.Random(1000 + self.index)
        self.interval = float(cfg.get("interval", 10.0))
        self.in_flight = int(cfg.get("in_flight", 32))
        self.spool_max = int(cfg.get("spool_max", 6000))
        # the compact form when the controller offers it (as the real agent); every
        # probe_every-th batch asks for its acknowledgement at once (ack_now): its lag is
        # the store's, the others' include the controller's acknowledging every few batches
        self.compact = bool(cfg.get("compact", True))
        self.probe_every = int(cfg.get("probe_every", 30))
        self.encoder = BatchEncoder(agent_sample_shapes(int(cfg.get("samples", 100))))
        self.encoder.check()
        self.inv = _sim_inventory_bytes("sim")
        self.agents: list[_SimAgent] = []
        self.creds: list[tuple[str, bytes, bytes]] = []
        self.ca_pem = b""
        self.endpoint = ""
        self.stopping = False
        self.flood = False
        self.recording = False
        self.lat: list[float] = []
        self.store_lat: list[float] = []
        self.up_count = 0
        self.sent = self.acks = self.dropped = 0
        self.ack_msgs = 0  # BatchAck messages (one may acknowledge several batches)
        self.mark_t = 0.0

    def inventory_for(self, i: int) -> Any:
        inv = type(self.inv)()
        inv.CopyFrom(self.inv)
        inv.hostname = f"sim-{self.index}-{i:05d}"
        return inv

    # ---- operations ---------------------------------------------------------------------
    async def op_enroll(self, n: int, url: str, token: str) -> dict[str, Any]:
        import asyncio

        import aiohttp

        from agent.state import make_key_and_csr

        t0 = time.perf_counter()
        keygen = 0.0
        errors: list[str] = []
        async with aiohttp.ClientSession() as s:
            for k in range(n):
                if self.stopping:
                    break
                i = len(self.creds)
                a = time.perf_counter()
                key, csr = make_key_and_csr(f"sim-{self.index}-{i:05d}")
                keygen += time.perf_counter() - a
                body = {"join_token": token, "csr_pem": csr.decode(), "protocol_version": 1,
                        "hostname": f"sim-{self.index}-{i:05d}", "agent_version": "sim"}
                for attempt in range(5):
                    async with s.post(url + "/api/v2/agents/enroll", json=body) as r:
                        data = await r.json()
                        if r.status == 201:
                            break
                        if r.status == 409 and attempt < 4:
                            await asyncio.sleep(0.05)
                            continue
                        errors.append(f"{r.status}: {str(data)[:200]}")
                        break
                if r.status != 201:
                    if len(errors) > 20:
                        break
                    continue
                self.ca_pem = data["ca_pem"].encode()
                self.endpoint = data["grpc"]
                self.creds.append((data["agent_id"], key, data["certificate_pem"].encode()))
                if (k + 1) % 500 == 0:
                    _sim_log(f"worker {self.index}: enrolled {k + 1}/{n}")
        s_ = time.perf_counter() - t0
        return {"enrolled": len(self.creds), "seconds": round(s_, 2),
                "keygen_s": round(keygen, 2), "errors": errors[:5], "error_count": len(errors)}

    async def op_connect(self, n: int, concurrency: int = 64, timeout: float = 300.0,
                         endpoint: str = "") -> dict[str, Any]:
        import asyncio

        if endpoint:
            self.endpoint = endpoint
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)
        new = []
        for i in range(len(self.agents), min(n, len(self.creds))):
            aid, key, cert = self.creds[i]
            a = (self.agent_class or _SimAgent)(self, i, aid, key, cert)
            self.agents.append(a)
            a.task = asyncio.create_task(a.run(gate))
            new.append(a)
            self._schedule(a)
        waits = [asyncio.create_task(a.welcomed_once.wait()) for a in new]
        done, pending = await asyncio.wait(waits, timeout=timeout) if waits else (set(), set())
        for t in pending:
            t.cancel()
        return {"agents": len(self.agents), "new": len(new), "welcomed": len(done),
                "up": self.up_count, "seconds": round(time.perf_counter() - t0, 2),
                "failures": sum(a.failures for a in new),
                "errors": sorted({a.last_error for a in new if a.failures})[:5]}

    def _schedule(self, a: _SimAgent) -> None:
        import heapq

        if self.interval > 0 and not self.flood:
            heapq.heappush(self.heap, (time.time() + self.rng.uniform(0, self.interval), a.i))

    async def ticker(self) -> None:
        import asyncio
        import heapq

        self.heap: list[tuple[float, int]] = []
        while not self.stopping:
            now = time.time()
            h = self.heap
            while h and h[0][0] <= now:
                due, i = heapq.heappop(h)
                self.agents[i].collect(now)
                heapq.heappush(h, (due + self.interval, i))
            await asyncio.sleep(0.02)

    def op_stats(self, reset: bool = True, record: bool = True) -> dict[str, Any]:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"lat_ms": [round(x * 1000, 2) for x in self.lat],
               "store_lat_ms": [round(x * 1000, 2) for x in self.store_lat], "up": self.up_count,
               "agents": len(self.agents), "sent": self.sent, "acks": self.acks,
               "ack_msgs": self.ack_msgs,
               "dropped": self.dropped, "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
               "maxrss_mib": round(ru.ru_maxrss / 1024, 1),
               "failures": sum(a.failures for a in self.agents),
               "unacked_batches": sum(len(a.pending) for a in self.agents)}
        if reset:
            self.lat = []
            self.store_lat = []
            self.sent = self.acks = self.ack_msgs = 0
        self.recording = record
        return out

    def op_mark(self) -> dict[str, Any]:
        self.mark_t = time.time()
        for a in self.agents:
            a.down_at = a.up_at = None
            a.attempts_since_down = a.downs = 0
        return {"up": self.up_count}

    def op_outages(self) -> dict[str, Any]:
        rows = [(a.down_at, a.up_at, a.attempts_since_down, a.downs) for a in self.agents
                if a.down_at is not None]
        return {"rows": rows, "up": self.up_count, "agents": len(self.agents),
                "never_down": sum(1 for a in self.agents if a.down_at is None),
                "errors": sorted({a.last_error for a in self.agents if a.last_error})[:8]}

    async def op_flood(self, seconds: float) -> dict[str, Any]:
        import asyncio

        self.flood = True
        self.op_stats(reset=True, record=True)
        for a in self.agents:
            a.wake.set()
        await asyncio.sleep(seconds)
        self.flood = False
        return self.op_stats(reset=True, record=False)

    async def op_quit(self) -> dict[str, Any]:
        import asyncio

        self.stopping = True
        for a in self.agents:
            if a.task is not None:
                a.task.cancel()
        await asyncio.gather(*(a.task for a in self.agents if a.task is not None),
                             return_exceptions=True)
        return {"quit": True}


def _sim_log(msg: str) -> None:
    print(f"[sim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def serve_worker(cfg: dict[str, Any], worker_class: Any = None) -> int:
    """A worker process's loop: one JSON command per line on stdin (``op`` and its
    arguments), calling ``op_<op>`` of the worker (``_SimWorker`` unless a subclass is
    given), one JSON answer per line on stdout; ``quit`` ends it."""
    import asyncio
    import inspect

    w = (worker_class or _SimWorker)(cfg)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tick = asyncio.create_task(w.ticker())
    print(json.dumps({"ready": True, "index": w.index}), flush=True)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break  # the parent went away
            cmd = json.loads(line)
            op = cmd.pop("op")
            cid = cmd.pop("id", None)
            try:
                fn = getattr(w, f"op_{op}", None)
                if fn is None:
                    raise ValueError(f"unknown op {op}")
                res = fn(**cmd)
                if inspect.isawaitable(res):
                    res = await res
                print(json.dumps({"id": cid, "ok": True, **res}), flush=True)
                if op == "quit":
                    return 0
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                import traceback

                _sim_log(traceback.format_exc())
                print(json.dumps({"id": cid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}),
                      flush=True)
    finally:
        w.stopping = True
        tick.cancel()
    return 0


def simulator_main() -> int:
    """Entry point of a worker process (see SimPool)."""
    import asyncio

    raise_nofile()
    cfg = json.loads(sys.argv[1])
    try:
        return asyncio.run(serve_worker(cfg))
    except KeyboardInterrupt:
        return 130


class SimPool:
    """Worker processes of simulated agents, driven with JSON lines; ``ask`` sends one
    operation to every worker (the same or one each) and waits for all answers."""

    def __init__(self, workers: int, cfg: dict[str, Any], log_dir: Path) -> None:
        import queue
        import subprocess
        import threading

        self.procs: list[Any] = []
        self.queues: list[queue.Queue[Any]] = []
        self.logs: list[Path] = []
        self._n = 0
        code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import common; "
                "sys.exit(common.simulator_main())")
        for i in range(workers):
            log_path = log_dir / f"sim-{i}.log"
            self.logs.append(log_path)
            p = subprocess.Popen([sys.executable, "-c", code, json.dumps({**cfg, "index": i})],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(log_path, "w"), text=True, cwd=str(ROOT))  # noqa: SIM115
            q: queue.Queue[Any] = queue.Queue()
            threading.Thread(target=self._pump, args=(p, q), daemon=True).start()
            self.procs.append(p)
            self.queues.append(q)
        for i in range(workers):
            self._get(i, 120)  # {"ready": true}

    @staticmethod
    def _pump(p: Any, q: Any) -> None:
        for line in p.stdout:
            try:
                q.put(json.loads(line))
            except ValueError:
                q.put({"ok": False, "error": f"bad line {line[:200]!r}"})
        q.put(None)

    def _get(self, i: int, timeout: float) -> dict[str, Any]:
        import queue

        try:
            msg = self.queues[i].get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"simulator {i} did not answer in {timeout:.0f} s "
                               f"(log {self.logs[i]}: {self.tail(i)})") from None
        if msg is None:
            raise RuntimeError(f"simulator {i} exited {self.procs[i].poll()}: {self.tail(i)}")
        return msg  # type: ignore[no-any-return]

    def tail(self, i: int, lines: int = 15) -> str:
        try:
            return "\n".join(self.logs[i].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ask(self, op: str, args: dict[str, Any] | list[dict[str, Any]] | None = None,
            timeout: float = 600) -> list[dict[str, Any]]:
        self._n += 1
        per = args if isinstance(args, list) else [args or {}] * len(self.procs)
        for p, a in zip(self.procs, per, strict=True):
            assert p.stdin is not None
            p.stdin.write(json.dumps({"op": op, "id": self._n, **a}) + "\n")
            p.stdin.flush()
        out = []
        deadline = time.monotonic() + timeout
        for i in range(len(self.procs)):
            msg = self._get(i, max(1.0, deadline - time.monotonic()))
            if not msg.get("ok"):
                raise RuntimeError(f"simulator {i}: {op} failed: {msg.get('error')}")
            out.append(msg)
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self, timeout: float = 60) -> None:
        import subprocess

        for p in self.procs:
            if p.poll() is None and p.stdin is not None:
                try:
                    p.stdin.write(json.dumps({"op": "quit", "id": 0}) + "\n")
                    p.stdin.flush()
                    p.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def merge_latencies(replies: list[dict[str, Any]], key: str = "lat_ms") -> dict[str, float]:
    """Percentiles of the simulators' latencies (milliseconds in, milliseconds out): ``lat_ms``
    from each batch's sample time to the acknowledgement that covered it, ``store_lat_ms``
    the same for the batches that asked to be acknowledged at once (the store's lag)."""
    lat = [x / 1000 for r in replies for x in r.get(key, [])]
    return percentiles(lat)


def make_join_tokens(c: Any, n: int, uses: int, ttl: int = 3600) -> list[str]:
    """``n`` join tokens of ``uses`` each, made with an admin session (and its CSRF header)."""
    h = c.session()
    out = []
    for i in range(n):
        r = h.post("/api/v2/agents/tokens", {"uses": uses, "ttl": ttl, "name": f"bench-{i}"})
        if r.status != 201:
            raise RuntimeError(f"POST /api/v2/agents/tokens answered {r.status}: {r.body}")
        out.append(str(r.body["token"]))
    return out


def split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts (the first ones one larger)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class AgentFleet:
    """A real controller (``tests/support/controller.py``) on a temporary data directory, and
    simulator processes (:class:`SimPool`) of agents enrolled on it through the real route:
    the start-up and the tear-down agents_scale_bench and reconnect_bench share. Use it as a
    context manager: on an error the controller's and simulators' last log lines are printed,
    and in every case the simulators and the controller are stopped and the directory
    removed (``stopped`` then holds the controller's exit code and how long it took)."""

    def __init__(self, prefix: str, workers: int, sim_cfg: dict[str, Any],
                 controller_env: dict[str, str] | None = None) -> None:
        import tempfile

        from tests.support.controller import Controller

        self.nofile = raise_nofile()  # the controller and simulators inherit it
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.controller = Controller(self.tmp, controller_env or {})
        self.workers = workers
        self.sim_cfg = sim_cfg
        self.pool: SimPool | None = None
        self.stopped: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.controller.proc is not None
        return self.controller.proc.pid

    def start_controller(self, timeout: float = 120) -> None:
        """The admin made offline (``overcast adduser``), then the controller started."""
        from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD

        self.controller.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        self.controller.start(timeout=timeout)

    def start_simulators(self, agents: int) -> None:
        """The simulator processes, and one join token for each with room for its share of
        ``agents``."""
        self.tokens = make_join_tokens(self.controller, self.workers,
                                       math.ceil(agents / self.workers) + 10)
        self.pool = SimPool(self.workers, self.sim_cfg, self.tmp)

    def enrol(self, agents: int, timeout: float = 600) -> dict[str, Any]:
        """Every simulator enrols its share of ``agents`` (an EC P-256 key and CSR each,
        ``POST /api/v2/agents/enroll``), all simulators at once."""
        assert self.pool is not None
        cpu = CpuMeter(self.pid)
        t0 = time.perf_counter()
        replies = self.pool.ask("enroll", [{"n": n, "url": self.controller.url, "token": tok}
                                           for n, tok in zip(split(agents, self.workers),
                                                             self.tokens, strict=True)],
                                timeout=timeout)
        seconds = time.perf_counter() - t0
        enrolled = sum(r["enrolled"] for r in replies)
        return {"agents": enrolled, "seconds": round(seconds, 2), "per_s": rate(enrolled, seconds),
                "keygen_s_per_worker": [r["keygen_s"] for r in replies],
                "errors": [e for r in replies for e in r["errors"]][:5],
                "controller_cpu": cpu.read()}

    def connect(self, counts: list[int], timeout: float, concurrency: int = 64) -> list[dict[str, Any]]:
        """Each simulator opens streams until it has ``counts[i]`` agents connected (at
        most ``concurrency`` handshakes in flight); the simulators' answers."""
        assert self.pool is not None
        return self.pool.ask("connect", [{"n": n, "concurrency": concurrency, "timeout": timeout}
                                         for n in counts], timeout=timeout + 60)

    def log_tails(self) -> None:
        c = self.controller
        if c.log_path.exists():
            tail = c.log_path.read_text(errors="replace").splitlines()[-30:]
            print("controller log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        if self.pool is not None:
            for i in range(len(self.pool.procs)):
                print(f"simulator {i} log (last lines):\n{self.pool.tail(i)}", file=sys.stderr)

    def close(self) -> None:
        import shutil

        try:
            if self.pool is not None:
                progress("stopping the simulators")
                self.pool.close()
        finally:
            c = self.controller
            if c.proc is not None and c.proc.poll() is None:
                t0 = time.perf_counter()
                self.stopped = {"exit_code": c.stop(timeout=120),
                                "stop_s": round(time.perf_counter() - t0, 1)}
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> AgentFleet:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if kind is not None:
                self.log_tails()
        finally:
            self.close()


def smaps_breakdown(pid: int) -> dict[str, float]:
    """Where a process's resident memory is (MiB), from /proc/PID/smaps: the brk heap (glibc's
    main arena), anonymous mappings of 64 MiB and less (glibc's per-thread arenas reserve 64 MiB
    each), other anonymous mappings (Python's object arenas, mmapped buffers, stacks), and
    files (code, libraries). Stacks of threads other than the main one count as other."""
    out = {"heap": 0.0, "thread_arenas": 0.0, "other_anon": 0.0, "files": 0.0, "stack": 0.0}
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return {}
    kind = "other_anon"
    for line in text.splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            size_kb = (hi - lo) // 1024
            name = parts[5] if len(parts) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("[stack"):
                kind = "stack"
            elif name.startswith("/"):
                kind = "files"
            elif name == "":
                # glibc's thread arenas: 64 MiB reservations aligned on 64 MiB (the part in
                # use read-write, the rest PROT_NONE)
                kind = "thread_arenas" if lo % (64 << 20) == 0 and size_kb <= 65_536 else "other_anon"
            else:
                kind = "other_anon"
        elif first == "Rss:":
            out[kind] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}
