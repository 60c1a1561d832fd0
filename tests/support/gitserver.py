"""A git and file server on loopback for tests: real repositories (made with the ``git``
command in a temporary directory) served over HTTP by ``git http-backend`` (the smart
protocol, so shallow clones and fetching one commit work as on GitHub), plus plain files,
redirects and 404 for everything else.

    with GitServer(tmp_path) as srv:
        url = srv.add_repo("tools", {"run.sh": "#!/bin/sh\\necho hi\\n"}, executable=("run.sh",))
        commit = srv.commit("tools", {"run.sh": "#!/bin/sh\\necho bye\\n"})
        srv.tag("tools", "v1")
        tarball = srv.add_file("/files/tools.tar.gz", data)
        srv.requests  # every path asked for, in order

Every ``git`` command runs in the server's own directory, with no user or system
configuration; nothing here touches the repository the tests live in."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

GIT = shutil.which("git") or "git"
_IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
             "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def git_env(home: Path) -> dict[str, str]:
    """An environment for ``git`` that reads no user or system configuration."""
    return {"PATH": os.defpath + os.pathsep + os.path.dirname(GIT), "HOME": str(home),
            "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0", "GIT_CEILING_DIRECTORIES": str(home.parent), **_IDENTITY}


class GitServer:
    """Serves ``/git/<name>.git`` (repositories), files added with :meth:`add_file`, and
    redirects added with :meth:`redirect`, on 127.0.0.1. Use as a context manager (or call
    :meth:`start` and :meth:`stop`). Methods block while ``git`` runs; they raise
    ``subprocess.CalledProcessError`` when it fails."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "gitserver"
        self.work = self.root / "work"
        self.served = self.root / "srv"
        self.work.mkdir(parents=True, exist_ok=True)
        self.served.mkdir(exist_ok=True)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> GitServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---- content --------------------------------------------------------------------------
    def add_file(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``data`` at ``path`` (e.g. ``/files/x.tar.gz``); return its URL."""
        path = "/" + path.lstrip("/")
        self.files[path] = (data, content_type)
        return self.url + path

    def redirect(self, path: str, to: str) -> str:
        """Answer ``path`` with a 302 to ``to``; return the URL of ``path``."""
        path = "/" + path.lstrip("/")
        self.redirects[path] = to
        return self.url + path

    def repo_url(self, name: str) -> str:
        return f"{self.url}/git/{name}.git"

    def add_repo(self, name: str, files: Mapping[str, str | bytes],
                 executable: Iterable[str] = (), message: str = "first") -> str:
        """A new repository with one commit of ``files`` (path -> content) on ``main``;
        ``executable`` paths get mode 755 (others 644). Return the URL to clone."""
        work = self.work / name
        work.mkdir(parents=True)
        self._git(work, "init", "-q", "-b", "main")
        self._write(work, files, executable)
        self._git(work, "add", "-A")
        self._git(work, "commit", "-q", "-m", message)
        bare = self.served / f"{name}.git"
        self._git(self.served, "clone", "-q", "--bare", str(work), str(bare))
        self._git(bare, "config", "uploadpack.allowAnySHA1InWant", "true")
        self._git(bare, "config", "http.uploadpack", "true")
        self._git(work, "remote", "add", "origin", str(bare))
        self._publish(name)
        return self.repo_url(name)

    def commit(self, name: str, files: Mapping[str, str | bytes], executable: Iterable[str] = (),
               delete: Iterable[str] = (), branch: str = "main", message: str = "change") -> str:
        """Commit ``files`` (and remove ``delete``) on ``branch`` (made from the current
        commit when new), publish it, and return the new commit id."""
        work = self.work / name
        branches = self._git(work, "branch", "--list", branch)
        self._git(work, "checkout", "-q", *(() if branches.strip() else ("-b",)), branch)
        self._write(work, files, executable)
        for path in delete:
            (work / path).unlink()
        self._git(work, "add", "-A")
        self._git(work, "commit", "-q", "--allow-empty", "-m", message)
        commit = self.head(name)
        self._git(work, "checkout", "-q", "main")
        self._publish(name)
        return commit

    def tag(self, name: str, tag: str, ref: str = "main") -> str:
        """Tag ``ref`` (a branch or commit) as ``tag``; return the tagged commit id."""
        work = self.work / name
        self._git(work, "tag", tag, ref)
        self._publish(name)
        return self._git(work, "rev-parse", f"{tag}^{{commit}}").strip()

    def head(self, name: str, branch: str = "") -> str:
        """The commit id ``branch`` (default: the checked-out one) points at."""
        return self._git(self.work / name, "rev-parse", branch or "HEAD").strip()

    # ---- internals ------------------------------------------------------------------------
    def _write(self, work: Path, files: Mapping[str, str | bytes], executable: Iterable[str]) -> None:
        for path, content in files.items():
            f = work / path
            f.parent.mkdir(parents=True, exist_ok=True)
            new = not f.exists()
            f.write_bytes(content.encode() if isinstance(content, str) else content)
            if new:
                f.chmod(0o644)  # a changed file keeps its mode
        for path in executable:
            (work / path).chmod(0o755)

    def _publish(self, name: str) -> None:
        work = self.work / name
        self._git(work, "push", "-q", "--force", "--all", "origin")
        self._git(work, "push", "-q", "--force", "--tags", "origin")
        self._git(self.served / f"{name}.git", "update-server-info")

    def _git(self, cwd: Path, *args: str) -> str:
        return subprocess.run([GIT, *args], cwd=cwd, env=git_env(self.root), check=True,
                              capture_output=True, text=True, timeout=60).stdout

    def _backend(self, method: str, path: str, query: str, headers: Mapping[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One CGI call of ``git http-backend`` (``headers`` with lower-case names):
        (status, headers, body)."""
        env = dict(git_env(self.root), GIT_PROJECT_ROOT=str(self.served), GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_TYPE=headers.get("content-type", ""), CONTENT_LENGTH=str(len(body)),
                   REMOTE_ADDR="127.0.0.1", GATEWAY_INTERFACE="CGI/1.1", SERVER_PROTOCOL="HTTP/1.1")
        if headers.get("git-protocol"):
            env["GIT_PROTOCOL"] = headers["git-protocol"]
        if headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = headers["content-encoding"]
        out = subprocess.run([GIT, "http-backend"], input=body, env=env, capture_output=True,
                             timeout=60).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, hdrs = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                hdrs.append((k.strip(), v.strip()))
        return status, hdrs, payload


def _handler(srv: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: srv.requests has the paths

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            srv.requests.append(path)
            body = self._body() if self.command == "POST" else b""
            if path.startswith("/git/"):
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._answer(*srv._backend(self.command, path[4:], query, headers, body))
            elif path in srv.redirects:
                self._answer(302, [("Location", srv.redirects[path])], b"")
            elif path in srv.files and self.command in ("GET", "HEAD"):
                data, ctype = srv.files[path]
                self._answer(200, [("Content-Type", ctype)], data)
            else:
                self._answer(404, [("Content-Type", "text/plain")], b"not found\n")

        do_GET = do_POST = do_HEAD = _serve

    return Handler
