"""Settings: TOML, then OVERCAST_* variables, then flags; typed; the external URL checked."""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path

import pytest

from controller.errors import Invalid
from controller.settings import Settings, load


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('http = "127.0.0.1:9000"\ngrpc = "127.0.0.1:9001"\nsession_ttl = 60\n')
    s = load(str(cfg), env={"OVERCAST_GRPC": "127.0.0.1:9002", "OVERCAST_SESSION_TTL": "120"},
             overrides={"grpc": "127.0.0.1:9003"})
    assert (s.http, s.grpc, s.session_ttl) == ("127.0.0.1:9000", "127.0.0.1:9003", 120)


def test_unknown_keys_and_wrong_types_name_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("htp = 1\n")
    with pytest.raises(Invalid, match="unknown setting 'htp'"):
        load(str(cfg), env={})
    with pytest.raises(Invalid, match="OVERCAST_SESSION_TTL: session_ttl must be a int"):
        load(_empty(tmp_path), env={"OVERCAST_SESSION_TTL": "soon"})
    with pytest.raises(Invalid, match="does not exist"):
        load(str(tmp_path / "missing.toml"), env={})


def _empty(tmp_path: Path) -> str:
    p = tmp_path / "empty.toml"
    p.write_text("")
    return str(p)


def test_secret_key_is_masked(tmp_path: Path) -> None:
    s = load(_empty(tmp_path), env={"OVERCAST_SECRET_KEY": "c2VjcmV0"})
    assert "c2VjcmV0" not in repr(s)
    assert s.secret_key == "c2VjcmV0"


@pytest.mark.parametrize(("env", "message"), [
    ({"OVERCAST_EXTERNAL_URL": "ftp://x"}, "is not an http"),
    ({"OVERCAST_EXTERNAL_URL": "http://127.0.0.1:7080/overcast"}, "must not have a path"),
    ({"OVERCAST_EXTERNAL_URL": "https://127.0.0.1:7080"}, "TLS is off"),
    ({"OVERCAST_EXTERNAL_URL": "http://cloud.example.com:7080"}, "in clear over the network"),
    ({"OVERCAST_EXTERNAL_URL": "http://127.0.0.1:8080"}, "names port 8080"),
    ({"OVERCAST_HTTP": "localhost"}, "HOST:PORT"),
    ({"OVERCAST_TLS": "maybe"}, "tls must be"),
])
def test_bad_external_url_and_addresses_fail_at_start(tmp_path: Path, env: dict[str, str],
                                                       message: str) -> None:
    with pytest.raises(Invalid, match=message):
        load(_empty(tmp_path), env=env).validate()


def test_behind_proxy_allows_a_different_public_url(tmp_path: Path) -> None:
    s = load(_empty(tmp_path), env={"OVERCAST_EXTERNAL_URL": "https://cloud.example.com",
                                    "OVERCAST_BEHIND_PROXY": "true"})
    s.validate()
    assert s.public_url == "https://cloud.example.com"
    assert not s.tls_enabled  # loopback bind: the proxy terminates TLS


def test_tls_auto_follows_the_bind_address(tmp_path: Path) -> None:
    assert not load(_empty(tmp_path), env={}).tls_enabled
    s = load(_empty(tmp_path), env={"OVERCAST_HTTP": "0.0.0.0:443"})
    assert s.tls_enabled and s.public_url.startswith("https://")


# ---- range checks --------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "name"), [
    ({"OVERCAST_SESSION_TTL": "-5"}, "session_ttl"),
    ({"OVERCAST_SESSION_TTL": "0"}, "session_ttl"),
    ({"OVERCAST_LOGIN_MAX_FAILURES": "0"}, "login_max_failures"),
    ({"OVERCAST_LOGIN_LOCKOUT": "-1"}, "login_lockout"),
    ({"OVERCAST_MAX_BODY_BYTES": "10"}, "max_body_bytes"),
    ({"OVERCAST_TOKEN_TTL": "-1"}, "token_ttl"),
    ({"OVERCAST_TOKEN_MAX_TTL": "-1"}, "token_max_ttl"),
    ({"OVERCAST_TOKEN_TTL": "7200", "OVERCAST_TOKEN_MAX_TTL": "3600"}, "token_ttl"),
    ({"OVERCAST_TOKEN_TTL": "0", "OVERCAST_TOKEN_MAX_TTL": "3600"}, "token_ttl"),
    ({"OVERCAST_HTTP": "127.0.0.1:0"}, "http"),
    ({"OVERCAST_HTTP": "127.0.0.1:65536"}, "http"),
    ({"OVERCAST_GRPC": "127.0.0.1:0"}, "grpc"),
    ({"OVERCAST_GRPC": "127.0.0.1:99999"}, "grpc"),
    ({"OVERCAST_AGENTS": "127.0.0.1:0"}, "agents"),
    ({"OVERCAST_AGENTS_ENDPOINT": "agents.example.com:70000"}, "agents_endpoint"),
    ({"OVERCAST_AGENT_CERT_TTL": "0"}, "agent_cert_ttl"),
    ({"OVERCAST_JOIN_TOKEN_TTL": "0"}, "join_token_ttl"),
    ({"OVERCAST_JOIN_TOKEN_MAX_TTL": "0"}, "join_token_max_ttl"),
    ({"OVERCAST_JOIN_TOKEN_TTL": "7200", "OVERCAST_JOIN_TOKEN_MAX_TTL": "3600"}, "join_token_ttl"),
    ({"OVERCAST_METRIC_INTERVAL": "0"}, "metric_interval"),
    ({"OVERCAST_METRIC_RETENTION": "-1"}, "metric_retention"),
    ({"OVERCAST_AGENT_GRACE": "0"}, "agent_grace"),
    ({"OVERCAST_STORE_CACHE_MIB": "7"}, "store_cache_mib"),
    ({"OVERCAST_STORE_WRITE_BUFFER_MIB": "4"}, "store_write_buffer_mib"),
    ({"OVERCAST_STORE_WRITE_BUFFER_MIB": "5000"}, "store_write_buffer_mib"),
])
def test_numbers_out_of_range_are_refused_naming_the_setting(tmp_path: Path, env: dict[str, str],
                                                            name: str) -> None:
    with pytest.raises(Invalid, match=name) as info:
        load(_empty(tmp_path), env=env).validate()
    assert info.value.details["field"] == name


def test_every_int_setting_has_a_minimum(tmp_path: Path) -> None:
    """A new int setting cannot slip in unchecked: -1 is refused for each, naming it."""
    ints = [f.name for f in fields(Settings) if f.type in (int, "int")]
    assert {"session_ttl", "login_max_failures", "agent_grace", "metric_interval"} <= set(ints)
    for name in ints:
        with pytest.raises(Invalid) as info:
            load(_empty(tmp_path), env={}, overrides={name: -1}).validate()
        assert info.value.details["field"] == name, name


def test_sensible_numbers_pass(tmp_path: Path) -> None:
    load(_empty(tmp_path), env={"OVERCAST_TOKEN_TTL": "0", "OVERCAST_TOKEN_MAX_TTL": "0",
                                "OVERCAST_SESSION_TTL": "60", "OVERCAST_LOGIN_MAX_FAILURES": "1",
                                "OVERCAST_HTTP": "127.0.0.1:65535",
                                "OVERCAST_STORE_CACHE_MIB": "8",
                                "OVERCAST_STORE_WRITE_BUFFER_MIB": "4096"}).validate()
    load(_empty(tmp_path), env={"OVERCAST_TOKEN_TTL": "3600", "OVERCAST_TOKEN_MAX_TTL": "3600"}).validate()


# ---- gRPC TLS ------------------------------------------------------------------------------

def test_grpc_tls_follows_the_grpc_address_not_the_http_one(tmp_path: Path) -> None:
    s = load(_empty(tmp_path), env={"OVERCAST_HTTP": "127.0.0.1:7080", "OVERCAST_GRPC": "0.0.0.0:7443"})
    s.validate()
    assert not s.tls_enabled and s.grpc_tls_enabled  # tokens never cross the network in clear
    s = load(_empty(tmp_path), env={"OVERCAST_GRPC": "[::]:7443"})
    assert s.grpc_tls_enabled
    assert not load(_empty(tmp_path), env={}).grpc_tls_enabled  # both on loopback
    s = load(_empty(tmp_path), env={"OVERCAST_HTTP": "0.0.0.0:7080", "OVERCAST_GRPC": "127.0.0.1:7443",
                                    "OVERCAST_EXTERNAL_URL": "https://cloud.example.com:7080"})
    assert s.tls_enabled and not s.grpc_tls_enabled
    assert load(_empty(tmp_path), env={"OVERCAST_TLS": "on"}).grpc_tls_enabled


def test_tls_off_with_grpc_off_loopback_is_refused(tmp_path: Path) -> None:
    env = {"OVERCAST_TLS": "off", "OVERCAST_GRPC": "0.0.0.0:7443"}
    with pytest.raises(Invalid, match="gRPC would carry tokens in clear: bind it to loopback or "
                                      "turn tls on") as info:
        load(_empty(tmp_path), env=env).validate()
    assert info.value.details["field"] == "grpc"
    s = load(_empty(tmp_path), env={"OVERCAST_TLS": "off", "OVERCAST_GRPC": "127.0.0.1:7443"})
    s.validate()
    assert not s.grpc_tls_enabled


# ---- the admin socket's place -------------------------------------------------------------

def test_admin_socket_falls_back_to_a_private_directory(tmp_path: Path) -> None:
    short = load(_empty(tmp_path), env={"OVERCAST_DATA_DIR": str(tmp_path / "data")})
    assert short.admin_socket == str(tmp_path / "data" / "admin.sock")
    deep = tmp_path / ("d" * 100) / "data"
    deep.mkdir(parents=True)
    s = load(_empty(tmp_path), env={"OVERCAST_DATA_DIR": str(deep)})
    sock = Path(s.admin_socket)
    assert sock.name == "admin.sock" and len(str(sock).encode()) < 100
    digest = hashlib.sha256(str(deep).encode()).hexdigest()[:16]
    assert sock.parent == Path(f"/tmp/overcast-{deep.stat().st_uid}-{digest}")
    other = load(_empty(tmp_path), env={"OVERCAST_DATA_DIR": str(deep) + "x"})
    assert Path(other.admin_socket).parent != sock.parent  # one per data directory
