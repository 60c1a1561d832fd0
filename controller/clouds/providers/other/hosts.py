"""The ``hosts`` list of an "other server" cloud: its shape checked, its private keys split
out as secrets, and the entries rebuilt from (config, secrets) for the adapter.

Pure (no asyncssh, no I/O): the service may call :func:`split_credentials` on the event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.errors import Invalid

JSON = Any

# the fields of one hosts item, and which of them are secret (sealed with the cloud's secrets)
ITEM_FIELDS = ("host", "alias", "user", "port", "key", "host_key")
ITEM_SECRETS = ("key",)
DEFAULT_USER = "root"
DEFAULT_PORT = 22
MAX_HOSTS = 500
_MAX_TEXT = 255


def secret_name(index: int, name: str = "key") -> str:
    """Where item ``index``'s secret field ``name`` lives in the cloud's secrets."""
    return f"hosts.{index}.{name}"


@dataclass(frozen=True)
class HostEntry:
    """One host to reach: its address, login and (secret) private key."""

    index: int
    host: str
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER
    alias: str = ""
    host_key: str = ""             # pinned host key: known_hosts line or "SHA256:..." fingerprint
    key: str = field(default="", repr=False)  # private key text (OpenSSH/PEM); never logged

    @property
    def external_id(self) -> str:
        """Stable while the address does not change; a new alias only renames the machine."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        return self.alias or self.host

    @property
    def label(self) -> str:
        """How messages name the host: alias and address, never the key."""
        return f"{self.alias} ({self.external_id})" if self.alias else self.external_id


def _text(item: dict[str, JSON], name: str, where: str, required: bool = False) -> str:
    value = item.get(name)
    if value is None or value == "":
        if required:
            raise Invalid(f"{where}: {name} is required", field="hosts")
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{where}: {name} must be a string", field="hosts")
    value = value.strip()
    if name != "host_key" and (len(value) > _MAX_TEXT or any(c.isspace() for c in value)):
        raise Invalid(f"{where}: {name} must be one word of at most {_MAX_TEXT} characters",
                      field="hosts")
    return value


def _port(item: dict[str, JSON], where: str) -> int:
    value = item.get("port")
    if value is None or value == "":
        return DEFAULT_PORT
    try:
        port = int(value)  # Mist sends it as a string ("22")
    except (TypeError, ValueError):
        raise Invalid(f"{where}: port must be a number", field="hosts") from None
    if isinstance(value, bool) or not 0 < port < 65536:
        raise Invalid(f"{where}: port must be between 1 and 65535", field="hosts")
    return port


def _items(hosts: JSON) -> list[dict[str, JSON]]:
    if not isinstance(hosts, list) or not hosts:
        raise Invalid("hosts must be a non-empty list of {host, key, ...}", field="hosts")
    if len(hosts) > MAX_HOSTS:
        raise Invalid(f"at most {MAX_HOSTS} hosts per cloud", field="hosts")
    for i, item in enumerate(hosts):
        if not isinstance(item, dict):
            raise Invalid(f"hosts[{i}] must be an object", field="hosts")
        unknown = sorted(set(item) - set(ITEM_FIELDS))
        if unknown:
            raise Invalid(f"hosts[{i}]: unknown field(s) {', '.join(map(str, unknown))}",
                          field="hosts")
    return hosts


def _public(item: dict[str, JSON], i: int) -> dict[str, JSON]:
    """The non-secret part of one item, checked and with defaults filled in."""
    where = f"hosts[{i}]"
    host = _text(item, "host", where, required=True).lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return {"host": host, "alias": _text(item, "alias", where),
            "user": _text(item, "user", where) or DEFAULT_USER, "port": _port(item, where),
            "host_key": _text(item, "host_key", where)}


def _check_unique(entries: list[HostEntry]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        if e.external_id in seen:
            raise Invalid(f"hosts[{e.index}] repeats hosts[{seen[e.external_id]}] "
                          f"({e.external_id})", field="hosts")
        seen[e.external_id] = e.index


def split_credentials(credentials: dict[str, JSON]) -> tuple[dict[str, JSON], dict[str, str]]:
    """A create/edit request's ``{"hosts": [...]}`` -> (config, secrets).

    ``config["hosts"]`` keeps each item's host, alias, user, port and host_key (defaults
    filled in); each item's private key goes to ``secrets["hosts.<i>.key"]`` (``<i>`` its
    position in ``config["hosts"]``, so the two are always stored together). Raises
    :class:`Invalid` for a malformed list; messages never quote a key."""
    items = _items(credentials.get("hosts"))
    public: list[JSON] = []
    secrets: dict[str, str] = {}
    entries = []
    for i, item in enumerate(items):
        p = _public(item, i)
        key = item.get("key")
        if not isinstance(key, str) or not key.strip():
            raise Invalid(f"hosts[{i}]: key (a private key) is required", field="hosts")
        secrets[secret_name(i)] = key.strip() + "\n"
        public.append(p)
        entries.append(HostEntry(index=i, **p))
    _check_unique(entries)
    return {"hosts": public}, secrets


def parse_hosts(config: dict[str, JSON], secrets: dict[str, str]) -> list[HostEntry]:
    """The adapter's view: entries from the stored config plus their decrypted keys.

    A private key found in ``config`` is refused: it would have been stored in clear."""
    entries = []
    for i, item in enumerate(_items(config.get("hosts"))):
        if item.get("key"):
            raise Invalid(f"hosts[{i}]: the private key must be stored as a secret "
                          f"({secret_name(i)}), not in the cloud's config", field="hosts")
        p = _public(item, i)
        key = secrets.get(secret_name(i), "")
        if not key.strip():
            raise Invalid(f"hosts[{i}] ({p['host']}): no private key", field="hosts")
        entries.append(HostEntry(index=i, key=key, **p))
    _check_unique(entries)
    return entries
