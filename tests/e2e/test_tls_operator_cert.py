"""A certificate of the operator's own (``tls_cert``/``tls_key``: a public one, or their
company CA's): the controller still starts (its self-check of the external URL trusts the
system's store), HTTPS presents the operator's certificate, and agents — which pin the
controller's own CA — still enrol and connect: their gRPC listener presents a certificate
of the own CA."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.pki import ensure_pki
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller


class OperatorCertController(Controller):
    """Clients of this test trust the operator's CA (as a browser trusts a public one)."""

    operator_ca = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.operator_ca)


class TrustingAgent(AgentProc):
    """An agent on a host whose trust store has the operator's CA in it."""

    def env(self) -> dict[str, str]:
        env = super().env()
        assert isinstance(self.controller, OperatorCertController)
        env["SSL_CERT_FILE"] = self.controller.operator_ca
        return env


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorCertController]:
    tmp = tmp_path_factory.mktemp("opcert")
    op = ensure_pki(str(tmp / "operator"), ["127.0.0.1"])  # "the company CA" and its certificate
    c = OperatorCertController(tmp, {"OVERCAST_TLS": "on", "OVERCAST_TLS_CERT": str(op.server_cert),
                                     "OVERCAST_TLS_KEY": str(op.server_key),
                                     # the controller host's trust store knows the operator's CA
                                     "SSL_CERT_FILE": str(op.ca_cert)})
    c.operator_ca = str(op.ca_cert)
    c.extra_env["OVERCAST_EXTERNAL_URL"] = c._url = f"https://127.0.0.1:{c.http_port}"
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    c.start()  # before the fix: "external_url check: ... CERTIFICATE_VERIFY_FAILED"
    yield c
    c.stop()


def _peer_issuer(port: int, cafile: str) -> str:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
        cert = t.getpeercert()
    return str(dict(x[0] for x in cert["issuer"]).get("commonName", ""))


def test_https_presents_the_operators_certificate(ctl: OperatorCertController) -> None:
    own_ca = str(ctl.data_dir / "pki" / "ca.crt")
    assert _peer_issuer(ctl.http_port, ctl.operator_ca)  # verifies against the operator's CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _peer_issuer(ctl.http_port, own_ca)
    # and the agents' listener presents the own CA's certificate (agents pin that one)
    assert _peer_issuer(ctl.agents_port, own_ca)


def test_agent_enrols_and_connects_with_an_operator_certificate(
        ctl: OperatorCertController, tmp_path: Path) -> None:
    admin = ctl.session()
    tok = join_token(admin)
    agent = TrustingAgent(ctl, tmp_path / "state", hostname="opcert-host")
    r = agent.enrol(tok["token"])
    assert r.returncode == 0, r.stderr
    agent.start()
    try:
        def connected() -> bool:
            rows = admin.get("/api/v2/agents").body["data"]
            return any(a["id"] == agent.agent_id and a.get("connected") for a in rows)
        wait_for(connected, 30, "the agent connected over mTLS")
    finally:
        agent.stop()
