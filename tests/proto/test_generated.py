"""The committed protocol modules are fresh, import, and round-trip."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


def _load_generate() -> ModuleType:
    # Load by path under a unique name: `generate` alone is too generic a module name.
    name = "_overcast_proto_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROTO_ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    gen = _load_generate()
    fresh = gen.generate(tmp_path)
    assert fresh, "no .proto files found under proto/overcast"

    stale = []
    for path in fresh:
        rel = path.relative_to(tmp_path)
        committed = PROTO_ROOT / rel
        if not committed.is_file():
            stale.append(f"proto/{rel.as_posix()} (missing)")
        elif committed.read_bytes() != path.read_bytes():
            stale.append(f"proto/{rel.as_posix()} (differs)")

    expected = {p.relative_to(tmp_path) for p in fresh}
    for rel in gen.committed_outputs():
        if rel not in expected:
            stale.append(f"proto/{rel.as_posix()} (no .proto generates it)")

    assert not stale, (
        "generated protocol modules are stale; run `python proto/generate.py`:\n  "
        + "\n  ".join(stale)
    )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    gen = _load_generate()
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in gen.generate(tmp_path / "a")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in gen.generate(tmp_path / "b")}
    assert a == b


def test_management_modules_import_and_round_trip() -> None:
    from google.protobuf import struct_pb2, timestamp_pb2

    from overcast.api.v1 import management_pb2, management_pb2_grpc

    created = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
    extra = struct_pb2.Struct()
    extra.update({"zone": "eu-west-1a", "ebs_optimized": True, "volumes": [1, 2], "n": None})
    machine = management_pb2.Machine(
        id="m-1",
        external_id="i-0abc",
        name="web-1",
        cloud="c-1",
        state="running",
        hostname="web-1.example.com",
        public_ips=["203.0.113.7"],
        private_ips=["10.0.0.7", "10.0.0.8"],
        tags={"env": "prod", "team": "core"},
        created=created,
        size="t3.small",
        image="ami-1",
        location="eu-west-1",
        os_type="linux",
        owned_by="u-1",
        created_by="u-2",
        cores=2.0,
        extra=extra,
    )

    data = machine.SerializeToString(deterministic=True)
    back = management_pb2.Machine.FromString(data)

    assert back == machine
    assert dict(back.tags) == {"env": "prod", "team": "core"}
    assert back.extra["zone"] == "eu-west-1a"
    assert back.extra["ebs_optimized"] is True
    assert list(back.extra["volumes"]) == [1, 2]
    assert back.extra["n"] is None
    assert back.created == created
    assert not back.HasField("last_seen")
    assert list(back.private_ips) == ["10.0.0.7", "10.0.0.8"]
    assert back.cores == 2.0

    resp = management_pb2.ListMachinesResponse(
        machines=[machine], meta=management_pb2.ListMeta(total=1, returned=1, sort="name")
    )
    assert management_pb2.ListMachinesResponse.FromString(resp.SerializeToString()) == resp

    service = management_pb2.DESCRIPTOR.services_by_name["Management"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Whoami", "ListMachines", "GetMachine", "GetDatapoints", "WatchEvents"}
    assert methods["WatchEvents"].server_streaming
    assert not methods["GetMachine"].server_streaming
    assert methods["GetMachine"].output_type.name == "Machine"
    assert hasattr(management_pb2_grpc, "ManagementStub")
    assert hasattr(management_pb2_grpc, "ManagementServicer")
    assert hasattr(management_pb2_grpc, "add_ManagementServicer_to_server")
