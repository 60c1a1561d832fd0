"""``overcast doctor``: checks of a controller's settings, certificates, disk, clocks and
store, each ok / warn / fail (or skip: cannot be checked this way) with what to do about it.

With a controller running, the checks run inside it (the admin socket calls
:func:`run_online`): its own settings, its store, its agents' clocks, and the self-fetch of
``<external_url>/api/v2/health`` it does at start. Without one, :func:`run_offline` opens
the store read-only and checks what can be checked from the files."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from controller.errors import OvercastError
from controller.ops.owner import give_back
from controller.settings import Settings

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
# thresholds (documented in the README's doctor section)
CA_WARN_DAYS = 90
CERT_WARN_DAYS = 30
DISK_FAIL_BYTES, DISK_FAIL_PCT = 256 * 2**20, 2.0
DISK_WARN_BYTES, DISK_WARN_PCT = 2 * 2**30, 10.0
CLOCK_WARN_S, CLOCK_FAIL_S = 5.0, 120.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def report(mode: str, checks: list[Check]) -> dict[str, Any]:
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    return {"mode": mode, "ok": fails == 0, "failures": fails, "warnings": warns,
            "checks": [c.to_dict() for c in checks]}


# ---- settings and the data directory ----------------------------------------------------

def check_settings(settings: Settings, where: str) -> Check:
    try:
        settings.validate()
    except OvercastError as exc:
        field = exc.details.get("field", "")
        return Check("settings", FAIL, exc.message,
                     f"correct the setting {field} ({where})" if field else f"correct {where}")
    return Check("settings", OK, f"valid ({where})")


def check_data_dir(settings: Settings) -> Check:
    d = Path(settings.data_dir)
    if not d.is_dir():
        return Check("data_dir", FAIL, f"{d} does not exist",
                     "run `overcast controller --init`, or set data_dir to where the data is")
    mode = stat.S_IMODE(d.stat().st_mode)
    if not os.access(d, os.R_OK | os.W_OK | os.X_OK):
        return Check("data_dir", FAIL, f"{d} is not readable and writable by this user",
                     "run doctor as the user that runs the controller (or root)")
    if mode & 0o077:
        return Check("data_dir", WARN, f"{d} is accessible by group or others (mode {mode:o})",
                     f"chmod 700 {d} (the controller makes it 0700 at start)")
    return Check("data_dir", OK, f"{d} (mode 700)")


def check_disk(data_dir: str, usage: Callable[[str], Any] = shutil.disk_usage) -> Check:
    u = usage(data_dir)
    free, pct = int(u.free), 100.0 * u.free / u.total if u.total else 0.0
    store = sum(p.stat().st_size for p in Path(data_dir, "store").glob("*") if p.is_file())
    text = f"{size_text(free)} free ({pct:.0f} %) on the data directory's filesystem; store {size_text(store)}"
    fix = (f"free space on the filesystem of {data_dir}, move the data directory to a larger "
           "one, or keep metrics for less long (metric_retention)")
    if free < DISK_FAIL_BYTES or pct < DISK_FAIL_PCT:
        return Check("disk", FAIL, text + ": too little to write and compact the store", fix)
    if free < DISK_WARN_BYTES or pct < DISK_WARN_PCT:
        return Check("disk", WARN, text, fix)
    return Check("disk", OK, text)


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---- certificates -----------------------------------------------------------------------

def _days_left(cert: x509.Certificate, now: dt.datetime) -> float:
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
            | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)})


def _names_host(names: set[str], host: str) -> bool:
    host = host.lower().strip("[]")
    if host in names:
        return True
    first, _, rest = host.partition(".")
    return bool(rest) and f"*.{rest}" in names


def check_ca(data_dir: str, now: dt.datetime | None = None) -> Check:
    now = now or dt.datetime.now(dt.UTC)
    path = Path(data_dir) / "pki" / "ca.crt"
    if not path.is_file():
        return Check("ca", WARN, f"no CA in {path.parent} yet",
                     "it is made at the first start, or by `overcast controller --init`")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return Check("ca", FAIL, f"{path} is not a PEM certificate",
                     "restore pki/ from a backup (agents trust this CA: a new one means "
                     "enrolling them again)")
    days = _days_left(cert, now)
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    fix = ("a new CA means enrolling every agent again: plan it (remove pki/ca.* to have one "
           "made at the next start, then enrol the agents with new join commands)")
    if days <= 0:
        return Check("ca", FAIL, f"the CA expired on {until}: agents can neither connect nor renew",
                     fix)
    if days < CA_WARN_DAYS:
        return Check("ca", WARN, f"the CA expires on {until} ({days:.0f} days)", fix)
    return Check("ca", OK, f"valid until {until} ({days:.0f} days)")


def check_server_cert(settings: Settings, now: dt.datetime | None = None) -> Check:
    """The certificate HTTPS serves: the tls_cert setting, else the one made from the CA."""
    now = now or dt.datetime.now(dt.UTC)
    own = bool(settings.tls_cert)
    cert_path = Path(settings.tls_cert) if own else Path(settings.data_dir) / "pki" / "server.crt"
    key_path = Path(settings.tls_key) if own else Path(settings.data_dir) / "pki" / "server.key"
    what = f"tls_cert {cert_path}" if own else f"the server certificate {cert_path}"
    renew = ("renew it and restart the controller (the controller does not renew a certificate "
             "it was given)" if own else "restart the controller: it issues a new one at start "
             "when fewer than 30 days are left or a name is missing")
    if not cert_path.is_file():
        if own:
            return Check("tls_cert", FAIL, f"{what} does not exist", "set tls_cert to the file")
        return Check("tls_cert", WARN, f"no server certificate in {cert_path.parent} yet",
                     "it is made at the first start")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert_path),
                                                                            str(key_path))
    except (ValueError, OSError, ssl.SSLError) as exc:
        return Check("tls_cert", FAIL, f"{what} and its key {key_path} do not load together "
                     f"({getattr(exc, 'strerror', None) or exc})",
                     "give a PEM certificate and its matching key" if own else
                     "remove server.crt and server.key: new ones are made at the next start")
    days = _days_left(cert, now)
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    if days <= 0:
        return Check("tls_cert", FAIL, f"{what} expired on {until}", renew)
    host = urlsplit(settings.public_url).hostname or ""
    if settings.tls_enabled and not settings.behind_proxy and host and not _names_host(
            _names(cert), host):
        return Check("tls_cert", FAIL, f"{what} does not name {host} (the external URL's host): "
                     "browsers, the CLI and agents refuse it",
                     renew if not own else f"use a certificate for {host}")
    if days < CERT_WARN_DAYS:
        return Check("tls_cert", WARN, f"{what} expires on {until} ({days:.0f} days)", renew)
    return Check("tls_cert", OK, f"{what} valid until {until} ({days:.0f} days)")


# ---- secrets, store, clocks, external URL -----------------------------------------------

def check_secret_key(settings: Settings, store: Any) -> Check:
    """The key is there, private, and opens a stored credential (when there is one)."""
    from controller.clouds.model import cloud_key
    from controller.secrets import SecretBox

    path = Path(settings.data_dir) / "secret.key"
    if settings.secret_key:
        raw, where = str(settings.secret_key), "the secret_key setting"
    elif path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return Check("secret_key", WARN, f"{path} is readable by group or others "
                         f"(mode {mode:o})", f"chmod 600 {path}")
        raw, where = path.read_text().strip(), str(path)
    else:
        return Check("secret_key", WARN if store is None else FAIL, f"no {path} and no secret_key "
                     "setting", "restore secret.key from a backup (stored credentials cannot "
                     "be opened without it); it is made at the first start of a new controller")
    try:
        box = SecretBox(base64.b64decode(raw, validate=True))
    except (ValueError, OvercastError):
        return Check("secret_key", FAIL, f"{where} is not base64 of 32 bytes",
                     "restore the key from a backup")
    if store is not None:
        for _, value in store.scan("cloud/"):
            doc = json.loads(value)
            if doc.get("_secrets"):
                try:
                    box.open(doc["_secrets"], aad=cloud_key(doc["org"], doc["id"]))
                except OvercastError:
                    return Check("secret_key", FAIL, f"{where} does not open the stored cloud "
                                 "credentials: it is not the key they were sealed with",
                                 "put back the controller's own key (secret.key from its backup, "
                                 "or its secret_key setting)")
                return Check("secret_key", OK, f"{where} opens the stored credentials")
    return Check("secret_key", OK, f"{where} (no stored credentials to try it on)")


def check_schema(store: Any, online: bool) -> Check:
    from controller.ops.backup import code_versions
    from controller.store.docs import stored_versions

    known, stored = code_versions(), stored_versions(store)
    newer = [f"{k} {v} > {known[k]}" for k, v in sorted(stored.items()) if k in known and v > known[k]]
    if newer:
        return Check("schema", FAIL, f"the store was written by a newer Overcast ({', '.join(newer)})",
                     "run that version, or restore a backup made by this one")
    older = sorted(k for k, v in known.items() if stored.get(k, 0) < v and store.count(f"{k}/"))
    if older:
        return Check("schema", WARN if not online else OK,
                     f"documents of {', '.join(older)} are of an older schema: migrated at the "
                     "next start", "" if online else "start the controller (this version)")
    return Check("schema", OK, f"every document kind at this version's schema ({len(known)} kinds)")


def check_audit(store: Any) -> Check:
    from controller.audit.chain import verify

    moved = ("entries were added", "removed from the end")
    result = verify(store)
    for _ in range(3):  # a live store: an entry appended while the chain was read moves the head
        if result.ok or not any(m in result.reason for m in moved):
            break
        result = verify(store)
    if not result.ok:
        return Check("audit", FAIL, f"the audit chain breaks at entry {result.broken_at}: "
                     f"{result.reason}", "restore a backup from before the damage; keep this store "
                     "for investigation")
    head = json.loads(store.get("meta/audit/head") or b'{"seq": 0, "hash": ""}')
    return Check("audit", OK, f"{result.entries} entr{'y' if result.entries == 1 else 'ies'} "
                 f"intact, head {head['seq']} "
                 f"({str(head['hash'])[:12]})")


def check_clock(offsets: dict[str, float | None] | None, names: dict[str, str]) -> Check:
    if offsets is None:
        return Check("clock", SKIP, "measured from connected agents while the controller runs")
    measured = {a: o for a, o in offsets.items() if o is not None}
    if not offsets:
        return Check("clock", OK, "no agents connected: nothing to compare")
    if not measured:
        return Check("clock", OK, f"{len(offsets)} connected, none measured yet (an agent is "
                     "measured from its metrics)")
    worst = sorted(measured.items(), key=lambda kv: -abs(kv[1]))
    a, off = worst[0]
    text = (f"{len(measured)} agent{'s' if len(measured) > 1 else ''} measured; the largest "
            f"offset is {off:+.1f} s "
            f"({names.get(a, a)})")
    fix = ("run NTP (chrony or systemd-timesyncd) on the controller and the agents' hosts; "
           "certificates and time series depend on clocks")
    bad = [names.get(x, x) for x, o in worst if abs(o) >= CLOCK_WARN_S]
    if abs(off) >= CLOCK_FAIL_S:
        return Check("clock", FAIL, text + f"; off by {CLOCK_WARN_S:g} s or more: "
                     + ", ".join(bad[:10]), fix)
    if abs(off) >= CLOCK_WARN_S:
        return Check("clock", WARN, text + f"; off by {CLOCK_WARN_S:g} s or more: "
                     + ", ".join(bad[:10]), fix)
    return Check("clock", OK, text)


def agent_names(store: Any, ids: list[str]) -> dict[str, str]:
    out = {}
    for a in ids:
        org = store.get(f"agentid/{a}")
        raw = store.get(f"agent/{org.decode()}/{a}") if org else None
        out[a] = json.loads(raw).get("name", a) if raw else a
    return out


def check_external_url_offline(settings: Settings) -> Check:
    url = settings.public_url
    host = urlsplit(url).hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return Check("external_url", FAIL, f"{url}: {host} does not resolve here, so the "
                     "controller's start check of it fails", "set external_url to a name this "
                     "host resolves (or check_external_url = false if it cannot reach itself)")
    return Check("external_url", SKIP, f"{url}: fetched by the controller itself when it runs "
                 "(at start, and by doctor)")


def check_external_url_online(settings: Settings, instance: str, pki: Any) -> Check:
    from controller import app as app_mod

    try:
        app_mod._check_external_url(settings, instance, pki)
    except OvercastError as exc:
        return Check("external_url", FAIL, exc.message.removeprefix("external_url check: "),
                     "set external_url to the address users and agents reach, or fix what "
                     "answers there (a proxy, DNS, a firewall)")
    return Check("external_url", OK, f"{settings.public_url}/api/v2/health is answered by "
                 "this controller")


# ---- the two ways to run ----------------------------------------------------------------

async def run_online(settings: Settings, services: Any, pki: Any, instance: str) -> dict[str, Any]:
    """All checks inside the running controller (blocking ones in threads)."""
    store = services.store
    offsets = services.registry.clock_offsets()
    checks = [check_settings(settings, "the running controller's settings"),
              check_data_dir(settings),
              await asyncio.to_thread(check_external_url_online, settings, instance, pki),
              check_ca(settings.data_dir), check_server_cert(settings),
              await asyncio.to_thread(check_disk, settings.data_dir),
              check_clock(offsets, agent_names(store, list(offsets))),
              await asyncio.to_thread(check_secret_key, settings, store),
              check_schema(store, online=True),
              await asyncio.to_thread(check_audit, store)]
    return report("online", checks)


def run_offline(settings: Settings, where: str) -> dict[str, Any]:
    """All checks from the files, with the store opened read-only (no controller runs)."""
    from controller.store import open_store

    checks = [check_settings(settings, where), check_data_dir(settings),
              check_external_url_offline(settings), check_ca(settings.data_dir),
              check_server_cert(settings)]
    d = Path(settings.data_dir)
    if d.is_dir():
        checks.append(check_disk(settings.data_dir))
    checks.append(check_clock(None, {}))
    if not (d / "store").is_dir():
        checks.append(Check("store", FAIL, f"no store in {d}",
                            "run `overcast controller --init` (or restore a backup) there"))
        return report("offline", checks)
    try:
        store = open_store(d / "store", "ro")
    except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
        checks.append(Check("store", FAIL, f"the store in {d / 'store'} does not open: {exc}",
                            "restore a backup"))
        return report("offline", checks)
    try:
        checks += [check_secret_key(settings, store), check_schema(store, online=False),
                   check_audit(store)]
    finally:
        store.close()
        give_back(settings.data_dir)
    return report("offline", checks)
