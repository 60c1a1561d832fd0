"""The memory floor of one agent stream in grpcio, without Overcast: a bare ``grpc.aio`` server
with the agent service's ``Connect`` handler reduced to reading, and a client process that
opens ``n`` channels, each one ``Connect`` stream that sends a Hello and then idles, as agents
do between batches. Measured twice: with mutual TLS (EC P-256 certificates from one CA, the
controller's server options) and without TLS. The difference per stream is what grpcio's TLS
costs (BoringSSL's buffers, the secure endpoint's); the rest is HTTP/2 and the aio call.
A third run has the mutual-TLS streams send an agent-sized batch every 10 s (the server
reads each and acknowledges every sixth, as the controller does): what streams in use hold.

Used by bench/agents_scale_bench.py (``grpc_floor`` in its result) so the controller's figure
per agent can be read against what grpcio alone needs. Standalone:

    .venv/bin/python bench/grpc_floor.py [--streams 2000]

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "proto"))

SERVER_OPTIONS = [("grpc.tsi.max_frame_size", 4096), ("grpc.enable_channelz", 0),
                  ("grpc.so_reuseport", 0)]


def make_certs(d: Path) -> None:
    """A CA, a server certificate for localhost and a client one, EC P-256 (as the
    controller's PKI issues)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key: Any, issuer: x509.Name, signer: Any, ca: bool,
             san: str | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(signer, hashes.SHA256())

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor-ca")])
    ca = cert("floor-ca", ca_key, ca_name, ca_key, True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, san in (("server", "localhost"), ("client", None)):
        k = ec.generate_private_key(ec.SECP256R1())
        c = cert(name, k, ca_name, ca_key, False, san)
        (d / f"{name}.key").write_bytes(pem_key(k))
        (d / f"{name}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))


async def serve(d: Path, tls: bool) -> None:
    import grpc

    from overcast.agent.v1 import agent_pb2 as pb
    from overcast.agent.v1 import agent_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.AgentServiceServicer):
        async def Connect(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
            # as the controller reads (context.read) and acknowledges (every 6th batch)
            n = 0
            while (msg := await context.read()) is not grpc.aio.EOF:
                if msg.WhichOneof("body") == "metrics":
                    n += 1
                    if n % 6 == 0:
                        await context.write(pb.ControllerMessage(
                            batch_ack=pb.BatchAck(seq=msg.metrics.seq)))
                del msg

    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_AgentServiceServicer_to_server(Servicer(), server)
    if tls:
        creds = grpc.ssl_server_credentials(
            [((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())],
            root_certificates=(d / "ca.crt").read_bytes(), require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


def _batch(seq: int, pb: Any) -> Any:
    """A metric batch the size of an agent's (compact: 100 references and values)."""
    return pb.AgentMessage(metrics=pb.MetricBatch(
        seq=seq, time_ms=int(time.time() * 1000), refs=list(range(100)),
        values=[i * 1.5e6 + 0.1 for i in range(100)]))


async def clients(d: Path, tls: bool, port: int, n: int, every: float = 0.0) -> None:
    """``n`` streams; with ``every`` > 0 each sends a batch that often (from a random phase)
    and reads what comes back, as agents do."""
    import random

    import grpc

    from overcast.agent.v1 import agent_pb2 as pb
    from overcast.agent.v1 import agent_pb2_grpc as pb_grpc

    up = 0
    hold = asyncio.Event()
    gate = asyncio.Semaphore(64)
    creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(), (d / "client.key").read_bytes(),
                                         (d / "client.crt").read_bytes()) if tls else None
    calls: list[Any] = []
    readers: list[asyncio.Future[None]] = []  # referenced: the loop keeps weak ones only

    errors: list[str] = []

    async def one(i: int) -> None:
        nonlocal up
        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.ssl_target_name_override", "localhost")]
        mine: Any = None
        target = f"127.0.0.1:{port}"
        for _ in range(5):
            async with gate:
                ch = (grpc.aio.secure_channel(target, creds, options=opts) if creds is not None
                      else grpc.aio.insecure_channel(target, options=opts))
                try:
                    call = pb_grpc.AgentServiceStub(ch).Connect()
                    await call.write(pb.AgentMessage(hello=pb.Hello(agent_id=f"floor-{i}")))
                except grpc.aio.AioRpcError as exc:  # a refused connection in the ramp: again
                    errors.append(f"{exc.code().name}: {exc.details()}")
                    await ch.close()
                    continue
                calls.append((ch, call))
                mine = call
                up += 1
                if up == n:
                    print(json.dumps({"up": up, "retries": len(errors), "errors": errors[:3]}),
                          flush=True)
                break
        if every <= 0 or mine is None:
            await hold.wait()
            return
        call = mine

        async def drain() -> None:
            async for _ in call:
                pass

        readers.append(asyncio.ensure_future(drain()))
        await asyncio.sleep(random.uniform(0, every))
        seq = 0
        while True:  # until the process is killed
            seq += 1
            await call.write(_batch(seq, pb))
            await asyncio.sleep(every)

    await asyncio.gather(*(one(i) for i in range(n)))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(streams: int, tls: bool, settle: float = 10.0, every: float = 0.0) -> dict[str, Any]:
    """Server RSS before and after ``streams`` streams, per stream in KiB: idle, or (``every``
    > 0) each sending an agent-sized batch that often, measured after three rounds."""
    from common import raise_nofile, smaps_breakdown

    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="overcast-floor-") as tmp:
        d = Path(tmp)
        make_certs(d)
        py = sys.executable
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
        mode = "tls" if tls else "insecure"
        srv = subprocess.Popen([py, __file__, "serve", mode, str(d)], stdout=subprocess.PIPE,
                               text=True, env=env)
        cli = None
        try:
            assert srv.stdout is not None
            port = json.loads(srv.stdout.readline())["port"]
            time.sleep(1.0)
            before = _rss_mib(srv.pid)
            t0 = time.perf_counter()
            cli = subprocess.Popen([py, __file__, "connect", mode, str(d), str(port), str(streams),
                                    str(every)],
                                   stdout=subprocess.PIPE, text=True, env=env)
            assert cli.stdout is not None
            line = cli.stdout.readline()
            if not line:
                raise RuntimeError(f"the {mode} client ended before its streams were up")
            connect_s = time.perf_counter() - t0
            time.sleep(max(settle, 3 * every))
            after = _rss_mib(srv.pid)
            return {"streams": streams, "connect_s": round(connect_s, 2),
                    "batch_every_s": every or None,
                    "server_rss_before_mib": round(before, 1), "server_rss_mib": round(after, 1),
                    "kib_per_stream": round((after - before) * 1024 / streams, 1),
                    "smaps_mib": smaps_breakdown(srv.pid)}
        finally:
            for p in (cli, srv):
                if p is not None:
                    p.kill()
                    p.wait()


def floor(streams: int, every: float = 10.0) -> dict[str, Any]:
    tls = measure(streams, True)
    plain = measure(streams, False)
    out = {"mtls": tls, "insecure": plain,
           "tls_kib_per_stream": round(tls["kib_per_stream"] - plain["kib_per_stream"], 1)}
    if every > 0:  # the same mTLS streams carrying a batch every ``every`` s, as agents do
        out["mtls_sending"] = measure(streams, True, every=every)
    out["mtls_streams_mib_at_10000"] = round(tls["kib_per_stream"] * 10_000 / 1024, 1)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "connect"):
        d = Path(sys.argv[3])
        tls = sys.argv[2] == "tls"
        if sys.argv[1] == "serve":
            asyncio.run(serve(d, tls))
        else:
            asyncio.run(clients(d, tls, int(sys.argv[4]), int(sys.argv[5]),
                                float(sys.argv[6]) if len(sys.argv) > 6 else 0.0))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--every", type=float, default=10.0,
                    help="seconds between batches in the sending run (0: skip it)")
    args = ap.parse_args()
    print(json.dumps(floor(args.streams, args.every), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
