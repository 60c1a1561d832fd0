"""Settings: TOML, then OVERCAST_* variables, then flags; typed; the external URL checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import Invalid
from controller.settings import load


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
