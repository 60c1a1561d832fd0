"""Fetch a script's content once, bounded: an http(s) download (a .tar.gz archive or one
text script) or a shallow ``git`` clone packed into a deterministic .tar.gz (archives are
checked by :mod:`controller.scripts.archive`).

Only http and https are fetched: ``file://``, ``ssh://``, ``git://``, ``ext::`` and scp-like
``host:path`` are refused before anything runs. Which hosts may be reached is the caller's
``check`` (the controller's local-address policy, see :mod:`controller.clouds.targets`).
Limits are in :mod:`controller.scripts.model`."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from controller.errors import Invalid, OvercastError, ProviderError, TooLarge
from controller.exec.model import sha256_hex
from controller.scripts import model as m
from controller.scripts.archive import GZIP_MAGIC, check_archive, pack_tree

log = logging.getLogger(__name__)

_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_GITHUB_SHORT = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_REDIRECTS = (301, 302, 303, 307, 308)

Check = Callable[[str], Awaitable[None]]  # raises when the controller may not fetch a URL


class SourceUnreachable(ProviderError):
    """The script's URL or repository could not be reached (DNS, connection, timeout)."""

    retryable = True


@dataclass(frozen=True)
class Snapshot:
    """What was fetched: the script itself (``entrypoint`` "") or a .tar.gz archive."""

    content: bytes
    entrypoint: str = ""
    commit: str = ""

    @property
    def sha256(self) -> str:
        return sha256_hex(self.content)


# ---- what users give ---------------------------------------------------------------------
def redact(url: str) -> str:
    """``url`` without its user name and password (for views, messages and the audit log)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def check_url(url: str, what: str = "script") -> str:
    """``url`` stripped, when it is an http(s) URL with a host; else Invalid (field script)."""
    u = url.strip()
    if not u or len(u) > m.MAX_URL or any(c.isspace() or ord(c) < 32 for c in u):
        raise Invalid(f"{what} must be an http(s) URL of at most {m.MAX_URL} characters, "
                      "without spaces", field="script")
    parts = urlsplit(u)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or "::" in u.split("/", 1)[0]:
        given = f"{scheme}:" if scheme else "a path or host:path"
        raise Invalid(f"{what} must be an http:// or https:// URL, not {given} (file, ssh, git "
                      "and other transports are refused)", field="script")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid(f"{what} has a bad port: {redact(u)}", field="script") from None
    if not parts.hostname:
        raise Invalid(f"{what} has no host: {redact(u)}", field="script")
    return u


def parse_repo(value: str, location_type: str) -> tuple[str, str]:
    """(repository URL, ref) from ``URL[#ref]``; for ``github`` an ``owner/repo`` is
    https://github.com/owner/repo. Raises Invalid."""
    url, _, ref = value.strip().partition("#")
    if location_type == "github" and _GITHUB_SHORT.fullmatch(url):
        url = f"https://github.com/{url}"
    return check_url(url, "the repository"), check_ref(ref)


def check_ref(ref: str) -> str:
    ref = ref.strip()
    if ref and (not _REF.fullmatch(ref) or ".." in ref or "//" in ref
                or ref.endswith((".lock", "/", "."))):
        raise Invalid("the ref after # must be a branch, tag or commit id (letters, digits and "
                      "._/+-, not starting with -)", field="script")
    return ref


def check_entrypoint(path: str) -> str:
    """A relative path inside an archive or repository, normalised (no leading ./)."""
    p = path.strip()
    while p.startswith("./"):
        p = p[2:]
    if (not p or p.startswith("/") or "\x00" in p or len(p) > 1000
            or ".." in p.split("/")):
        raise Invalid("entrypoint must be a relative path inside the archive or repository "
                      "(no .. and no leading /)", field="entrypoint")
    return posixpath.normpath(p)


def check_text(data: bytes, source: str) -> bytes:
    """A single script must be text (UTF-8, no NUL): a binary is no script, and an HTML page
    served instead of one is at least readable in the review."""
    if not data.strip():
        raise Invalid(f"{source} is empty", field="script")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{source} is neither a .tar.gz archive nor a text script (not UTF-8)",
                      field="script") from None
    if b"\x00" in data:
        raise Invalid(f"{source} is neither a .tar.gz archive nor a text script (binary)",
                      field="script")
    return data


# ---- downloads ---------------------------------------------------------------------------
def _too_large(source: str) -> TooLarge:
    return TooLarge(f"{source} is larger than {m.MAX_ARCHIVE} bytes (the limit for a script)",
                    {"field": "script", "limit": m.MAX_ARCHIVE})


async def download(url: str, check: Check, source: str) -> bytes:
    """GET ``url`` (at most MAX_ARCHIVE bytes, DOWNLOAD_TIMEOUT seconds, no proxy, bytes as
    served: no transparent decompression). Redirects are followed by hand, at most
    MAX_REDIRECTS, and every URL goes through ``check`` first, so an allowed URL cannot
    bounce the controller to a refused one. Raises Invalid (an answer other than 200),
    TooLarge, SourceUnreachable, and what ``check`` raises."""
    current = url
    headers = {"Accept": "*/*", "Accept-Encoding": "identity", "User-Agent": "overcast-scripts"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=m.DOWNLOAD_TIMEOUT),
                                         auto_decompress=False, trust_env=False) as session:
            for _ in range(m.MAX_REDIRECTS + 1):
                await check(current)
                async with session.get(current, allow_redirects=False, headers=headers) as r:
                    if r.status in _REDIRECTS and r.headers.get("Location"):
                        current = check_url(urljoin(current, r.headers["Location"]),
                                            f"the redirect of {source}")
                        continue
                    if r.status != 200:
                        raise Invalid(f"{source} answered HTTP {r.status} {r.reason or ''}".strip(),
                                      field="script", status=r.status)
                    if r.content_length is not None and r.content_length > m.MAX_ARCHIVE:
                        raise _too_large(source)
                    data = bytearray()
                    async for chunk in r.content.iter_chunked(1 << 16):
                        data += chunk
                        if len(data) > m.MAX_ARCHIVE:
                            raise _too_large(source)
                    return bytes(data)
    except aiohttp.InvalidURL:
        raise Invalid(f"{source} is not a URL the controller can fetch", field="script") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = f"no answer in {m.DOWNLOAD_TIMEOUT:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
        raise SourceUnreachable(f"cannot reach {source}: {reason or exc.__class__.__name__}",
                                {"field": "script", "source": source}) from None
    raise Invalid(f"{source} redirects more than {m.MAX_REDIRECTS} times", field="script")


async def fetch_url(url: str, entrypoint: str, check: Check) -> Snapshot:
    """A script or .tar.gz archive from an http(s) URL. An archive (gzip data, a .tar.gz or
    .tgz URL, or an ``entrypoint`` given) needs ``entrypoint``; anything else must be a text
    script. Raises as :func:`download` and :func:`check_archive`."""
    source = redact(url)
    data = await download(url, check, source)
    path = urlsplit(url).path.lower()
    if data.startswith(GZIP_MAGIC) or entrypoint or path.endswith((".tar.gz", ".tgz")):
        names = await asyncio.to_thread(check_archive, data, entrypoint, source)
        if not entrypoint:
            raise Invalid(f"{source} is an archive: give entrypoint, the path of the file to run "
                          f"in it (it has: {', '.join(names[:10])})", field="entrypoint")
        return Snapshot(data, entrypoint)
    return Snapshot(check_text(data, source))


# ---- git ---------------------------------------------------------------------------------
def _git_options(follow_redirects: bool) -> list[str]:
    opts = {"credential.helper": "", "core.askPass": "", "protocol.allow": "never",
            "protocol.http.allow": "always", "protocol.https.allow": "always",
            "http.followRedirects": "initial" if follow_redirects else "false",
            "transfer.fsckObjects": "true", "core.hooksPath": os.devnull, "init.templateDir": "",
            "advice.detachedHead": "false", "submodule.recurse": "false",
            "fetch.recurseSubmodules": "false"}
    return [x for k, v in opts.items() for x in ("-c", f"{k}={v}")]


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue  # git renames its temporary files as it goes
    return total


def _run_git(git: str, args: list[str], cwd: Path, home: Path, deadline: float) -> str:
    """Run one ``git`` command with no configuration but ours and no prompts, killing it at
    ``deadline`` or when ``home`` grows past twice MAX_UNPACKED. Returns its stdout; raises
    subprocess.CalledProcessError (stderr as ``output``), TimeoutError, TooLarge."""
    env = {"PATH": os.path.dirname(git) + os.pathsep + os.defpath, "HOME": str(home),
           "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ALLOW_PROTOCOL": "http:https",
           "GIT_LFS_SKIP_SMUDGE": "1", "GIT_CEILING_DIRECTORIES": str(home)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([git, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
        try:
            for tick in itertools.count():
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                # the size is read less often than the process: walking a large tree costs
                if tick % 5 == 4 and _dir_size(home) > 2 * m.MAX_UNPACKED:
                    raise TooLarge(f"the repository is larger than {2 * m.MAX_UNPACKED} bytes",
                                   {"field": "script", "limit": 2 * m.MAX_UNPACKED})
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # git and its remote helper
                proc.wait()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, args[0],
                                                output=err.read().decode(errors="replace"))
        return out.read().decode(errors="replace")


def _git_error(text: str, url: str, source: str, ref: str) -> OvercastError:
    parts = urlsplit(url)
    for secret in (parts.password, parts.username):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = text.replace(url, source)
    low = text.lower()
    lines = [ln.removeprefix("fatal: ").strip() for ln in text.splitlines() if ln.strip()]
    if ref and ("remote branch" in low or "couldn't find remote ref" in low
                or "not our ref" in low or "unadvertised object" in low):
        return Invalid(f"{source} has no branch, tag or commit {ref!r}", field="script")
    if "returned error: 30" in low or "redirect" in low:
        return Invalid(f"{source} redirects elsewhere: give the repository's own URL",
                       field="script")
    if "could not read username" in low or "returned error: 401" in low or \
            "returned error: 403" in low or "authentication failed" in low:
        return Invalid(f"{source} refuses access: a private repository needs credentials in "
                       "the URL (https://USER:TOKEN@host/...)", field="script")
    if "not found" in low or "returned error: 404" in low:
        return Invalid(f"{source} is not a git repository (not found)", field="script", status=404)
    if any(w in low for w in ("could not resolve", "failed to connect", "couldn't connect",
                              "connection refused", "connection reset", "timed out", "ssl")):
        return SourceUnreachable(f"cannot reach {source}: {lines[-1] if lines else 'git failed'}",
                                 {"field": "script", "source": source})
    return Invalid(f"git cannot fetch {source}: {lines[-1] if lines else 'it failed'}",
                   field="script")


def clone(url: str, ref: str, entrypoint: str, follow_redirects: bool = False) -> Snapshot:
    """Shallow-clone ``url`` at ``ref`` (a branch or tag, a full commit id, or "" for the
    default branch) in a temporary directory, record the commit, and pack its files
    (:func:`pack_tree`) with ``entrypoint`` checked to be a file. Blocks for up to
    GIT_TIMEOUT seconds: call it in a thread. Raises Invalid, TooLarge, SourceUnreachable,
    and OvercastError when git is not installed."""
    git = shutil.which("git")
    if git is None:
        raise OvercastError("git is not installed on the controller's host: repositories "
                            "cannot be fetched")
    source, deadline = redact(url), time.monotonic() + m.GIT_TIMEOUT
    opts = _git_options(follow_redirects)
    with tempfile.TemporaryDirectory(prefix="overcast-git-") as tmp:
        home, work = Path(tmp), Path(tmp) / "tree"
        try:
            if _COMMIT.fullmatch(ref):  # a commit is fetched by id (GitHub and smart servers allow it)
                _run_git(git, ["init", "-q", "--template=", str(work)], home, home, deadline)
                _run_git(git, [*opts, "fetch", "-q", "--depth", "1", "--no-tags", "--", url, ref],
                         work, home, deadline)
                _run_git(git, [*opts, "checkout", "-q", "--detach", "FETCH_HEAD"], work, home, deadline)
            else:
                branch = ["--branch", ref] if ref else []
                _run_git(git, [*opts, "clone", "-q", "--depth", "1", "--no-tags", "--single-branch",
                               "--template=", *branch, "--", url, str(work)], home, home, deadline)
            commit = _run_git(git, ["rev-parse", "HEAD"], work, home, deadline).strip()
        except subprocess.CalledProcessError as exc:
            error = _git_error(str(exc.output), url, source, ref)
            log.debug("git failed for %s: %s", source, error.message)
            raise error from None
        except TimeoutError:
            raise SourceUnreachable(f"cannot fetch {source}: git took more than "
                                    f"{m.GIT_TIMEOUT:.0f} s", {"field": "script", "source": source}) from None
        shutil.rmtree(work / ".git")
        data = pack_tree(work)
    if len(data) > m.MAX_ARCHIVE:
        raise _too_large(source)
    check_archive(data, entrypoint, source)
    return Snapshot(data, entrypoint, commit)
