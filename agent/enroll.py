"""Enrolment: pin the controller's CA by fingerprint, make a key pair here, send a CSR with
the join token, keep the certificate. The private key never leaves the host."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent import AGENT_VERSION, PROTOCOL_VERSION
from agent.state import AgentState, make_key_and_csr

__all__ = ["PROTOCOL_VERSION", "Bootstrap", "EnrolError", "bootstrap", "enroll"]


class EnrolError(Exception):
    """Enrolment failed; the message says why, in words."""


@dataclass(frozen=True)
class Bootstrap:
    grpc: str
    ca_pem: bytes
    ca_fingerprint: str


def _fingerprint(pem: bytes) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return hashlib.sha256(der).hexdigest()


def _norm(fp: str) -> str:
    return fp.lower().removeprefix("sha256:").replace(":", "").strip()


def _get(url: str, ctx: ssl.SSLContext | None, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:  # noqa: S310
            return bytes(r.read())
    except urllib.error.HTTPError as exc:
        raise EnrolError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolError(f"cannot reach the controller at {url}: "
                         f"{getattr(exc, 'reason', exc)}") from None


def _trusting(ca_pem: bytes) -> ssl.SSLContext:
    """HTTPS to the controller: its own CA (pinned) or, when the operator gave it a certificate
    of their own (a public one, or their company's), the system's trust store."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


def bootstrap(controller_url: str, ca_fingerprint: str, timeout: float = 15.0) -> Bootstrap:
    """The CA (checked against the fingerprint before anything is trusted) and the gRPC
    endpoint agents dial."""
    url = controller_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnrolError(f"--controller must be http(s)://host[:port], not {controller_url!r}")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only for ca.pem, which is checked by fingerprint next
    ca_pem = _get(url + "/ca.pem", insecure if parts.scheme == "https" else None, timeout)
    try:
        got = _fingerprint(ca_pem)
    except ValueError:
        raise EnrolError(f"{url}/ca.pem is not a certificate: is this an Overcast controller?") from None
    if ca_fingerprint:
        if got != _norm(ca_fingerprint):
            raise EnrolError(f"the controller's CA fingerprint is sha256:{got}, not the one given "
                             "(--ca-fingerprint): refusing to trust it")
    verified = _trusting(ca_pem) if parts.scheme == "https" else None
    try:
        info = json.loads(_get(url + "/api/v2/agents/bootstrap", verified, timeout))
    except ValueError:
        raise EnrolError(f"{url} did not answer like an Overcast controller") from None
    return Bootstrap(str(info["grpc"]), ca_pem, got)


def enroll(state: AgentState, controller_url: str, join_token: str, ca_fingerprint: str,
           hostname: str | None = None, timeout: float = 30.0) -> str:
    """Enrol and store the identity in ``state``; returns the agent id."""
    boot = bootstrap(controller_url, ca_fingerprint)
    host = hostname or socket.gethostname()
    key_pem, csr_pem = make_key_and_csr(host)
    url = controller_url.rstrip("/") + "/api/v2/agents/enroll"
    body = json.dumps({"join_token": join_token, "csr_pem": csr_pem.decode(), "hostname": host,
                       "protocol_version": PROTOCOL_VERSION, "agent_version": AGENT_VERSION}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    ctx = _trusting(boot.ca_pem) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:  # noqa: S310
            resp = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise EnrolError(f"enrolment refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolError(f"cannot reach the controller at {url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise EnrolError(f"{url} did not answer like an Overcast controller") from None
    state.install_credentials(key_pem, resp["certificate_pem"].encode(),
                              resp.get("ca_pem", "").encode() or boot.ca_pem)
    state.agent_id = resp["agent_id"]
    state.org = resp.get("org", "")
    state.controller_url = controller_url.rstrip("/")
    state.grpc_endpoint = resp.get("grpc") or boot.grpc
    state.ca_fingerprint = boot.ca_fingerprint
    state.save()
    return str(resp["agent_id"])
