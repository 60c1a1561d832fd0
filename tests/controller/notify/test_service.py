"""The notification queue over a real store, a real SMTP server (aiosmtpd) and a real HTTP
server: e-mail and webhooks delivered; an SMTP server or a webhook that is down is retried
with backoff, the failure visible and audited, and nothing is lost (a queue that outlives a
restart, a failed one retried by hand); secrets never stored or shown in clear."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.errors import Invalid, NotFound
from controller.events.writer import Writer
from controller.listing import parse_query
from controller.notify.model import (
    NOTIFICATION,
    DeliveryError,
    notification_key,
    redact_url,
    url_fingerprint,
)
from controller.notify.service import NotifyService
from controller.notify.smtp import PASSWORD_AAD, SMTP_WORKERS, SmtpMailer, config_from
from controller.notify.targets import refusal
from controller.notify.webhook import HttpPoster
from controller.pki import ensure_pki
from controller.secrets import SecretBox
from controller.services import build_services
from controller.settings import Secret, Settings
from controller.store import open_store
from controller.store.base import Store
from controller.store.docs import migrate_store
from tests.support.notify import SmtpSink, SmtpTarpit, WebhookSink, free_port

ORG = "o1"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "b@example.com"}, {"id": "o2", "name": "B"}, "owner", "token", "t2")
BOX = SecretBox(b"k" * 32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


def make(store: Store, tmp_path: Path, smtp_port: int, **over: Any) -> NotifyService:
    values: dict[str, Any] = {"data_dir": str(tmp_path), "smtp_host": "127.0.0.1",
                              "smtp_port": smtp_port, "smtp_security": "none",
                              "notify_retry_base": 1, "notify_retry_max": 1,
                              "allow_local_clouds": True, "smtp_timeout": 5}
    values.update(over)
    settings = Settings(**values)
    return NotifyService(settings, store, Writer(store), BOX, SmtpMailer(config_from(settings, BOX)),
                         HttpPoster(5.0, settings.allow_local_clouds, settings.allow_private_webhooks))


@contextlib.asynccontextmanager
async def running(svc: NotifyService) -> AsyncIterator[NotifyService]:
    task = asyncio.create_task(svc.run())
    try:
        yield svc
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(fn: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out; last: {fn()!r}")


def audit(store: Store) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in store.scan("audit/")]


async def test_email_is_delivered_and_audited(store: Store, tmp_path: Path) -> None:
    sink = SmtpSink().start()
    try:
        svc = make(store, tmp_path, sink.port, smtp_from="alerts@example.com")
        async with running(svc):
            n = await svc.email(ORG, ["ops@example.com", "not an address"], "CPU high\r\nBcc: x@y.z",
                                "load is 9", html="<b>load</b> is 9", context={"incident": "i1"})
            assert n["status"] == "pending" and n["to"] == ["ops@example.com"]
            assert n["results"][0]["ignored"] == ["not an address"]
            await until(lambda: svc.get(P, n["id"])["status"] == "sent")
        msgs = await asyncio.to_thread(sink.wait, 1)
    finally:
        sink.stop()
    msg = msgs[0]
    assert msg["Subject"] == "CPU high Bcc: x@y.z" and msg["Bcc"] is None  # no header injection
    assert msg["From"] == "alerts@example.com" and msg["To"] == "ops@example.com"
    assert "load is 9" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "<b>load</b>" in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    got = svc.get(P, n["id"])
    assert got["attempts"] == 1 and got["sent"] and got["context"] == {"incident": "i1"}
    with pytest.raises(NotFound):
        svc.get(OTHER, n["id"])  # another organisation's
    actions = [(e["action"], e["outcome"]) for e in audit(store)]
    assert actions == [("notification.queue", "success"), ("notification.send", "success")]
    data, meta = svc.list(P, parse_query({"search": "context.incident:i1"}))
    assert [d["id"] for d in data] == [n["id"]] and svc.list(OTHER, parse_query({}))[0] == []


async def test_smtp_down_is_retried_visibly_and_nothing_is_lost(store: Store, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    svc = make(store, tmp_path, port)
    async with running(svc):
        n = await svc.email(ORG, ["ops@example.com"], "disk full", "95%")
        failed = await until(lambda: (d := svc.get(P, n["id"]))["attempts"] >= 2 and d)
        assert failed["status"] == "pending" and "cannot send through 127.0.0.1" in failed["last_error"]
        assert "refused" in failed["last_error"].lower()
        assert all(not r["ok"] for r in failed["results"])
        sink = SmtpSink(port=port).start()  # the server comes back
        try:
            await until(lambda: svc.get(P, n["id"])["status"] == "sent", timeout=30)
            await asyncio.to_thread(sink.wait, 1)
        finally:
            sink.stop()
    entries = [e for e in audit(store) if e["action"] == "notification.attempt"]
    assert entries and entries[0]["outcome"] == "failed" and "refused" in entries[0]["details"]["error"].lower()
    assert store.get(f"notifypending/{ORG}/{n['id']}") is None


async def test_given_up_then_retried_by_hand_and_survives_a_restart(store: Store, tmp_path: Path) -> None:
    port = free_port()
    svc = make(store, tmp_path, port, notify_max_attempts=2)
    async with running(svc):
        n = await svc.email(ORG, ["ops@example.com"], "s", "t")
        await until(lambda: svc.get(P, n["id"])["status"] == "failed")
    assert svc.get(P, n["id"])["attempts"] == 2
    assert [e["action"] for e in audit(store)][-1] == "notification.fail"
    assert svc.retry(P, P.actor(), n["id"])["status"] == "pending"
    with pytest.raises(Invalid, match="only a failed notification"):
        svc.retry(P, P.actor(), n["id"])
    with pytest.raises(NotFound):
        svc.retry(OTHER, OTHER.actor(), n["id"])
    assert [e["action"] for e in audit(store)][-1] == "notification.retry"
    # the controller stops before sending it: a new one (same store) finds it and sends it
    sink = SmtpSink(port=port).start()
    try:
        again = make(store, tmp_path, port)
        assert again.load_pending() == 1
        async with running(again):
            await until(lambda: again.get(P, n["id"])["status"] == "sent")
        await asyncio.to_thread(sink.wait, 1)
    finally:
        sink.stop()


async def test_starttls_login_with_a_sealed_password(store: Store, tmp_path: Path) -> None:
    pki = ensure_pki(str(tmp_path / "ca"), ["127.0.0.1"])
    sink = SmtpSink(tls=pki.server_ssl_context(), login=("mailer", "s3cret pass")).start()
    try:
        sealed = BOX.seal("s3cret pass", aad=PASSWORD_AAD)
        svc = make(store, tmp_path, sink.port, smtp_security="starttls", smtp_user="mailer",
                   smtp_password=Secret(sealed), smtp_ca_file=str(pki.ca_cert))
        async with running(svc):
            n = await svc.email(ORG, ["ops@example.com"], "over TLS", "hello")
            await until(lambda: svc.get(P, n["id"])["status"] == "sent")
        await asyncio.to_thread(sink.wait, 1)
        wrong = make(store, tmp_path, sink.port, smtp_security="starttls", smtp_user="mailer",
                     smtp_password=Secret("wrong"), smtp_ca_file=str(pki.ca_cert),
                     notify_max_attempts=1)
        async with running(wrong):
            n = await wrong.email(ORG, ["ops@example.com"], "over TLS", "hello")
            got = await until(lambda: (d := wrong.get(P, n["id"]))["status"] == "failed" and d)
        assert "refused the login of 'mailer'" in got["last_error"] and "wrong" not in got["last_error"]
    finally:
        sink.stop()
    assert b"s3cret" not in b"".join(v for _, v in store.scan(""))


async def test_implicit_tls(store: Store, tmp_path: Path) -> None:
    pki = ensure_pki(str(tmp_path / "ca"), ["127.0.0.1"])
    sink = SmtpSink(tls=pki.server_ssl_context(), implicit=True).start()
    try:
        svc = make(store, tmp_path, sink.port, smtp_security="ssl", smtp_ca_file=str(pki.ca_cert))
        async with running(svc):
            n = await svc.email(ORG, ["ops@example.com"], "over TLS from the start", "hello")
            await until(lambda: svc.get(P, n["id"])["status"] == "sent")
        assert str((await asyncio.to_thread(sink.wait, 1))[0]["Subject"]) == "over TLS from the start"
    finally:
        sink.stop()


async def test_webhook_delivered_with_secret_headers_sealed(store: Store, tmp_path: Path) -> None:
    hook = WebhookSink().start()
    try:
        svc = make(store, tmp_path, free_port())
        async with running(svc):
            n = await svc.webhook(ORG, hook.url + "?token=abc123", "PUT",
                                  {"Authorization": "Bearer hunter2", "X-Team": "ops", "X-Sig": "zz"},
                                  {"incident": {"id": "i1"}}, secret_headers=["X-Sig"])
            assert n["url"] == redact_url(hook.url + "?token=abc123") and n["method"] == "PUT"
            assert n["url"] == f"http://127.0.0.1:{hook.port}/\u2026 ({url_fingerprint(hook.url + '?token=abc123')})"
            assert n["headers"] == {"Authorization": "***", "X-Team": "ops", "X-Sig": "***"}
            await until(lambda: svc.get(P, n["id"])["status"] == "sent")
        hit = (await asyncio.to_thread(hook.wait, 1))[0]
    finally:
        hook.stop()
    assert hit.method == "PUT" and hit.path == "/hook?token=abc123"
    assert hit.headers["Authorization"] == "Bearer hunter2" and hit.headers["X-Sig"] == "zz"
    assert hit.json() == {"incident": {"id": "i1"}} and hit.headers["Content-Type"] == "application/json"
    everything = b"".join(v for _, v in store.scan(""))
    assert b"hunter2" not in everything and b"abc123" not in everything and b"zz\"" not in everything


async def test_webhook_refusing_connections_is_retried_4xx_is_not(store: Store, tmp_path: Path) -> None:
    svc = make(store, tmp_path, free_port(), notify_max_attempts=3)
    hook = WebhookSink(status=404).start()
    try:
        async with running(svc):
            down = await svc.webhook(ORG, f"http://127.0.0.1:{free_port()}/x", body={"a": 1})
            gone = await svc.webhook(ORG, hook.url, body={"a": 1})
            d = await until(lambda: (x := svc.get(P, down["id"]))["status"] == "failed" and x)
            g = await until(lambda: (x := svc.get(P, gone["id"]))["status"] == "failed" and x)
    finally:
        hook.stop()
    assert d["attempts"] == 3 and "cannot connect to 127.0.0.1" in d["last_error"]
    assert g["attempts"] == 1 and g["last_error"].startswith("HTTP 404")


async def test_local_targets_refused_and_bad_input_never_raises(store: Store, tmp_path: Path) -> None:
    svc = make(store, tmp_path, free_port(), allow_local_clouds=False)
    async with running(svc):
        local = await svc.webhook(ORG, "http://127.0.0.1:9/x", body={})
        meta = await svc.webhook(ORG, "http://169.254.169.254/latest", body={})
        bad = await svc.webhook(ORG, "ftp://example.com/x", method="BREW")
        nobody = await svc.email(ORG, ["nope"], "s", "t")
        lo = await until(lambda: (x := svc.get(P, local["id"]))["status"] == "failed" and x)
        md = await until(lambda: (x := svc.get(P, meta["id"]))["status"] == "failed" and x)
    assert "own host" in lo["last_error"] and lo["attempts"] == 1
    assert "metadata" in md["last_error"] and "allow_local_clouds" in md["last_error"]
    assert bad["status"] == "failed" and "method" in bad["last_error"]
    assert nobody["status"] == "failed" and nobody["last_error"] == "no valid recipient address"
    assert svc.get(P, nobody["id"])["status"] == "failed"


async def test_no_smtp_server_configured_is_said(store: Store, tmp_path: Path) -> None:
    svc = make(store, tmp_path, 25, smtp_host="", notify_max_attempts=1)
    async with running(svc):
        n = await svc.email(ORG, ["ops@example.com"], "s", "t")
        got = await until(lambda: (x := svc.get(P, n["id"]))["status"] == "failed" and x)
    assert "no SMTP server is set" in got["last_error"]


async def test_retention_prunes_finished_notifications_audited(store: Store, tmp_path: Path) -> None:
    svc = make(store, tmp_path, free_port(), notify_max_attempts=1)
    failed = await svc.email(ORG, ["nope"], "s", "t")
    pending = await svc.email(ORG, ["ops@example.com"], "s", "t")
    assert svc.prune(time.time() + 1) == 1
    with pytest.raises(NotFound):
        svc.get(P, failed["id"])
    assert svc.get(P, pending["id"])["status"] == "pending"
    assert [e["details"]["count"] for e in audit(store) if e["action"] == "notification.prune"] == [1]


# ---- webhook URLs: shown as scheme://host/… and a fingerprint, the rest sealed ----------
SLACK = "https://hooks.slack.com/services/T000/B000/XOXSECRET"


async def test_webhook_urls_are_shown_without_path_query_or_login(store: Store, tmp_path: Path) -> None:
    svc = make(store, tmp_path, free_port())
    n = await svc.webhook(ORG, SLACK, body={"a": 1})
    other = await svc.webhook(ORG, "https://bot:pw9q@hooks.slack.com:8443/services/T1/B1/OTHERTOKEN?sig=s1g",
                              body={})
    fp = hashlib.sha256(SLACK.encode()).hexdigest()[:8]
    assert n["url"] == f"https://hooks.slack.com/\u2026 ({fp})"
    assert other["url"].startswith("https://hooks.slack.com:8443/\u2026 (") and other["url"] != n["url"]
    shown = json.dumps([svc.get(P, n["id"]), svc.get(P, other["id"]), svc.list(P, parse_query({}))[0],
                        audit(store)])
    for secret in ("XOXSECRET", "T000", "services", "OTHERTOKEN", "pw9q", "s1g"):
        assert secret not in shown, secret
    everything = b"".join(v for _, v in store.scan(""))
    assert b"XOXSECRET" not in everything and b"OTHERTOKEN" not in everything
    # a notification stored before (schema 1: the path was shown) is shown the new way, and
    # rewritten so on start
    legacy = {"id": "old1", "org": ORG, "kind": "webhook", "status": "sent", "created": "2024-01-01T00:00:00Z",
              "url": "https://hooks.slack.com/services/T9/B9/LEGACYTOKEN", "results": []}
    store.put(notification_key(ORG, "old1"), json.dumps(legacy).encode())
    assert svc.get(P, "old1")["url"].startswith("https://hooks.slack.com/\u2026 (")
    assert "LEGACYTOKEN" not in json.dumps(svc.list(P, parse_query({}))[0])
    assert migrate_store(store, [NOTIFICATION]) == {"notification": 1}
    assert b"LEGACYTOKEN" not in (store.get(notification_key(ORG, "old1")) or b"")


async def test_a_failed_answer_is_reported_by_its_status_only(store: Store, tmp_path: Path) -> None:
    hook = WebhookSink(status=500, body="internal: db password hunter2 at 10.0.0.7").start()
    try:
        svc = make(store, tmp_path, free_port(), notify_max_attempts=1)
        async with running(svc):
            n = await svc.webhook(ORG, hook.url, body={})
            got = await until(lambda: (x := svc.get(P, n["id"]))["status"] == "failed" and x)
    finally:
        hook.stop()
    assert got["last_error"] == "HTTP 500 Internal Server Error"
    assert "hunter2" not in json.dumps([got, audit(store)])


# ---- where webhooks may go ---------------------------------------------------------------
PUBLIC = ("8.8.8.8", "2001:4860:4860::8888", "192.0.0.192")
PRIVATE = ("10.1.2.3", "172.16.5.4", "192.168.0.10", "100.64.1.1", "fc00::5", "fd12:3456::1",
           "198.18.0.1", "::ffff:10.0.0.1", "2002:a00:1::", "64:ff9b::a00:1", "224.0.0.1",
           "240.0.0.1", "192.0.2.1")
LOCAL = ("127.0.0.1", "127.5.5.5", "::1", "0.0.0.0", "::", "169.254.169.254", "169.254.1.1",
         "fe80::1", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "169.254.170.2",
         "::ffff:127.0.0.1", "2002:7f00:1::", "64:ff9b::a9fe:a9fe")


@pytest.mark.parametrize("addr", PUBLIC + PRIVATE + LOCAL)
def test_webhook_address_policy(addr: str) -> None:
    a = ipaddress.ip_address(addr)
    default, private_ok = refusal(a, False, False), refusal(a, True, False)
    assert refusal(a, False, True) is None and refusal(a, True, True) is None  # allow_local_clouds
    if addr in PUBLIC:
        assert default is None and private_ok is None
    elif addr in PRIVATE:
        assert default is not None and "allow_private_webhooks" in default and private_ok is None
    else:
        assert default is not None and private_ok is not None and "allow_local_clouds" in private_ok


async def test_dns_rebinding_is_caught_when_connecting(store: Store, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The name resolves to a public address when checked, to this host a moment later: the
    connection checks what it connects to, so nothing reaches the receiver on loopback."""
    hook = WebhookSink().start()
    real = socket.getaddrinfo
    asked: list[str] = []

    def lookup(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host not in ("rebind.test", "here.test"):
            return real(host, port, *args, **kw)
        asked.append(host)
        public = host == "rebind.test" and asked.count(host) == 1  # only the early check sees it
        addr = "93.184.215.14" if public else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    try:
        svc = make(store, tmp_path, free_port(), allow_local_clouds=False, notify_max_attempts=1)
        async with running(svc):
            n = await svc.webhook(ORG, f"http://rebind.test:{hook.port}/hook", body={})
            got = await until(lambda: (x := svc.get(P, n["id"]))["status"] == "failed" and x)
        assert asked.count("rebind.test") == 2 and hook.hits == []
        assert "own host" in got["last_error"] and "allow_local_clouds" in got["last_error"]
        assert got["attempts"] == 1  # refused for good
        # the same lookup, allowed: it is the policy that refused, not the lookup
        ok = make(store, tmp_path, free_port(), allow_local_clouds=True)
        async with running(ok):
            n = await ok.webhook(ORG, f"http://here.test:{hook.port}/hook", body={})
            await until(lambda: ok.get(P, n["id"])["status"] == "sent")
        assert len(hook.hits) == 1
    finally:
        hook.stop()


# ---- a silent SMTP server holds only the mailer's own threads -----------------------------
async def test_a_silent_smtp_server_stalls_nothing_else(store: Store, tmp_path: Path) -> None:
    """8 e-mails to a server that accepts and never answers: at most SMTP_WORKERS are in
    flight, in the mailer's own threads; the default executor (the rule evaluator's rounds,
    datapoints queries, listings) stays free, so a rule evaluation runs at once."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(6))  # as on this project's 2-core machines
    tarpit = SmtpTarpit().start()
    try:
        svc = build_services(Settings(data_dir=str(tmp_path / "ctl"), smtp_host="127.0.0.1",
                                      smtp_port=tarpit.port, smtp_security="none", smtp_timeout=6,
                                      allow_local_clouds=True), store)
        async with running(svc.notify):
            sent = [await svc.notify.email(ORG, ["ops@example.com"], f"m{i}", "t") for i in range(8)]
            await until(lambda: tarpit.open >= SMTP_WORKERS, timeout=5)
            # before the fix, the sends held every default thread for smtp_timeout (6 s) here
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.to_thread(svc.evaluator.cycle), 3)
            assert time.monotonic() - t0 < 3
            await asyncio.sleep(0.5)
            assert tarpit.most <= SMTP_WORKERS and tarpit.accepted <= SMTP_WORKERS
            # those sent fail at their step's timeout and wait for their next attempt
            await until(lambda: sum(svc.notify.get(P, n["id"])["attempts"] >= 1 for n in sent)
                        >= SMTP_WORKERS, timeout=15)
            tried = [d for n in sent if (d := svc.notify.get(P, n["id"]))["attempts"]]
        assert all(d["status"] == "pending" and "timed out" in d["last_error"] for d in tried)
    finally:
        tarpit.stop()


async def test_a_whole_email_has_a_deadline(tmp_path: Path) -> None:
    """A server that answers one byte at a time never lets a step time out: the deadline
    (three times smtp_timeout) cuts the connection and frees the thread."""
    tarpit = SmtpTarpit(trickle=0.2).start()
    try:
        settings = Settings(data_dir=str(tmp_path), smtp_host="127.0.0.1", smtp_port=tarpit.port,
                            smtp_security="none", smtp_timeout=1)
        mailer = SmtpMailer(config_from(settings, BOX))
        t0 = time.monotonic()
        with pytest.raises(DeliveryError, match="did not take the message within 3 s"):
            await asyncio.wait_for(mailer.send(["ops@example.com"], "s", "t", None), 10)
        assert 2.5 < time.monotonic() - t0 < 8
        await until(lambda: mailer.in_flight == 0, timeout=3)  # the thread ended: its slot is free
    finally:
        tarpit.stop()
