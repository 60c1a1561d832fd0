"""Archives of scripts: members that would land outside the directory they are unpacked in
are refused (absolute paths, .., links out or through links, devices), limits hold, and a
tree packs to the same bytes whatever its files' times, owners or umask."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from controller.errors import Invalid, TooLarge
from controller.scripts import archive, model
from controller.scripts.archive import check_archive, pack_tree


def tgz(*members: tuple[str, str | bytes], links: dict[str, str] | None = None,
        hard: dict[str, str] | None = None, special: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members:
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind, table in ((tarfile.SYMTYPE, links or {}), (tarfile.LNKTYPE, hard or {})):
            for name, target in table.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
        for name in special:
            info = tarfile.TarInfo(name)
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
    return buf.getvalue()


def test_a_good_archive_lists_its_members() -> None:
    data = tgz(("./run.sh", "#!/bin/sh\n"), ("lib/a.sh", "a"), links={"lib/b.sh": "a.sh"},
               hard={"run2.sh": "run.sh"})
    assert check_archive(data, "run.sh", "x") == ["lib/a.sh", "lib/b.sh", "run.sh", "run2.sh"]
    assert check_archive(data, "", "x")  # no entrypoint asked for


@pytest.mark.parametrize("data, words", [
    (tgz(("../evil", "x"), ("run.sh", "")), "outside its directory"),
    (tgz(("/etc/cron.d/evil", "x"), ("run.sh", "")), "outside its directory"),
    (tgz(("a/../../evil", "x"), ("run.sh", "")), "outside its directory"),
    (tgz(("run.sh", ""), links={"up": "../.."}), "points outside"),
    (tgz(("run.sh", ""), links={"etc": "/etc"}), "points outside"),
    (tgz(("run.sh", ""), links={"a/b": "../../x"}), "points outside"),
    (tgz(("run.sh", ""), hard={"passwd": "/etc/passwd"}), "points outside"),
    (tgz(("run.sh", ""), hard={"x": "../../x"}), "points outside"),
    # a link inside, then a member through it: l -> . and l/up -> .. would reach the parent
    (tgz(("l/up", "x"), links={"l": "."}), "behind a link"),
    (tgz(("run.sh", ""), ("here/f", "x"), links={"here": "."}), "lies behind a link"),
    (tgz(("run.sh", ""), special=("dev",)), "device"),
    (tgz(("run.sh", "a"), ("run.sh", "b")), "twice"),
])
def test_members_that_escape_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(Invalid) as e:
        check_archive(data, "run.sh", "x")
    assert words in e.value.message


def test_a_link_followed_by_a_member_through_it_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("sub")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        tar.addfile(link)
        f = tarfile.TarInfo("sub/x.sh")
        tar.addfile(f, io.BytesIO(b""))
    with pytest.raises(Invalid, match="lies behind a link"):
        check_archive(buf.getvalue(), "", "x")


def test_not_archives_and_missing_entrypoints_are_refused() -> None:
    with pytest.raises(Invalid, match="no gzip header"):
        check_archive(b"#!/bin/sh\necho hi\n", "run.sh", "u")
    with pytest.raises(Invalid, match="not a valid .tar.gz"):
        check_archive(gzip.compress(b"just text, not a tar" * 40), "run.sh", "u")
    with pytest.raises(Invalid, match="not a valid .tar.gz"):
        check_archive(tgz(("run.sh", os.urandom(20_000)))[:5000], "run.sh", "u")  # cut short
    with pytest.raises(Invalid, match="empty archive"):
        check_archive(tgz(), "", "u")
    with pytest.raises(Invalid) as e:
        check_archive(tgz(("run.sh", ""), ("lib/a", "")), "main.sh", "u")
    assert e.value.details["field"] == "entrypoint" and e.value.details["files"] == ["lib/a", "run.sh"]
    assert "lib/a, run.sh" in e.value.message
    with pytest.raises(Invalid, match="not a file"):  # a directory is no entrypoint
        check_archive(tgz(("lib/a", "")), "lib", "u")


def test_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "MAX_MEMBERS", 3)
    with pytest.raises(TooLarge, match="more than 3 members"):
        check_archive(tgz(*((f"f{i}", "") for i in range(4))), "", "u")
    monkeypatch.setattr(model, "MAX_UNPACKED", 1000)
    with pytest.raises(TooLarge, match="unpacks to more than 1000"):
        check_archive(tgz(("a", "x" * 600), ("b", "x" * 600)), "", "u")


def _tree(root: Path, umask: int) -> Path:
    old = os.umask(umask)
    try:
        (root / "lib").mkdir(parents=True)
        (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (root / "run.sh").chmod(0o777 & ~umask)
        (root / "lib" / "b.txt").write_text("b")
        (root / "lib" / "a.txt").write_text("a")
        (root / "link").symlink_to("lib/a.txt")
        (root / ".git").mkdir()
        (root / ".git" / "config").write_text("[core]\n")
        (root / "lib" / ".gitkeep").write_text("")
    finally:
        os.umask(old)
    return root


def test_packing_is_deterministic(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", 0o022)
    two = _tree(tmp_path / "two", 0o002)
    for i, p in enumerate(sorted(two.rglob("*"))):
        os.utime(p, (1_000_000 + i, 1_000_000 + i), follow_symlinks=False)
    a, b = pack_tree(one), pack_tree(two)
    assert a == b and a == pack_tree(one)
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["lib", "lib/.gitkeep", "lib/a.txt", "lib/b.txt", "link", "run.sh"]
    assert members["run.sh"].mode == 0o755 and members["lib/a.txt"].mode == 0o644
    assert members["link"].issym() and members["link"].linkname == "lib/a.txt"
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members.values())
    assert check_archive(a, "run.sh", "x")
    (two / "lib" / "a.txt").write_text("changed")
    assert pack_tree(two) != a


def test_packing_refuses_a_link_out_and_bounds_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "run.sh").write_text("x" * 2000)
    (root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(Invalid, match="points outside"):
        check_archive(pack_tree(root), "run.sh", "repo")
    monkeypatch.setattr(model, "MAX_UNPACKED", 1000)
    with pytest.raises(TooLarge):
        pack_tree(root)
    assert archive.GZIP_MAGIC == b"\x1f\x8b"
