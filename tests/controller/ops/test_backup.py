"""Backups of a real store on disk: what a backup holds, its permissions, and the refusals
of a damaged, incomplete or newer backup and of a data directory that has data."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from controller.ops.backup import BackupError, make_backup, restore, verify_backup
from controller.pki import ensure_pki
from controller.secrets import load_key
from controller.settings import Settings
from controller.store import open_store


def _data_dir(tmp: Path, n: int = 50) -> Settings:
    d = tmp / "data"
    d.mkdir(mode=0o700)
    store = open_store(d / "store")
    for i in range(n):
        store.put(f"user/{i:04d}", json.dumps({"id": str(i), "_v": 1}).encode())
    store.put("meta/schema/user", b"1")
    store.put("meta/audit/head", json.dumps({"seq": 7, "hash": "ab" * 32}).encode())
    store.close()
    load_key(str(d))
    ensure_pki(str(d), ["localhost"])
    (d / "recordings" / "org1").mkdir(parents=True)
    (d / "recordings" / "org1" / "s1.cast").write_text('{"version": 2}\n')
    return Settings(data_dir=str(d))


def _backup(settings: Settings, dest: Path) -> dict[str, object]:
    store = open_store(Path(settings.data_dir) / "store")
    try:
        return make_backup(store, settings, str(dest), online=False)
    finally:
        store.close()


def test_a_backup_holds_the_store_key_pki_and_recordings_privately(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    out = _backup(settings, tmp_path / "bk")
    bk = tmp_path / "bk"
    manifest = json.loads((bk / "manifest.json").read_text())
    assert manifest["audit_head"] == {"seq": 7, "hash": "ab" * 32}
    assert manifest["schema"] == {"user": 1} and manifest["counts"]["user"] == 50
    assert manifest["secret_key"]["source"] == "file" and len(manifest["secret_key"]["sha256"]) == 64
    assert {"secret.key", "pki/ca.crt", "recordings/org1/s1.cast"} <= set(manifest["files"])
    assert any(k.startswith("store/") and k.endswith(".sst") for k in manifest["files"])
    assert out["counts"] == manifest["counts"] and out["online"] is False
    for p in [bk, *bk.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        if p.is_file():
            assert p.stat().st_nlink == 1, f"{p} shares its inode with the live store"
    assert not list(Path(settings.data_dir).glob(".backup-*"))  # the checkpoint is cleaned up
    assert verify_backup(bk)["format"] == 1


def test_restore_into_a_new_directory_gives_the_same_data(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    _backup(settings, tmp_path / "bk")
    target = Settings(data_dir=str(tmp_path / "elsewhere" / "data"))
    out = restore(str(tmp_path / "bk"), target)
    d = Path(target.data_dir)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / "secret.key").read_bytes() == (Path(settings.data_dir) / "secret.key").read_bytes()
    assert (d / "recordings" / "org1" / "s1.cast").is_file()
    store = open_store(d / "store")
    assert store.count("user/") == 50 and store.get("meta/schema/user") == b"1"
    store.close()
    assert out["replaced"] == "" and not list(d.glob(".restore-*"))


def test_a_damaged_or_incomplete_backup_is_refused(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    bk = tmp_path / "bk"
    _backup(settings, bk)
    sst = next(bk.glob("store/*.sst"))
    data = bytearray(sst.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sst.write_bytes(bytes(data))
    target = Settings(data_dir=str(tmp_path / "new"))
    with pytest.raises(BackupError, match=f"damaged: store/{sst.name} does not match its checksum"):
        restore(str(bk), target)
    assert not Path(target.data_dir).exists()  # nothing made
    sst.unlink()
    with pytest.raises(BackupError, match=f"store/{sst.name} is missing"):
        verify_backup(bk)
    (bk / "manifest.json").unlink()
    with pytest.raises(BackupError, match="no manifest.json .* did not finish"):
        verify_backup(bk)


def test_a_newer_backup_is_refused(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    bk = tmp_path / "bk"
    _backup(settings, bk)
    m = json.loads((bk / "manifest.json").read_text())
    (bk / "manifest.json").write_text(json.dumps(dict(m, schema={"user": 99})))
    with pytest.raises(BackupError, match="made by a newer Overcast .*user 99"):
        verify_backup(bk)
    (bk / "manifest.json").write_text(json.dumps(dict(m, format=2)))
    with pytest.raises(BackupError, match="has format 2"):
        verify_backup(bk)
    (bk / "manifest.json").write_text(json.dumps(dict(m, files={"../etc/passwd": {}})))
    with pytest.raises(BackupError):
        verify_backup(bk)


def test_restore_refuses_data_unless_forced_and_then_keeps_it_aside(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    _backup(settings, tmp_path / "bk")
    with pytest.raises(BackupError, match="is not empty .* --force"):
        restore(str(tmp_path / "bk"), settings)
    (Path(settings.data_dir) / "secret.key").write_text("old\n")
    out = restore(str(tmp_path / "bk"), settings, force=True)
    aside = Path(str(out["replaced"]))
    assert aside.parent == Path(settings.data_dir) and (aside / "secret.key").read_text() == "old\n"
    assert (aside / "store").is_dir()
    # a settings file in the data directory does not make it "not empty", and is kept
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "controller.toml").write_text("# mine\n")
    restore(str(tmp_path / "bk"), Settings(data_dir=str(fresh)))
    assert (fresh / "controller.toml").read_text() == "# mine\n"


def test_restore_refuses_while_a_process_holds_the_store(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    _backup(settings, tmp_path / "bk")
    held = open_store(Path(settings.data_dir) / "store")
    try:
        with pytest.raises(BackupError, match="a controller is running on"):
            restore(str(tmp_path / "bk"), settings, force=True)
    finally:
        held.close()


def test_backup_target_must_be_new_or_empty_and_outside_the_data_dir(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    with pytest.raises(BackupError, match="inside the data directory"):
        _backup(settings, Path(settings.data_dir) / "backups" / "1")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(BackupError, match="is not empty"):
        _backup(settings, full)
    with pytest.raises(BackupError, match="absolute path"):
        _backup(settings, Path("relative"))
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    _backup(settings, empty)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700


def test_the_secret_key_setting_must_match_the_backups_key(tmp_path: Path) -> None:
    import base64

    settings = _data_dir(tmp_path)
    _backup(settings, tmp_path / "bk")
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(BackupError, match="not the backup's key"):
        restore(str(tmp_path / "bk"), Settings(data_dir=str(tmp_path / "n1"), secret_key=other))  # type: ignore[arg-type]
    same = (Path(settings.data_dir) / "secret.key").read_text().strip()
    restore(str(tmp_path / "bk"), Settings(data_dir=str(tmp_path / "n2"), secret_key=same))  # type: ignore[arg-type]
    # a controller whose key is the setting: the backup says so, and a restore needs it
    keyed = Settings(data_dir=settings.data_dir, secret_key=same)  # type: ignore[arg-type]
    _backup(keyed, tmp_path / "bk2")
    assert not (tmp_path / "bk2" / "secret.key").exists()
    with pytest.raises(BackupError, match="secret_key setting, which the backup does not hold"):
        restore(str(tmp_path / "bk2"), Settings(data_dir=str(tmp_path / "n3")))
