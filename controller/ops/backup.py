"""Backups of a data directory, and restoring one (on this machine or another).

A backup is a directory (0700, its files 0600)::

    manifest.json   written last: format, versions, time, schema versions, audit head,
                    counts, and the size and SHA-256 of every other file
    store/          a RocksDB checkpoint of the store: one consistent point in time, taken
                    while the controller runs (it opens as a store as it is)
    secret.key      the key that seals credentials; absent when it is the secret_key setting
    pki/            the CA (ca.crt, ca.key) and the certificates made from it
    recordings/     shell recordings

The checkpoint is made inside the data directory (RocksDB hard-links the immutable table
files: instant, no copy while the store is held) and then copied out, so a backup never
shares files with the live store. :func:`make_backup` is called by the running controller
(through the admin socket: RocksDB has one writer) or by the CLI on a stopped one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from controller.errors import OvercastError
from controller.ops.owner import give_back
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Store
from controller.store.docs import stored_versions
from overcast import __version__

FORMAT = 1  # of the backup directory; a restore refuses a newer one
MANIFEST = "manifest.json"
COUNTED = ("user", "org", "agent", "cloud", "machine", "key", "script", "tunnel")
# what a data directory holds that a backup carries, and a restore puts back
PARTS = ("store", "secret.key", "pki", "recordings")
_CHUNK = 1024 * 1024


class BackupError(OvercastError):
    """The backup cannot be made or restored (says why, and what to do)."""

    status = 400
    code = "backup"


def code_versions() -> dict[str, int]:
    """The schema version of every stored document kind this code knows."""
    from controller.services import DOC_KINDS

    return {k.name: k.version for k in DOC_KINDS}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_private(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` (made 0600, parents 0700); return the SHA-256 of what was
    written, computed from the bytes as they were copied."""
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    h = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o600)
    return h.hexdigest()


def _copy_tree(src: Path, dst: Path, files: dict[str, dict[str, Any]], root: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out = dst / path.relative_to(src)
            digest = _copy_private(path, out)
            files[out.relative_to(root).as_posix()] = {"size": out.stat().st_size,
                                                       "sha256": digest}
    for d in [dst, *(p for p in dst.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o700)


def _key_digest(settings: Settings) -> tuple[str, str]:
    """(where the secret key comes from: "setting", "file" or "none", its SHA-256)."""
    import base64
    import binascii

    if settings.secret_key:
        try:
            raw = base64.b64decode(settings.secret_key, validate=True)
        except (binascii.Error, ValueError):
            raise BackupError("the secret_key setting is not base64") from None
        return "setting", hashlib.sha256(raw).hexdigest()
    path = Path(settings.data_dir) / "secret.key"
    if not path.is_file():
        return "none", ""
    return "file", hashlib.sha256(base64.b64decode(path.read_bytes().strip())).hexdigest()


def _prepare_target(dest: Path, data_dir: Path) -> bool:
    """Make ``dest`` (0700); True when it was made here. Refuse one that has files in it, or
    that lies inside the data directory (a backup there is lost with it)."""
    if not dest.is_absolute():
        raise BackupError(f"the backup directory must be an absolute path, got {dest}")
    if dest.resolve() == data_dir.resolve() or data_dir.resolve() in dest.resolve().parents:
        raise BackupError(f"{dest} is inside the data directory {data_dir}: a backup there is "
                          "lost with it; choose a directory elsewhere (another disk, ideally)")
    if dest.exists():
        if not dest.is_dir():
            raise BackupError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise BackupError(f"{dest} is not empty: give a new or empty directory")
        os.chmod(dest, 0o700)
        return False
    try:
        dest.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise BackupError(f"cannot make {dest}: {exc.strerror or exc}") from None
    os.chmod(dest, 0o700)
    return True


def _summary_of(store_dir: Path) -> dict[str, Any]:
    """Schema versions, audit head and counts, read from the checkpoint itself (the live
    store has moved on since)."""
    store = open_store(store_dir, "ro")
    try:
        head = json.loads(store.get("meta/audit/head") or b'{"seq": 0, "hash": ""}')
        return {"schema": stored_versions(store),
                "audit_head": {"seq": int(head["seq"]), "hash": str(head["hash"])},
                "counts": {k: store.count(f"{k}/") for k in COUNTED}}
    finally:
        store.close()


def make_backup(store: Store, settings: Settings, target: str, online: bool) -> dict[str, Any]:
    """Back up the data directory of ``settings`` with ``store`` (open for writing: the
    controller's own, or the CLI's on a stopped controller) into ``target``. Blocks (a flush,
    copies, checksums): call it in a thread from the event loop. Raises BackupError; leaves
    nothing behind on failure."""
    t0 = time.monotonic()
    data_dir = Path(settings.data_dir)
    dest = Path(target)
    made = _prepare_target(dest, data_dir)
    staging = data_dir / f".backup-{uuid.uuid4().hex[:12]}"
    try:
        try:
            store.checkpoint(str(staging))
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
            raise BackupError(f"the store checkpoint failed: {exc}") from None
        files: dict[str, dict[str, Any]] = {}
        _copy_tree(staging, dest / "store", files, dest)
        shutil.rmtree(staging, ignore_errors=True)
        key_source, key_sha = _key_digest(settings)
        if key_source == "file":
            src = data_dir / "secret.key"
            files["secret.key"] = {"size": src.stat().st_size,
                                   "sha256": _copy_private(src, dest / "secret.key")}
        for part in ("pki", "recordings"):
            if (data_dir / part).is_dir():
                _copy_tree(data_dir / part, dest / part, files, dest)
        ca = dest / "pki" / "ca.crt"
        manifest = {
            "format": FORMAT, "overcast_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(), "data_dir": str(data_dir), "online": online,
            **_summary_of(dest / "store"),
            "code_schema": code_versions(),
            "secret_key": {"source": key_source, "sha256": key_sha},
            "ca_fingerprint": _ca_fingerprint(ca),
            "tls_cert": settings.tls_cert,  # the operator's own certificate: not copied
            "files": dict(sorted(files.items())),
        }
        tmp = dest / (MANIFEST + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest / MANIFEST)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for p in dest.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        raise
    size = sum(int(f["size"]) for f in files.values()) + (dest / MANIFEST).stat().st_size
    return {"dir": str(dest), "bytes": size, "files": len(files) + 1,
            "seconds": round(time.monotonic() - t0, 3), **_brief(manifest)}


def _ca_fingerprint(path: Path) -> str:
    from controller.pki import fingerprint

    try:
        return "sha256:" + fingerprint(path.read_bytes())
    except (OSError, ValueError):  # none yet, or damaged: the backup carries what there is
        return ""


def _brief(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("created", "host", "online", "overcast_version", "audit_head", "counts",
            "ca_fingerprint", "secret_key", "schema")
    return {k: manifest[k] for k in keys if k in manifest}


# ---- checking and restoring -------------------------------------------------------------

def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src``, checked for shape and format; BackupError."""
    path = src / MANIFEST
    if not src.is_dir():
        raise BackupError(f"{src} is not a directory")
    if not path.is_file():
        raise BackupError(f"no {MANIFEST} in {src}: not an Overcast backup, or one that did "
                          "not finish (the manifest is written last)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        fmt = int(manifest["format"])
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{path} is not a backup manifest (damaged?)") from None
    if fmt > FORMAT:
        raise BackupError(f"the backup in {src} has format {fmt}, made by Overcast "
                          f"{manifest.get('overcast_version', '?')}; this one ({__version__}) "
                          f"reads format {FORMAT} and older: restore it with that version")
    if not isinstance(files, dict) or not any(k.startswith("store/") for k in files):
        raise BackupError(f"{path} lists no store files: not a complete backup")
    for rel in files:
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or p.parts[0] not in PARTS:
            raise BackupError(f"{path} names a file outside the backup ({rel!r}): refused")
    return dict(manifest)


def verify_backup(src: Path) -> dict[str, Any]:
    """Check every file the manifest lists (present, size, SHA-256) and that its schema is
    not newer than this code's; return the manifest. BackupError names what does not match."""
    manifest = read_manifest(src)
    bad: list[str] = []
    for rel, want in manifest["files"].items():
        p = src / rel
        if not p.is_file():
            bad.append(f"{rel} is missing")
        elif p.stat().st_size != int(want["size"]) or sha256_file(p) != want["sha256"]:
            bad.append(f"{rel} does not match its checksum")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise BackupError(f"the backup in {src} is damaged: {'; '.join(bad[:5])}{more}; "
                          "nothing was restored")
    known = code_versions()
    newer = [f"{k} {v} (this version knows {known[k]})"
             for k, v in sorted(manifest.get("schema", {}).items()) if k in known and v > known[k]]
    if newer:
        raise BackupError(f"the backup was made by a newer Overcast "
                          f"({manifest.get('overcast_version', '?')}): schema versions "
                          f"{', '.join(newer)}; restore it with that version or newer")
    return manifest


def _existing(data_dir: Path) -> list[Path]:
    """What in ``data_dir`` a restore would replace (a settings file there is kept)."""
    if not data_dir.exists():
        return []
    return [p for p in data_dir.iterdir() if p.name != "controller.toml"]


def _check_key(manifest: dict[str, Any], settings: Settings) -> None:
    import base64
    import binascii

    want = manifest.get("secret_key", {})
    if not settings.secret_key:
        if want.get("source") == "setting":
            raise BackupError("the backed-up controller took its secret key from the secret_key "
                              "setting, which the backup does not hold: set secret_key "
                              "(OVERCAST_SECRET_KEY) here to the same value, then restore")
        return
    try:
        have = hashlib.sha256(base64.b64decode(settings.secret_key, validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        raise BackupError("the secret_key setting is not base64") from None
    if want.get("sha256") and have != want["sha256"]:
        raise BackupError("the secret_key setting here is not the backup's key: stored "
                          "credentials would not open. Unset it (the backup's secret.key is "
                          "restored) or set it to the backed-up controller's key")


def _check_not_running(data_dir: Path) -> None:
    """Refuse while a process holds the store in ``data_dir`` (a controller runs on it)."""
    from controller.store import StoreLocked

    if not (data_dir / "store").is_dir():
        return
    try:
        open_store(data_dir / "store", "rw").close()
    except StoreLocked:
        raise BackupError(f"a controller is running on {data_dir} (its store is locked): stop "
                          "it before restoring into that directory") from None
    except Exception:  # noqa: BLE001 - a damaged store is what a restore is for
        return


def restore(source: str, settings: Settings, force: bool = False) -> dict[str, Any]:
    """Restore the backup in ``source`` into the data directory of ``settings``, which no
    controller may be running on. Refuses a damaged or newer backup, and a data directory
    with data in it unless ``force`` (its old contents are then moved to
    ``<data_dir>/replaced-<time>/``, not deleted). Blocks. Raises BackupError."""
    t0 = time.monotonic()
    src = Path(source)
    manifest = verify_backup(src)
    _check_key(manifest, settings)
    data_dir = Path(settings.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"the data directory {data_dir} is not a directory")
    if data_dir.resolve() == src.resolve() or src.resolve() in data_dir.resolve().parents:
        raise BackupError(f"the data directory {data_dir} is the backup itself or inside it")
    _check_not_running(data_dir)
    old = _existing(data_dir)
    if old and not force:
        raise BackupError(f"the data directory {data_dir} is not empty (it has "
                          f"{', '.join(sorted(p.name for p in old)[:5])}): restore into a new "
                          "directory, or give --force to move what is there aside")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    staging = data_dir / f".restore-{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=0o700)
    try:
        for rel, want in manifest["files"].items():
            if _copy_private(src / rel, staging / rel) != want["sha256"]:
                raise BackupError(f"{src / rel} changed while it was copied; nothing was restored")
        for d in [p for p in staging.rglob("*") if p.is_dir()]:
            os.chmod(d, 0o700)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = ""
    try:
        if old:
            # unique even for two restores within a second
            aside = data_dir / f"replaced-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            aside.mkdir(mode=0o700)
            for p in old:
                if p != staging:
                    p.rename(aside / p.name)
            replaced = str(aside)
        for part in PARTS:
            if (staging / part).exists():
                (staging / part).rename(data_dir / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        # restored as root into a service user's data directory: the files are that user's
        give_back(data_dir)
    notes = []
    if manifest.get("tls_cert"):
        notes.append(f"the backed-up controller served its own certificate {manifest['tls_cert']}"
                     " (not in the backup): set tls_cert and tls_key here")
    return {"data_dir": str(data_dir), "from": str(src), "replaced": replaced, "notes": notes,
            "seconds": round(time.monotonic() - t0, 3), **_brief(manifest)}
