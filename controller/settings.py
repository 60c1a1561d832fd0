"""Settings: one frozen, typed definition read from a TOML file, then ``OVERCAST_*`` variables,
then command-line flags (each overriding the one before). Nothing else reads ``os.environ``."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.errors import Invalid


class Secret(str):
    """A string that never shows itself in ``repr`` or logs."""

    def __repr__(self) -> str:
        return "Secret('***')"


def _default_data_dir() -> str:
    """/var/lib/overcast for root, else $XDG_DATA_HOME/overcast (~/.local/share/overcast)."""
    if os.geteuid() == 0:
        return "/var/lib/overcast"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "overcast")


def default_config_file() -> str:
    return os.environ.get("OVERCAST_CONFIG", "/etc/overcast/controller.toml")


@dataclass(frozen=True)
class Settings:
    # where state lives: the store, the CA, the secret key, the admin socket
    data_dir: str = field(default_factory=_default_data_dir)
    # listen addresses, HOST:PORT
    http: str = "127.0.0.1:7080"
    grpc: str = "127.0.0.1:7443"
    # the URL agents, browsers and the CLI use to reach this controller; derived when empty
    external_url: str = ""
    # "auto": HTTP serves TLS unless its address is loopback, gRPC unless its own is; "on";
    # "off" (only behind a proxy or on loopback; refused when gRPC is not on loopback)
    tls: str = "auto"
    # a certificate (PEM, its chain after it) and its key to serve instead of the one made
    # from the controller's own CA; both or neither
    tls_cert: str = ""
    tls_key: str = ""
    # a reverse proxy terminates TLS and sets X-Forwarded-For/-Proto
    behind_proxy: bool = False
    # at start, fetch <external_url>/api/v2/health and refuse to run if it is not us
    check_external_url: bool = True
    # base64 of 32 bytes; when empty, <data_dir>/secret.key (made on first start, 0600)
    secret_key: Secret = Secret("")
    # the largest request body accepted, in bytes
    max_body_bytes: int = 1024 * 1024
    # seconds a browser session lasts
    session_ttl: int = 14 * 24 * 3600
    # API tokens: seconds a new one lasts unless asked otherwise, and the most one may ask
    # for (token_ttl = 0: never expire, allowed only with token_max_ttl = 0: no limit)
    token_ttl: int = 90 * 24 * 3600
    token_max_ttl: int = 365 * 24 * 3600
    # wrong passwords in a row before an e-mail or an address is locked out, and for how
    # many seconds
    login_max_failures: int = 5
    login_lockout: int = 300
    # logging: the least severe level written (debug, info, warning, error), and one JSON
    # object per line instead of text
    log_level: str = "info"
    log_json: bool = False
    # agents: their mTLS gRPC listener, and the host:port agents dial (derived when empty)
    agents: str = "127.0.0.1:7444"
    agents_endpoint: str = ""
    # seconds an agent's certificate is valid (agents renew it over their stream)
    agent_cert_ttl: int = 7 * 24 * 3600
    # join tokens (agent enrolment): seconds a new one lasts unless asked otherwise, and
    # the most one may ask for
    join_token_ttl: int = 3600
    join_token_max_ttl: int = 30 * 24 * 3600
    # the agent's dependency wheels served at /install/wheels/ to hosts without the package
    # index (fill it with `overcast agent wheels fetch`); empty: <data_dir>/wheels
    agent_wheels_dir: str = ""
    # metrics: seconds between an agent's samples, and seconds raw samples are kept; they are
    # deleted by whole hours, so kept up to an hour longer
    metric_interval: int = 10
    metric_retention: int = 7 * 24 * 3600
    # metrics: seconds the rolled-up series are kept: every series summed up per minute and
    # per hour (count, min, max, sum, counter increase), made in the background from the raw
    # samples; queries over long spans read them (raw samples not rolled up yet are kept past
    # metric_retention until they are)
    metric_rollup_retention: int = 365 * 24 * 3600
    # metrics: seconds the 1-minute rollups are kept (at most metric_rollup_retention; the
    # hourly ones are kept that long). A year of 1-minute rollups is ~1.2 GiB per agent host
    # (bench/tsdb_bench.py); a month of them and a year of hours is ~190 MiB. Queries over
    # older spans answer from the hourly rollups
    metric_minute_rollup_retention: int = 31 * 24 * 3600
    # the store's memory (RocksDB), in MiB: its block cache (recently read blocks and the
    # files' indexes, shared by the stores of the process) and each of its two memtables
    # (writes not flushed to disk yet). Less memory costs more reads from disk (or the page
    # cache) and more flushes and compaction; see the README's "Memory of the store"
    store_cache_mib: int = 8
    store_write_buffer_mib: int = 32
    # datapoint queries: the most samples one may need (raw samples and rollup buckets read,
    # plus the points computed: ~0.5 us each here, so 20 million are ~10-15 s of a core) and
    # the seconds it may run; over either it stops with a 422 that says how to narrow it
    query_max_samples: int = 20_000_000
    query_timeout: int = 30
    # an agent silent this long (no stream) is unreachable; keepalives detect dead peers sooner
    agent_grace: int = 30
    # clouds: default seconds between polls of a cloud (each cloud may set its own), the
    # faster interval while someone watches live events, threads that call provider APIs,
    # and how long one provider call may take
    cloud_poll_interval: int = 60
    cloud_fast_poll_interval: int = 15
    cloud_workers: int = 8
    cloud_call_timeout: int = 60
    # clouds whose endpoint is this host (loopback, a local libvirt URI, a Docker socket) or a
    # link-local address (metadata services) are refused unless this is on; the same goes for
    # script sources, and for webhook URLs (which it also lets reach private addresses)
    allow_local_clouds: bool = False
    # scripts and commands: seconds a run may take unless asked otherwise, and bytes of output
    # kept per machine (the rest is counted, not kept)
    exec_timeout: int = 600
    exec_max_output: int = 1024 * 1024
    # Ansible scripts on machines without an agent run ansible-playbook on the controller,
    # and a playbook can run code where it runs (delegate_to: localhost, lookups, plugins):
    # off unless everyone who may add and run scripts is trusted with the controller's host
    controller_ansible: bool = False
    # shells: one ends after this many seconds without a keystroke or output, or this long
    # in all; the ticket that opens a shell's WebSocket is good this long (and once);
    # recordings stop growing past this many bytes (the shell goes on, unrecorded)
    shell_idle_timeout: int = 1800
    shell_max_duration: int = 8 * 3600
    shell_ticket_ttl: int = 60
    shell_recording_max_bytes: int = 64 * 1024 * 1024
    # tunnels: the controller is the WireGuard hub. Its interface (names are machine-wide
    # with wireguard-go), the UDP port it listens on, the pool of tunnel addresses (the hub
    # takes the first, each gateway the next free one), the host:port gateways dial (empty:
    # the external URL's host and tunnel_port), and seconds between looks at their health
    tunnel_interface: str = "oc-hub"
    tunnel_port: int = 51820
    tunnel_network: str = "100.96.0.0/16"
    tunnel_endpoint: str = ""
    tunnel_health_interval: int = 10
    # e-mail notifications: the SMTP server (empty: e-mail cannot be sent, and notifications
    # wait and then fail, visibly), its port, and how to secure the connection: "starttls"
    # (upgrade a plain connection, usually port 587), "ssl" (TLS from the start, usually 465)
    # or "none" (only to a relay on this host: a login is refused in clear elsewhere)
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"
    # the SMTP login (empty: none), and its password: sealed with the controller's secret
    # key ("enc1:...", as `overcast notifications seal-password` prints it), or in clear
    smtp_user: str = ""
    smtp_password: Secret = Secret("")
    # the From address of notifications (empty: overcast@<the external URL's host>)
    smtp_from: str = ""
    # a CA bundle (PEM) trusted for the SMTP server besides the system's (a private relay)
    smtp_ca_file: str = ""
    # seconds one SMTP step (connect, TLS, login, sending) or one webhook call may take; a
    # whole e-mail may take three times smtp_timeout, then its connection is cut
    smtp_timeout: int = 30
    webhook_timeout: int = 10
    # webhooks to addresses that are not public (10/8, 172.16/12, 192.168/16, 100.64/10,
    # fc00::/7...) are refused unless this is on; the controller's own host, link-local
    # addresses and cloud metadata services also need allow_local_clouds
    allow_private_webhooks: bool = False
    # notifications that fail are tried again after notify_retry_base seconds, then twice
    # as long each time (at most notify_retry_max), up to notify_max_attempts attempts in
    # all; then they are kept as failed, visible, until someone retries them
    notify_max_attempts: int = 8
    notify_retry_base: int = 30
    notify_retry_max: int = 3600
    # seconds a rule waits before notifying again about the same machine when its incident
    # resolves and fires anew (a flapping condition), whatever its notify_every (0: no floor)
    notify_min_interval: int = 300
    # seconds resolved incidents and sent or failed notifications are kept
    incident_retention: int = 90 * 24 * 3600
    # schedules: the shortest interval a schedule may have (seconds; its period may be
    # "seconds" down to this), how late a due run may start before it counts as missed (the
    # controller was down, the host slept: the schedule's "missed" choice then decides), and
    # how many run records are kept per schedule (older ones are dropped)
    schedule_min_interval: int = 60
    schedule_misfire_grace: int = 60
    schedule_runs_kept: int = 100

    # derived
    @property
    def http_host(self) -> str:
        return split_hostport(self.http, "http")[0]

    @property
    def http_port(self) -> int:
        return split_hostport(self.http, "http")[1]

    @property
    def grpc_host(self) -> str:
        return split_hostport(self.grpc, "grpc")[0]

    @property
    def grpc_port(self) -> int:
        return split_hostport(self.grpc, "grpc")[1]

    @property
    def agents_host(self) -> str:
        return split_hostport(self.agents, "agents")[0]

    @property
    def agents_port(self) -> int:
        return split_hostport(self.agents, "agents")[1]

    @property
    def agents_public_endpoint(self) -> str:
        """host:port agents dial: the setting, else the external URL's host and our port."""
        if self.agents_endpoint:
            return self.agents_endpoint
        host = urlsplit(self.public_url).hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.agents_port}"

    @property
    def tunnel_public_endpoint(self) -> str:
        """host:port gateways dial: the setting, else the external URL's host and tunnel_port."""
        if self.tunnel_endpoint:
            return self.tunnel_endpoint
        host = urlsplit(self.public_url).hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.tunnel_port}"

    @property
    def tls_enabled(self) -> bool:
        if self.tls == "on":
            return True
        if self.tls == "off":
            return False
        return not _is_loopback(self.http_host)

    @property
    def public_url(self) -> str:
        if self.external_url:
            return self.external_url.rstrip("/")
        host = self.http_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host}:{self.http_port}"

    @property
    def grpc_tls_enabled(self) -> bool:
        """gRPC carries bearer tokens: TLS when "on", or "auto" and not on loopback. Decided by
        the gRPC address itself, not by the HTTP one (``validate`` refuses "off" off loopback)."""
        if self.tls == "on":
            return True
        if self.tls == "off":
            return False
        return not _is_loopback(self.grpc_host)

    @property
    def admin_socket(self) -> str:
        path = str(Path(self.data_dir) / "admin.sock")
        if len(path.encode()) < 100:
            return path
        # Unix socket paths are limited to ~107 bytes: a deep data directory gets its socket
        # in a private directory named after it instead (same for server and CLI).
        return str(Path(self.admin_fallback_dir) / "admin.sock")

    @property
    def admin_fallback_dir(self) -> str:
        """``/tmp/overcast-<uid>-<hash of data_dir>``: the admin socket's directory when
        ``<data_dir>/admin.sock`` would be too long. ``uid`` is the data directory's owner
        (this process's when it does not exist yet), so a CLI run as root finds the socket of a
        controller run by its own user. The controller makes it 0700 and refuses one that is
        not its own; the CLI refuses one not owned by the data directory's owner (or root)."""
        import hashlib

        try:
            uid = os.stat(self.data_dir).st_uid
        except OSError:
            uid = os.geteuid()
        digest = hashlib.sha256(self.data_dir.encode()).hexdigest()[:16]
        return f"/tmp/overcast-{uid}-{digest}"  # noqa: S108 (private: 0700, owner checked)

    def validate(self) -> None:
        """Check what can be checked without the network; raise Invalid naming the setting."""
        split_hostport(self.http, "http")
        split_hostport(self.grpc, "grpc")
        split_hostport(self.agents, "agents")
        if self.agents_endpoint:
            split_hostport(self.agents_endpoint, "agents_endpoint")
        for f in fields(self):
            if f.type in (int, "int"):  # every number, also one added later (at least 1)
                low, value = _MINIMUMS.get(f.name, 1), getattr(self, f.name)
                if value < low:
                    raise Invalid(f"{f.name} must be at least {low}, got {value}", field=f.name)
                high = _MAXIMUMS.get(f.name)
                if high is not None and value > high:
                    raise Invalid(f"{f.name} must be {low} to {high}, got {value}", field=f.name)
        if self.token_max_ttl > 0 and self.token_ttl == 0:
            raise Invalid("token_ttl = 0 (never expire) needs token_max_ttl = 0", field="token_ttl")
        if self.token_max_ttl > 0 and self.token_ttl > self.token_max_ttl:
            raise Invalid(f"token_ttl ({self.token_ttl}) must not exceed token_max_ttl "
                          f"({self.token_max_ttl})", field="token_ttl")
        if self.join_token_ttl > self.join_token_max_ttl:
            raise Invalid(f"join_token_ttl ({self.join_token_ttl}) must not exceed "
                          f"join_token_max_ttl ({self.join_token_max_ttl})", field="join_token_ttl")
        if self.tls not in _CHOICES["tls"]:
            raise Invalid("tls must be auto, on or off", field="tls")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise Invalid("tls_cert and tls_key go together", field="tls_cert")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise Invalid(f"{name} {path} does not exist", field=name)
        if self.log_level.lower() not in _CHOICES["log_level"]:
            raise Invalid("log_level must be debug, info, warning or error", field="log_level")
        if self.smtp_security not in _CHOICES["smtp_security"]:
            raise Invalid("smtp_security must be starttls, ssl or none", field="smtp_security")
        if (self.smtp_security == "none" and self.smtp_user and self.smtp_host
                and not _is_loopback(self.smtp_host)):
            raise Invalid(f"smtp_security = 'none' would send the SMTP password to "
                          f"{self.smtp_host} in clear: use starttls or ssl", field="smtp_security")
        if self.smtp_ca_file and not Path(self.smtp_ca_file).is_file():
            raise Invalid(f"smtp_ca_file {self.smtp_ca_file} does not exist", field="smtp_ca_file")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", self.tunnel_interface):
            raise Invalid(f"tunnel_interface {self.tunnel_interface!r} is not an interface name "
                          "(1 to 15 letters, digits, '_' or '-')", field="tunnel_interface")
        try:
            pool = ipaddress.ip_network(self.tunnel_network)
        except ValueError:
            raise Invalid(f"tunnel_network {self.tunnel_network!r} is not a CIDR (like "
                          "100.96.0.0/16)", field="tunnel_network") from None
        if pool.num_addresses < 4:
            raise Invalid("tunnel_network is too small: it needs room for the hub and gateways",
                          field="tunnel_network")
        if self.tunnel_endpoint:
            split_hostport(self.tunnel_endpoint, "tunnel_endpoint")
        if self.tls == "off" and not _is_loopback(self.grpc_host):
            raise Invalid(f"gRPC would carry tokens in clear: bind it to loopback or turn tls on "
                          f"(grpc = {self.grpc!r}, tls = 'off')", field="grpc")
        self._validate_external_url()

    def _validate_external_url(self) -> None:
        url = self.public_url
        parts = urlsplit(url)
        hint = "set external_url (OVERCAST_EXTERNAL_URL) to the https://host[:port] users reach"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"external_url {url!r} is not an http(s)://host[:port] URL; {hint}",
                          field="external_url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise Invalid(f"external_url {url!r} must not have a path, query or fragment",
                          field="external_url")
        try:
            _ = parts.port
        except ValueError:
            raise Invalid(f"external_url {url!r} has a bad port", field="external_url") from None
        if self.behind_proxy:
            return
        if parts.scheme == "https" and not self.tls_enabled:
            raise Invalid(
                f"external_url {url} is https but TLS is off here; turn tls on, or set "
                "behind_proxy = true if a reverse proxy terminates TLS", field="external_url")
        if parts.scheme == "http" and self.tls_enabled:
            raise Invalid(f"external_url {url} is plain http but this controller serves TLS",
                          field="external_url")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise Invalid(
                f"external_url {url} would send passwords and tokens in clear over the network; "
                "use https, or set behind_proxy = true behind a TLS-terminating proxy",
                field="external_url")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port != self.http_port:
            raise Invalid(
                f"external_url {url} names port {port} but HTTP listens on {self.http_port}; "
                "set behind_proxy = true if a proxy forwards it", field="external_url")


# the smallest sensible value of each int setting (1 when not listed); ``validate`` refuses less
_MINIMUMS: dict[str, int] = {
    "max_body_bytes": 1024,
    "session_ttl": 60,
    "token_ttl": 0,  # 0: never expires (only with token_max_ttl = 0)
    "token_max_ttl": 0,  # 0: no limit
    "login_max_failures": 1,
    "login_lockout": 1,
    "agent_cert_ttl": 1,
    "join_token_ttl": 1,
    "join_token_max_ttl": 1,
    "metric_interval": 1,
    "metric_retention": 1,
    "agent_grace": 1,
    "cloud_poll_interval": 5,
    "cloud_fast_poll_interval": 1,
    "cloud_workers": 1,
    "cloud_call_timeout": 1,
    "exec_timeout": 1,
    "exec_max_output": 1024,
    "shell_idle_timeout": 1,
    "shell_max_duration": 1,
    "shell_ticket_ttl": 1,
    "shell_recording_max_bytes": 0,
    "tunnel_port": 1,
    "tunnel_health_interval": 1,
    "smtp_port": 1,
    "smtp_timeout": 1,
    "webhook_timeout": 1,
    "notify_max_attempts": 1,
    "notify_retry_base": 1,
    "notify_retry_max": 1,
    "notify_min_interval": 0,
    "incident_retention": 60,
    # smaller memtables switch at every seal write (up to ~20 MB): 8 MiB was measured with
    # 10,000 agents (bench/results/agents_scale_small_store.json)
    "store_cache_mib": 8,
    "store_write_buffer_mib": 8,
}


# the largest value of an int setting, where there is one; ``validate`` refuses more
_MAXIMUMS: dict[str, int] = {"tunnel_port": 65535, "smtp_port": 65535, "notify_max_attempts": 100,
                             "store_cache_mib": 1024 * 1024, "store_write_buffer_mib": 4096}
# the values a text setting may take (log_level in any case); ``validate`` refuses others
_CHOICES: dict[str, tuple[str, ...]] = {
    "tls": ("auto", "on", "off"),
    "log_level": ("debug", "info", "warning", "error"),
    "smtp_security": ("starttls", "ssl", "none"),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise Invalid(f"{name} must be HOST:PORT, got {value!r}", field=name)
    if not 1 <= int(port) <= 65535:
        raise Invalid(f"{name}: the port must be 1 to 65535, got {value!r}", field=name)
    return host.strip("[]") or "0.0.0.0", int(port)


def _convert(name: str, typ: Any, value: Any, source: str) -> Any:
    tname = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if tname == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tname == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if tname == "Secret":
            return Secret(str(value))
        if not isinstance(value, str | int):
            raise ValueError(value)
        return str(value)
    except ValueError:
        raise Invalid(f"{source}: {name} must be a {tname}, got {value!r}", field=name) from None


def config_path(config_file: str | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> tuple[Path, bool]:
    """The settings file ``load`` reads, and whether it was named (then it must exist): the
    one given, else $OVERCAST_CONFIG, else /etc/overcast/controller.toml when it exists, else
    <data_dir>/controller.toml (where ``overcast controller --init`` puts it when not root)."""
    env = dict(os.environ if env is None else env)
    named = config_file or env.get("OVERCAST_CONFIG")
    if named:
        return Path(named), True
    path = Path(default_config_file())
    if path.is_file():
        return path, False
    data_dir = (overrides or {}).get("data_dir") or env.get("OVERCAST_DATA_DIR") or _default_data_dir()
    return Path(data_dir).absolute() / "controller.toml", False


def load(
    config_file: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings from ``config_file`` (when it exists; an explicitly named one must), then the
    environment, then ``overrides`` (flags). Unknown keys are errors, not silently ignored."""
    env = dict(os.environ if env is None else env)
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    path, explicit = config_path(config_file, env, overrides)
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise Invalid(f"{path}: not valid TOML: {exc}", field="config") from None
        for k, v in data.items():
            if k not in known:
                raise Invalid(f"{path}: unknown setting {k!r}", field=k)
            values[k] = _convert(k, known[k].type, v, str(path))
    elif explicit:
        raise Invalid(f"config file {path} does not exist", field="config")
    for k, f in known.items():
        ev = env.get("OVERCAST_" + k.upper())
        if ev is not None and ev != "":
            values[k] = _convert(k, f.type, ev, "OVERCAST_" + k.upper())
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in known:
            raise Invalid(f"unknown setting {k!r}", field=k)
        values[k] = _convert(k, known[k].type, v, "--" + k.replace("_", "-"))
    settings = Settings(**values)
    if settings.data_dir:
        settings = dataclasses.replace(settings, data_dir=str(Path(settings.data_dir).absolute()))
    return settings
