"""Failure paths of the agents and datapoints API, REST, gRPC and CLI: bad input answers a
clear error naming the field, another organisation's ids are 404, and nothing is stored."""

from __future__ import annotations

import grpc
import pytest

from overcast.api.v1 import management_pb2 as pb
from overcast.api.v1 import management_pb2_grpc as pb_grpc
from tests.support.controller import Controller, Http


@pytest.fixture(scope="module")
def admin(controller: Controller) -> Http:
    return controller.http(controller.token(name="agents-api"))


@pytest.mark.parametrize(("body", "field"), [
    ({"ttl": 0}, "ttl"), ({"ttl": "1h"}, "ttl"), ({"uses": 0}, "uses"),
    ({"tags": "bad key=1"}, "tags"), ({"tags": {"k": 1}}, "tags"), ({"nope": 1}, "nope"),
])
def test_bad_join_token_requests_name_the_field_and_store_nothing(
        admin: Http, body: dict[str, object], field: str) -> None:
    before = admin.get("/api/v2/agents/tokens").body["meta"]["total"]
    r = admin.post("/api/v2/agents/tokens", body)
    assert r.status in (400, 422) and r.body["error"]["details"]["field"] == field, r.body
    assert admin.get("/api/v2/agents/tokens").body["meta"]["total"] == before


def test_unknown_and_foreign_agents_and_tokens_are_404(controller: Controller, admin: Http) -> None:
    tok = admin.post("/api/v2/agents/tokens", {"uses": 1}).body
    controller.adduser("mallory@example.com", "mallory's password", "--org", "Mallory")
    other = controller.http(controller.token("mallory@example.com", "mallory's password", name="m"))
    for h, path in ((other, f"/api/v2/agents/tokens/{tok['id']}"), (admin, "/api/v2/agents/tokens/none"),
                    (admin, "/api/v2/agents/none"), (other, "/api/v2/agents/none")):
        r = h.delete(path)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", (path, r.body)
    assert admin.get("/api/v2/agents/none").status == 404
    assert tok["id"] in {t["id"] for t in admin.get("/api/v2/agents/tokens").body["data"]}
    assert tok["id"] not in {t["id"] for t in other.get("/api/v2/agents/tokens").body["data"]}


@pytest.mark.parametrize(("query", "field"), [
    ("", "query"), ("query=cpu{", "query"), ("query=rate(1)", "query"),
    ("query=x&start=yesterday", "start"), ("query=x&step=fast", "step"),
    ("query=x&start=0&end=1000000&step=1s", "step"),
])
def test_bad_datapoint_queries_name_the_parameter(admin: Http, query: str, field: str) -> None:
    r = admin.get(f"/api/v2/datapoints?{query}")
    assert r.status == 400 and r.body["error"]["details"]["field"] == field, r.body


def test_grpc_and_cli_datapoints_refuse_bad_queries(controller: Controller) -> None:
    token = controller.token(name="dp-grpc")
    with grpc.insecure_channel(controller.grpc_addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.ManagementStub(ch).GetDatapoints(
                pb.GetDatapointsRequest(query="cpu{"), timeout=10,
                metadata=[("authorization", f"Bearer {token}")])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    env = {"OVERCAST_URL": controller.url, "OVERCAST_TOKEN": token}
    r = controller.cli("datapoints", "cpu{", env=env)
    assert r.returncode == 1 and "query" in r.stderr
    r = controller.cli("agent", "show", "nonexistent", env=env)
    assert r.returncode == 4
