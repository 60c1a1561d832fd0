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
