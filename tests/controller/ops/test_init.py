"""--init's pieces: where the settings file goes, what it holds, and that the controller
reads it from there by default."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from controller import settings as settings_mod
from controller.errors import Invalid
from controller.ops import init


def test_where_the_settings_file_goes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    monkeypatch.setattr(init.os, "geteuid", lambda: 0)
    assert init.default_config(None, {}, d) == Path("/etc/overcast/controller.toml")
    monkeypatch.setattr(init.os, "geteuid", lambda: 1000)
    assert init.default_config(None, {}, d) == tmp_path / "data" / "controller.toml"
    assert init.default_config(None, {"OVERCAST_CONFIG": "/x/c.toml"}, d) == Path("/x/c.toml")
    assert init.default_config("/y/c.toml", {"OVERCAST_CONFIG": "/x/c.toml"}, d) == Path("/y/c.toml")


def test_the_file_holds_the_given_values_and_hints(tmp_path: Path) -> None:
    given = {"data_dir": str(tmp_path / "d"), "http": "0.0.0.0:7080",
             "external_url": 'https://ctl.example.com:7080/"quoted"'}
    text = init.render_settings(given)
    assert tomllib.loads(text) == given  # only the values given are set
    assert '# tls_cert = ""' in text and "# behind_proxy = false" in text
    assert "# grpc = \"127.0.0.1:7443\"" in text
    assert "# http =" not in text  # given: not a hint


def test_the_controller_reads_the_data_directorys_settings_file_by_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings_mod, "default_config_file", lambda: str(tmp_path / "absent.toml"))
    d = tmp_path / "data"
    d.mkdir()
    (d / "controller.toml").write_text('http = "127.0.0.1:9999"\n')
    env = {"OVERCAST_DATA_DIR": str(d)}
    assert settings_mod.config_path(None, env) == (d / "controller.toml", False)
    assert settings_mod.load(None, env=env).http == "127.0.0.1:9999"
    assert settings_mod.load(None, env={}, overrides={"data_dir": str(d)}).http == "127.0.0.1:9999"
    # /etc/overcast/controller.toml, when it exists, comes first; a named file always
    etc = tmp_path / "etc.toml"
    etc.write_text('http = "127.0.0.1:8888"\n')
    monkeypatch.setattr(settings_mod, "default_config_file", lambda: str(etc))
    assert settings_mod.load(None, env=env).http == "127.0.0.1:8888"
    with pytest.raises(Invalid, match="does not exist"):
        settings_mod.load(None, env={**env, "OVERCAST_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(("email", "password", "message"), [
    ("not-an-email", "long enough", "not a valid e-mail"),
    ("a@example.com", "short", "8 to 1024 characters"),
])
def test_bad_admin_is_refused_before_anything_is_made(email: str, password: str,
                                                       message: str) -> None:
    with pytest.raises(Invalid, match=message):
        init.check_admin(email, password)
