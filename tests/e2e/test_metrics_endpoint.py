"""GET /metrics on a real controller with a real agent: refused without a platform admin's
API token (401/403, JSON), then scraped and parsed as the Prometheus text format: agents
connected, ingest totals growing, datapoint query durations, cloud poll durations per
provider and outcome (a fake DigitalOcean API that answers, then is gone), jobs by state,
the TSDB's figures, the store's memory (within the store_* settings, which reach RocksDB)
and the process's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.controller.monitor.exposition import Samples, parse_exposition
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.clouds import poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http
from tests.support.fake_digitalocean import start_fake_digitalocean

NO_LABELS: frozenset[tuple[str, str]] = frozenset()


@dataclass
class World:
    c: Controller
    admin: Http
    member: Http
    agent: AgentProc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("metrics")
    # a smaller store memory than the defaults: the settings reach RocksDB (see below)
    c = Controller(tmp, {"OVERCAST_STORE_WRITE_BUFFER_MIB": "8", "OVERCAST_STORE_CACHE_MIB": "16"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.adduser("owner@example.com", "an owner's password", "--org", "Other")
    c.start()
    agent = None
    try:
        admin = c.http(c.token(name="scraper"))
        member = c.http(c.token("owner@example.com", "an owner's password", name="not-admin"))
        agent = AgentProc(c, tmp / "agent", hostname="scraped")
        assert agent.enrol(join_token(admin)["token"]).returncode == 0
        agent.start()
        yield World(c, admin, member, agent)
    finally:
        if agent is not None:
            agent.stop()
        c.stop()


def scrape(h: Http) -> tuple[dict[str, str], Samples]:
    r = h.get("/metrics")
    assert r.status == 200, r.body
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(r.raw.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_only_platform_admins_may_scrape(world: World) -> None:
    for h, status, code in ((world.c.http(), 401, "unauthenticated"),
                            (world.c.http("not-a-token"), 401, "unauthenticated"),
                            (world.member, 403, "forbidden")):
        r = h.get("/metrics")
        assert r.status == status and r.body["error"]["code"] == code, r.body
        assert "overcast_" not in r.raw.decode()
    assert world.c.session().get("/metrics").status == 200  # an admin's browser session too


def test_agents_ingest_and_queries_are_counted(world: World) -> None:
    wait_for(lambda: value(scrape(world.admin)[1], "overcast_agents_connected") == 1, 30,
             "the agent connected")
    wait_for(lambda: value(scrape(world.admin)[1], "overcast_ingest_samples_total") > 0, 30,
             "samples stored")
    types, first = scrape(world.admin)
    assert types["overcast_ingest_samples_total"] == "counter"
    assert types["overcast_agents_connected"] == "gauge"
    assert types["overcast_cloud_poll_duration_seconds"] == "histogram"
    assert value(first, "overcast_ingest_batches_total") >= 1
    assert value(first, "overcast_tsdb_series") >= 10
    assert value(first, "overcast_tsdb_rollup_runs_total") == 0  # the first run comes later
    assert value(first, "process_resident_memory_bytes") > 10 * 2**20
    memtables = value(first, "overcast_store_memory_bytes", part="memtables")
    assert 0 < memtables <= 2 * 8 * 2**20 + 2**20, memtables
    assert 0 <= value(first, "overcast_store_memory_bytes", part="block_cache") <= 16 * 2**20
    assert value(first, "overcast_store_memory_bytes", part="table_readers") >= 0
    options = max((world.c.data_dir / "store").glob("OPTIONS-*"),
                  key=lambda p: int(p.name.split("-")[1])).read_text()
    assert f"write_buffer_size={8 * 2**20}\n" in options
    log = (world.c.data_dir / "store" / "LOG").read_text()  # RocksDB's own account
    assert f"capacity : {16 * 2**20}\n" in log and "capacity : 8388608\n" not in log
    assert value(first, "process_cpu_seconds_total") > 0
    (version,) = [dict(k[1])["version"] for k in first if k[0] == "overcast_build_info"]
    assert version == world.c.http().get("/api/v2/health").body["version"]
    # the agent reports every second: the totals grow
    wait_for(lambda: value(scrape(world.admin)[1], "overcast_ingest_samples_total")
             > value(first, "overcast_ingest_samples_total"), 30, "more samples")
    before = first.get(("overcast_datapoints_query_seconds_count",
                        frozenset({("kind", "instant")})), 0.0)
    for _ in range(3):
        assert world.admin.get("/api/v2/datapoints?query=system_load1").status == 200
    assert world.admin.get("/api/v2/datapoints?query=system_load1&start=0&end=60&step=1").status == 200
    _, after = scrape(world.admin)
    assert value(after, "overcast_datapoints_query_seconds_count", kind="instant") == before + 3
    assert value(after, "overcast_datapoints_query_seconds_count", kind="range") == 1
    assert value(after, "overcast_datapoints_query_seconds_bucket", kind="range", le="+Inf") == 1


def test_cloud_polls_by_provider_and_outcome(world: World) -> None:
    h = world.admin
    api = start_fake_digitalocean()
    try:
        r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                      "credentials": {"token": api.token, "endpoint": api.url}})
        assert r.status == 201, r.body
        cid = r.body["data"]["id"]
        _, before = scrape(h)
        ok = ("overcast_cloud_poll_duration_seconds_count",
              frozenset({("provider", "digitalocean"), ("outcome", "ok")}))
        assert poll(h, cid)["state"] == "ok"
    finally:
        api.stop()
    assert poll(h, cid)["state"] == "error"  # its API is gone
    _, after = scrape(h)
    assert after[ok] >= before.get(ok, 0.0) + 1
    assert value(after, "overcast_cloud_poll_duration_seconds_count", provider="digitalocean",
                 outcome="error") >= 1
    assert value(after, "overcast_cloud_poll_duration_seconds_sum", provider="digitalocean",
                 outcome="ok") > 0


def test_jobs_by_state(world: World) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed (make test installs it)")
    h = world.admin
    r = h.post("/api/v2/clouds", {"name": "kvm", "provider": "kvm",
                                  "credentials": {"uri": "test:///default"}})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    assert poll(h, cid)["state"] == "ok"
    guest = [m for m in h.get(f"/api/v2/machines?cloud={cid}").body["data"] if m["name"] == "test"][0]
    r = h.post(f"/api/v2/machines/{guest['id']}/actions/stop")
    assert r.status == 202, r.body
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    # jobs are counted at most every 10 s (it reads every job)
    wait_for(lambda: value(scrape(h)[1], "overcast_jobs", state="succeeded") == 1, 30,
             "the job counted")
    _, after = scrape(h)
    assert value(after, "overcast_jobs", state="running") == 0
    assert value(after, "overcast_cloud_poll_duration_seconds_count", provider="kvm", outcome="ok") >= 1


def test_a_stopped_agent_is_no_longer_connected(world: World) -> None:
    world.agent.stop()
    wait_for(lambda: value(scrape(world.admin)[1], "overcast_agents_connected") == 0, 30,
             "the agent gone")
