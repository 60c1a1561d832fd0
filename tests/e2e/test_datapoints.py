"""GET /api/v2/datapoints on a real controller: a real agent reporting its host's metrics,
and a counter with a reset sent over the agent protocol as an agent would; the PromQL
subset over REST (rate across the reset, aggregations, arithmetic, comparisons), instant
and range shapes, tags and search restricting to machines, organisations kept apart, errors
naming the position, and `overcast datapoints`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest

from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http

# a counter every 10 s that restarts after 50 (the unit tests' numbers, over the wire)
COUNTER = [0, 10, 20, 30, 40, 50, 5, 15, 25, 35, 45, 55, 65]


@dataclass
class World:
    c: Controller
    admin: Http
    other: Http
    token: str
    host: AgentProc  # a real agent, reporting every second
    sender: AgentProc  # enrolled; its stream driven by the test
    t0: float  # the counter's first sample (Unix seconds)


async def _send(c: Controller, a: AgentProc, samples: list[pb.Sample]) -> None:
    """One metric batch over the agent's own mTLS stream, as an agent sends it."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(c.data_dir / "pki" / "ca.crt").read_bytes(),
        private_key=(a.state_dir / "key.pem").read_bytes(),
        certificate_chain=(a.state_dir / "cert.pem").read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.agents_port}", creds) as ch:
        call: Any = pb_grpc.AgentServiceStub(ch).Connect()
        await call.write(pb.AgentMessage(hello=pb.Hello(agent_id=a.agent_id, protocol_version=1)))
        assert (await call.read()).WhichOneof("body") == "welcome"
        await call.write(pb.AgentMessage(metrics=pb.MetricBatch(seq=1, samples=samples, ack_now=True)))
        while True:
            msg = await asyncio.wait_for(call.read(), 20)
            if msg.WhichOneof("body") == "batch_ack":
                assert msg.batch_ack.seq == 1
                break
        call.cancel()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dp")
    # a small budget, so a query over it is easy to make (the others read far less)
    c = Controller(tmp, extra_env={"OVERCAST_QUERY_MAX_SAMPLES": "10000"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.adduser("mallory@example.com", "mallory's password", "--org", "Mallory")
    c.start()
    host = sender = None
    try:
        token = c.token(name="dp")
        admin = c.http(token)
        other = c.http(c.token("mallory@example.com", "mallory's password", name="m"))
        host = AgentProc(c, tmp / "host", hostname="dp-host")
        assert host.enrol(join_token(admin, tags="env=dp")["token"]).returncode == 0
        host.start()
        sender = AgentProc(c, tmp / "sender", hostname="dp-sender")
        assert sender.enrol(join_token(admin, tags="env=counter")["token"]).returncode == 0
        t0 = float(int(time.time()) - 600)
        samples = [pb.Sample(metric="dp_counter", labels={"dev": "x"}, value=float(v),
                             time_ms=int((t0 + 10 * i) * 1000)) for i, v in enumerate(COUNTER)]
        asyncio.run(_send(c, sender, samples))
        yield World(c, admin, other, token, host, sender, t0)
    finally:
        if host is not None:
            host.stop()
        c.stop()


def get(h: Http, query: str, **params: Any) -> Any:
    qs = "&".join(f"{k}={quote(str(v))}" for k, v in {"query": query, **params}.items())
    r = h.get(f"/api/v2/datapoints?{qs}")
    assert r.status == 200, r.body
    assert r.body["meta"]["returned"] == len(r.body["data"]["data"]["result"])
    assert r.body["data"]["status"] == "success"
    return r.body["data"]["data"]


def test_rate_across_a_counter_reset_over_rest(world: World) -> None:
    at = world.t0 + 120
    d = get(world.admin, 'increase(dp_counter{dev="x"}[2m])', time=at)
    assert d["resultType"] == "vector"
    (s,) = d["result"]
    # no __name__ after a function, as Prometheus; machine_id and the machine's tags added
    # by the controller
    assert s["metric"] == {"dev": "x", "env": "counter", "machine_id": world.sender.agent_id}
    assert s["value"][0] == at and float(s["value"][1]) == pytest.approx(105 * 120 / 110)
    (s,) = get(world.admin, "rate(dp_counter[2m])", time=at)["result"]
    assert float(s["value"][1]) == pytest.approx(105 / 110)
    d = get(world.admin, "irate(dp_counter[30s])", start=world.t0 + 20, end=world.t0 + 80, step="20s")
    assert d["resultType"] == "matrix"
    assert d["result"][0]["values"] == [[world.t0 + 20, "1"], [world.t0 + 40, "1"],
                                        [world.t0 + 60, "0.5"], [world.t0 + 80, "1"]]


def test_a_real_agents_metrics_through_the_language(world: World) -> None:
    mid = world.host.agent_id
    wait_for(lambda: get(world.admin, "rate(net_bytes_recv[10s])")["result"], 60,
             "two samples of the agent's network counters")
    rates = get(world.admin, f'sum by (machine_id) (rate(net_bytes_recv{{machine_id="{mid}"}}[30s]))')
    assert [r["metric"] for r in rates["result"]] == [{"machine_id": mid}]
    assert float(rates["result"][0]["value"][1]) >= 0
    idle = get(world.admin, f'100 - cpu_usage_idle{{machine_id="{mid}",cpu="cpu-total"}}')["result"]
    assert len(idle) == 1 and "__name__" not in idle[0]["metric"]
    assert 0 <= float(idle[0]["value"][1]) <= 100
    assert get(world.admin, "mem_used_percent > bool 1000")["result"][0]["value"][1] == "0"
    kept = get(world.admin, "mem_used_percent >= 0")["result"]
    assert [r["metric"]["__name__"] for r in kept] == ["mem_used_percent"]
    assert get(world.admin, "mem_used_percent > 1000")["result"] == []
    d = get(world.admin, f'avg_over_time(system_load1{{machine_id="{mid}"}}[1m])',
            start=time.time() - 30, step="5s")
    steps = [t for t, _ in d["result"][0]["values"]]
    assert d["resultType"] == "matrix" and steps and all(b - a == 5 for a, b in zip(steps, steps[1:], strict=False))
    assert get(world.admin, "count(system_load1)")["result"][0]["value"][1] == "1"


def test_tags_and_search_restrict_to_matching_machines(world: World) -> None:
    mid = world.host.agent_id
    assert {r["metric"]["machine_id"] for r in get(world.admin, "system_load1", tags="env=dp")["result"]} == {mid}
    assert get(world.admin, "system_load1", tags="env=counter")["result"] == []
    assert get(world.admin, "dp_counter", tags="env=counter", time=world.t0 + 120)["result"]
    found = get(world.admin, "system_load1", search="name:dp-host")["result"]
    assert [r["metric"]["machine_id"] for r in found] == [mid]
    assert get(world.admin, "system_load1", search="name:nothing-like-it")["result"] == []


def test_other_organisations_see_nothing(world: World) -> None:
    assert get(world.other, "system_load1")["result"] == []
    assert get(world.other, "rate(dp_counter[2m])", time=world.t0 + 120)["result"] == []
    assert world.c.http().get("/api/v2/datapoints?query=system_load1").status == 401


# GET /api/v2/datapoints in Mist's spec (../shared/reference/mist-openapi.yaml): its examples
# (as text; tags' second example is a dictionary, which a client sends as separate query
# parameters, not as tags: only the first form is a tags parameter)
SPEC_EXAMPLES: dict[str, list[Any]] = {
    "query": ["system_load1", 'rate(net_bytes_sent{interface="eth0", machine_id="1234"})'],
    "tags": ["cluster=east1,production", {"cluster": "east1", "production": ""}],
    "search": ["state:running"],
    "start": ["1633096171", "2019-10-12T07:20:50.52Z"],
    "end": ["1633096171", "2019-10-12T07:20:50.52Z"],
    "step": ["5.0", "5s", "1m", "2h", "20d", "4w", "1y"],
    "time": ["1633096171", "2019-10-12T07:20:50.52Z"],
}


def test_the_examples_of_mists_spec_are_answered(world: World) -> None:
    spec = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "mist-openapi.yaml"
    if spec.exists():  # the examples above are the spec's (shared/ sits beside the clone)
        yaml = pytest.importorskip("yaml")
        loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # every scalar as text
        op = yaml.load(spec.read_text(), Loader=loader)["paths"]["/api/v2/datapoints"]["get"]
        assert {p["name"]: [e["value"] for e in p["examples"].values()]
                for p in op["parameters"]} == SPEC_EXAMPLES
    for query in SPEC_EXAMPLES["query"]:  # rate(...) without a range: 5 minutes
        assert get(world.admin, query)["resultType"] == "vector"
    assert get(world.admin, SPEC_EXAMPLES["query"][1])["result"] == []  # no machine "1234"
    mid = world.host.agent_id
    # the same query on a machine that has the counter: a rate per interface
    wait_for(lambda: get(world.admin, f'rate(net_bytes_sent{{machine_id="{mid}"}})')["result"],
             60, "two samples of the agent's network counters")
    rates = get(world.admin, f'rate(net_bytes_sent{{machine_id="{mid}"}})')["result"]
    assert rates == get(world.admin, f'rate(net_bytes_sent{{machine_id="{mid}"}}[5m])',
                        time=rates[0]["value"][0])["result"]
    assert get(world.admin, "system_load1", tags=SPEC_EXAMPLES["tags"][0])["result"] == []
    assert get(world.admin, "system_load1", search=SPEC_EXAMPLES["search"][0])["resultType"] == (
        "vector")
    # from a moment ago (an hour ago by default: a step of 2h would then be only that time,
    # before the agent started), once the agent has sent a sample that old
    wait_for(lambda: get(world.admin, "system_load1", time=time.time() - 5)["result"], 60,
             "a sample 5 s old")
    start = time.time() - 5
    for step in SPEC_EXAMPLES["step"]:
        d = get(world.admin, "system_load1", step=step, start=start)
        assert d["resultType"] == "matrix" and d["result"], step
    for at in SPEC_EXAMPLES["time"]:  # 2021 and 2019: no samples then
        assert get(world.admin, "system_load1", time=at) == {"resultType": "vector", "result": []}
    for start, end in zip(SPEC_EXAMPLES["start"], SPEC_EXAMPLES["end"], strict=True):
        assert get(world.admin, "system_load1", start=start, end=end)["resultType"] == "matrix"


def test_a_query_over_its_budget_is_refused_saying_how_to_narrow_it(world: World) -> None:
    # 3 hours at 1 s steps: 10,801 points for the one series, over the 10,000 this
    # controller allows (query_max_samples)
    end = time.time()
    r = world.admin.get(f"/api/v2/datapoints?query=dp_counter&start={end - 3 * 3600}"
                        f"&end={end}&step=1s")
    assert r.status == 422, r.body
    err = r.body["error"]
    assert err["details"] == {"field": "query", "limit": "query_max_samples"}
    assert "more than 10,000 samples" in err["message"] and "narrow it" in err["message"]
    r = world.admin.get(f"/api/v2/datapoints?query=dp_counter&start={end - 3 * 3600}"
                        f"&end={end}&step=2s")
    assert r.status == 200, r.body


@pytest.mark.parametrize(("query", "status", "position"), [
    ("rate(sum(dp_counter))", 400, 6), ("sum(a) / sum(b)", 400, 8),
    ('x{a=~"(?=b)"}', 400, 3), ('x{a="b"} extra', 400, 10),
    ("topk(3, x)", 400, 1), ("1 + 1", 422, None),
])
def test_bad_queries_say_where(world: World, query: str, status: int, position: int | None) -> None:
    r = world.admin.get(f"/api/v2/datapoints?query={quote(query)}")
    assert r.status == status, r.body
    err = r.body["error"]
    assert err["details"]["field"] == "query" and err["details"].get("position") == position
    if position:
        assert f"at position {position}" in err["message"]


def test_cli_shows_results_without_a_metric_name(world: World, tmp_path: Path) -> None:
    env = {"OVERCAST_URL": world.c.url, "OVERCAST_TOKEN": world.token}
    r = world.c.cli("datapoints", "sum by (dev) (rate(dp_counter[2m]))", "--time",
                    str(world.t0 + 120), env=env)
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if "dev=x" in line]
    assert len(row) == 1 and "0.954545" in row[0], r.stdout
    r = world.c.cli("datapoints", "dp_counter", "--start", str(world.t0), "--end",
                    str(world.t0 + 40), "--step", "20s", "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["resultType"] == "matrix" and [v for _, v in d["result"][0]["values"]] == ["0", "20", "40"]
    r = world.c.cli("datapoints", "system_load1", "--start", "2m", "--step", "30s", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["result"], r.stderr
    r = world.c.cli("datapoints", "rate(1)", env=env)
    assert r.returncode == 1 and "position 6" in r.stderr
