"""Fetching scripts from real servers on loopback: what users may give (http(s) only, refs,
entrypoints), shallow git clones at a branch, tag or commit packed the same way each time,
downloads with every redirect hop checked, and failures in words without credentials."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import Forbidden, Invalid, TooLarge
from controller.scripts import fetch, model
from controller.scripts.fetch import SourceUnreachable
from tests.support.gitserver import GitServer

RUN = "#!/bin/sh\necho hello\n"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path) as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in tar.getmembers()}


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ssh://git@example.com/x.git", "git://example.com/x.git",
    "ext::sh -c touch% /tmp/pwned", "git@github.com:owner/repo.git", "/srv/repo.git",
    "http://", "https://exa mple.com/x", "", "ftp://example.com/x.tar.gz", "http://h:99999/x"])
def test_only_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(Invalid) as e:
        fetch.check_url(url)
    assert e.value.details["field"] == "script"


def test_what_users_give() -> None:
    assert fetch.check_url(" https://example.com/a.tar.gz ") == "https://example.com/a.tar.gz"
    assert fetch.parse_repo("https://h/r.git#v1.2", "git") == ("https://h/r.git", "v1.2")
    assert fetch.parse_repo("mistio/mist-ce", "github") == ("https://github.com/mistio/mist-ce", "")
    with pytest.raises(Invalid):
        fetch.parse_repo("mistio/mist-ce", "git")  # only github has a short form
    for bad in ("--upload-pack=touch /tmp/x", "a..b", "-b", "x y", "main.lock"):
        with pytest.raises(Invalid, match="ref"):
            fetch.parse_repo(f"https://h/r.git#{bad}", "git")
    assert fetch.check_entrypoint("./bin/run.sh") == "bin/run.sh"
    for bad in ("/etc/passwd", "../x", "a/../../x", "", "  "):
        with pytest.raises(Invalid) as e:
            fetch.check_entrypoint(bad)
        assert e.value.details["field"] == "entrypoint"
    assert fetch.redact("https://u:p@h:8/x?q=1") == "https://h:8/x?q=1"
    assert fetch.redact("https://TOKEN@h/x") == "https://h/x"
    assert fetch.redact("https://h/x@y") == "https://h/x@y"


def test_clone_at_a_branch_a_tag_or_a_commit(srv: GitServer) -> None:
    url = srv.add_repo("tools", {"run.sh": RUN, "lib/util.sh": "u=1\n"}, executable=("run.sh",))
    first = srv.head("tools")
    snap = fetch.clone(url, "", "run.sh")
    assert snap.commit == first and snap.entrypoint == "run.sh"
    got = members(snap.content)
    assert got == {"lib": b"", "lib/util.sh": b"u=1\n", "run.sh": RUN.encode()}
    assert fetch.clone(url, "", "run.sh").content == snap.content  # the same bytes each time
    srv.tag("tools", "v1")
    dev = srv.commit("tools", {"run.sh": "#!/bin/sh\necho dev\n"}, branch="dev")
    second = srv.commit("tools", {"new.sh": "n\n"})
    assert fetch.clone(url, "main", "run.sh").commit == second
    assert members(fetch.clone(url, "dev", "run.sh").content)["run.sh"] == b"#!/bin/sh\necho dev\n"
    assert fetch.clone(url, "v1", "run.sh").content == snap.content
    at = fetch.clone(url, dev, "run.sh")
    assert at.commit == dev and "new.sh" not in members(at.content)
    with tarfile.open(fileobj=io.BytesIO(snap.content)) as tar:
        assert tar.getmember("run.sh").mode == 0o755 and tar.getmember("lib/util.sh").mode == 0o644


def test_clone_failures_are_in_words(srv: GitServer) -> None:
    url = srv.add_repo("tools", {"run.sh": RUN})
    with pytest.raises(Invalid, match="has no branch, tag or commit 'nope'"):
        fetch.clone(url, "nope", "run.sh")
    with pytest.raises(Invalid, match="has no branch, tag or commit"):
        fetch.clone(url, "0" * 40, "run.sh")
    with pytest.raises(Invalid, match="not found") as e:
        fetch.clone(f"http://someone:sekrit-token@127.0.0.1:{srv.url.rsplit(':', 1)[1]}/git/nope.git",
                    "", "run.sh")
    assert "sekrit" not in str(e.value.to_dict()) and "someone" not in e.value.message
    with pytest.raises(Invalid) as e:
        fetch.clone(url, "", "main.sh")
    assert e.value.details["field"] == "entrypoint" and "run.sh" in e.value.message
    with pytest.raises(SourceUnreachable, match="cannot reach"):
        fetch.clone(f"http://127.0.0.1:{closed_port()}/git/x.git", "", "run.sh")


def test_clone_is_bounded(srv: GitServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = srv.add_repo("big", {"run.sh": RUN, "blob.bin": os.urandom(100_000)})
    monkeypatch.setattr(model, "MAX_UNPACKED", 50_000)
    with pytest.raises(TooLarge):
        fetch.clone(url, "", "run.sh")
    monkeypatch.setattr(model, "MAX_UNPACKED", 10_000_000)
    monkeypatch.setattr(model, "MAX_ARCHIVE", 1000)
    with pytest.raises(TooLarge, match="larger than 1000 bytes"):
        fetch.clone(url, "", "run.sh")


async def allow(url: str) -> None:
    pass


async def test_download_follows_redirects_checking_each_hop(srv: GitServer) -> None:
    target = srv.add_file("/files/run.sh", RUN.encode())
    hop = srv.redirect("/r2", "/files/run.sh")
    first = srv.redirect("/r1", hop)
    asked: list[str] = []

    async def check(url: str) -> None:
        asked.append(url)
        if url.endswith("/files/run.sh") and refuse:
            raise Forbidden("refused")

    refuse = False
    assert await fetch.download(first, check, "src") == RUN.encode()
    assert asked == [first, hop, target]
    refuse = True
    with pytest.raises(Forbidden):
        await fetch.download(first, check, "src")


async def test_download_failures(srv: GitServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Invalid, match="answered HTTP 404") as e:
        await fetch.download(srv.url + "/missing.tar.gz", allow, "the URL")
    assert e.value.details == {"field": "script", "status": 404}
    loop = srv.redirect("/loop", "/loop")
    with pytest.raises(Invalid, match="redirects more than"):
        await fetch.download(loop, allow, "the URL")
    with pytest.raises(SourceUnreachable, match="cannot reach the URL"):
        await fetch.download(f"http://127.0.0.1:{closed_port()}/x", allow, "the URL")
    big = srv.add_file("/big", b"x" * 5000)
    monkeypatch.setattr(model, "MAX_ARCHIVE", 4096)
    with pytest.raises(TooLarge) as t:
        await fetch.download(big, allow, "the URL")
    assert t.value.details["limit"] == 4096


async def test_fetch_url_takes_a_script_or_an_archive(srv: GitServer) -> None:
    script = srv.add_file("/run.sh", RUN.encode())
    snap = await fetch.fetch_url(script, "", allow)
    assert snap.content == RUN.encode() and snap.entrypoint == ""
    archive = fetch.clone(srv.add_repo("a", {"bin/run.sh": RUN}), "", "bin/run.sh").content
    tgz = srv.add_file("/a.tar.gz", archive)
    snap = await fetch.fetch_url(tgz, "bin/run.sh", allow)
    assert snap.content == archive and snap.entrypoint == "bin/run.sh"
    with pytest.raises(Invalid, match="give entrypoint.*bin/run.sh") as e:
        await fetch.fetch_url(tgz, "", allow)
    assert e.value.details["field"] == "entrypoint"
    fake = srv.add_file("/fake.tar.gz", b"<html>not found</html>")
    with pytest.raises(Invalid, match="not a .tar.gz archive"):
        await fetch.fetch_url(fake, "bin/run.sh", allow)
    binary = srv.add_file("/tool", b"\x7fELF\x00\x01")
    with pytest.raises(Invalid, match="neither a .tar.gz archive nor a text script"):
        await fetch.fetch_url(binary, "", allow)


def test_git_redirects_only_when_local_targets_are_allowed(srv: GitServer) -> None:
    url = srv.add_repo("moved", {"run.sh": RUN})
    srv.redirect("/old.git/info/refs", url + "/info/refs?service=git-upload-pack")
    # the policy cannot check where git is sent, so git is not sent anywhere else
    with pytest.raises(Invalid, match="redirects elsewhere"):
        fetch.clone(srv.url + "/old.git", "", "run.sh", follow_redirects=False)
    assert fetch.clone(srv.url + "/old.git", "", "run.sh", follow_redirects=True).commit == srv.head("moved")
