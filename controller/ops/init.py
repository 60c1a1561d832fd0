"""``overcast controller --init``: a data directory, a settings file and the first admin,
made without questions (automation, containers, configuration management), then exit.

Idempotent: each part is made only when missing (the settings file only when absent, the
admin only when the store has no user), so a second run changes nothing and says so. The
password is never printed or logged: it goes from the caller to the password hash.

Where the settings file goes: ``--config``, else $OVERCAST_CONFIG, else
/etc/overcast/controller.toml for root or when it exists, else <data_dir>/controller.toml — each a place
``overcast controller`` reads by default (see ``settings.config_path``)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.accounts.base import MAX_PASSWORD, MIN_PASSWORD
from controller.accounts.model import EMAIL_RE
from controller.errors import Conflict, Invalid, OvercastError
from controller.ops.owner import give_back
from controller.settings import Settings, load

# the flags --init writes into a new settings file, in this order
WRITTEN = ("data_dir", "http", "grpc", "agents", "external_url", "tls")
# settings the new file shows as commented hints, with their defaults
HINTS = ("external_url", "http", "grpc", "agents", "tls", "tls_cert", "tls_key",
         "behind_proxy", "log_level")


@dataclass
class InitResult:
    data_dir: str
    config: str
    ca_fingerprint: str = ""
    admin: dict[str, Any] | None = None
    created: dict[str, bool] = field(default_factory=dict)
    online: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "config": self.config,
                "ca_fingerprint": self.ca_fingerprint, "admin": self.admin,
                "created": self.created, "online": self.online, "notes": self.notes}


def default_config(named: str | None, env: dict[str, str], data_dir: str) -> Path:
    """Where --init puts the settings file (see the module docstring)."""
    if named or env.get("OVERCAST_CONFIG"):
        return Path(named or env["OVERCAST_CONFIG"]).absolute()
    etc = Path("/etc/overcast/controller.toml")
    if os.geteuid() == 0 or etc.is_file():  # the file the controller reads when it exists
        return etc
    return Path(data_dir).absolute() / "controller.toml"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def render_settings(values: dict[str, Any]) -> str:
    """The text of a new settings file: the values given, then commented hints."""
    from dataclasses import MISSING, fields

    from controller.ops.configref import descriptions

    desc = descriptions()
    defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
    lines = ["# Overcast controller settings, written by `overcast controller --init`.",
             "# Every setting, its OVERCAST_* variable and its default: docs/configuration.md.",
             "# Do not put secret_key here unless only the controller's user can read this file.",
             ""]
    for k in WRITTEN:
        if values.get(k) is not None:
            lines += [f"# {desc.get(k, '').splitlines()[0] if desc.get(k) else k}",
                      f"{k} = {_toml_value(values[k])}", ""]
    hints = [k for k in HINTS if values.get(k) is None]
    if hints:
        lines.append("# Often changed (the defaults shown):")
        lines += [f"# {k} = {_toml_value(defaults.get(k, ''))}" for k in hints]
    return "\n".join(lines).rstrip() + "\n"


def effective_settings(config: Path, given: dict[str, Any], env: dict[str, str]) -> Settings:
    """The settings a controller started afterwards would run with: the settings file (or,
    when absent, the one --init would write), the environment, then the flags."""
    if config.is_file():
        return load(str(config), env=env, overrides=given)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(render_settings(given))
        f.flush()
        return load(f.name, env=env, overrides=given)


def check_admin(email: str, password: str) -> str:
    """The e-mail as stored; Invalid before anything is made when it or the password is bad."""
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise Invalid("--admin-email is not a valid e-mail address", field="admin_email")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(f"the admin password must have {MIN_PASSWORD} to {MAX_PASSWORD} "
                      "characters", field="admin_password")
    return email


async def ensure_admin(services: Any, email: str, password: str,
                       org: str | None) -> tuple[dict[str, Any] | None, bool, str]:
    """Make ``email`` a platform admin when the store has no user yet. Returns (the admin,
    made now, a note): the user with that e-mail when it exists; else, on a store that has
    users, an existing platform admin and a note that ``email`` was ignored."""
    from controller.admin import admin_actor
    from controller.store.docs import public

    accounts, store = services.accounts, services.store

    def view(u: dict[str, Any]) -> dict[str, Any]:
        return {"id": u["id"], "email": u["email"], "is_admin": bool(u.get("is_admin"))}

    existing = accounts.user_by_email(email)
    if existing is not None:
        note = "" if existing.get("is_admin") else (
            f"the user {email} exists but is not a platform admin; it was left as it is")
        return view(existing), False, note
    if store.count("user/") == 0:
        try:
            user, _ = await accounts.create_user(admin_actor(), email, password, is_admin=True,
                                                 org_name=org)
            return view(public(user)), True, ""
        except Conflict:  # another --init made it meanwhile
            made = accounts.user_by_email(email)
            if made is not None:
                return view(made), False, ""
            raise
    admins = _admins(store)
    note = (f"the store already has users: --admin-email {email} was ignored (no user made; "
            "add one with `overcast adduser --admin`)")
    return (view(admins[0]) if admins else None), False, note


def _admins(store: Any) -> list[dict[str, Any]]:
    import json

    out = [json.loads(raw) for _, raw in store.scan("user/")]
    return sorted((u for u in out if u.get("is_admin")), key=lambda u: u.get("registration_date", ""))


def hosts_for(settings: Settings, services: Any) -> list[str]:
    """The names the server certificate must hold, as the controller computes them at start."""
    from urllib.parse import urlsplit

    from controller.tunnels.listeners import WILDCARD

    hosts = [h for h in {urlsplit(settings.public_url).hostname or "", settings.http_host,
                         settings.grpc_host} if h and h not in ("0.0.0.0", "::")]
    if settings.http_host in WILDCARD or settings.agents_host in WILDCARD:
        hosts.append(services.tunnels.hub_address())
    return hosts


def init_offline(settings: Settings, result: InitResult, email: str, password: str,
                 org: str | None) -> None:
    """Make the secret key, the store, the CA and the admin on a data directory no controller
    holds (raises StoreLocked when one does)."""
    from controller.pki import ensure_pki
    from controller.services import build_services
    from controller.store import open_store

    d = Path(settings.data_dir)
    result.created["secret_key"] = not settings.secret_key and not (d / "secret.key").exists()
    result.created["store"] = not (d / "store").exists()
    store = open_store(d / "store")
    try:
        services = build_services(settings, store)
        result.created["ca"] = not (d / "pki" / "ca.crt").exists()
        try:
            pki = ensure_pki(settings.data_dir, hosts_for(settings, services),
                             settings.tls_cert, settings.tls_key)
        except (OSError, ValueError) as exc:
            raise OvercastError(f"cannot make the certificates in {d / 'pki'}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        result.ca_fingerprint = "sha256:" + pki.ca_fingerprint
        admin, made, note = asyncio.run(ensure_admin(services, email, password, org))
    finally:
        store.close()
        give_back(d)
    result.admin, result.created["admin"] = admin, made
    if note:
        result.notes.append(note)


def prepare(settings: Settings, config: Path, given: dict[str, Any]) -> InitResult:
    """The data directory (0700) and the settings file (only when absent); the rest is
    :func:`init_offline`'s or, when a controller runs, the admin socket's."""
    d = Path(settings.data_dir)
    result = InitResult(data_dir=str(d), config=str(config))
    if d.exists() and not d.is_dir():
        raise OvercastError(f"the data directory {d} is not a directory (setting: data_dir)")
    result.created["data_dir"] = not d.exists()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    result.created["config"] = not config.exists()
    if result.created["config"]:
        config.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(str(config) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(render_settings(given))
        os.replace(str(config) + ".tmp", config)
    else:
        kept = load(str(config), env={})
        differ = [k for k, v in given.items() if v is not None and str(getattr(kept, k)) != str(v)]
        if differ:
            result.notes.append(f"the settings file {config} exists and was left as it is: it "
                                f"does not have the {', '.join('--' + k.replace('_', '-') for k in differ)} "
                                "given (edit it, or pass the same flags when starting)")
    return result
