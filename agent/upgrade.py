"""Upgrading the agent through its stream: the controller sends Upgrade (the package's URL,
version and SHA-256, and where the dependencies are); the agent installs it into its own
virtual environment and answers UpgradeResult, then starts again as the new code (the
same process: ``agent.main`` execs itself, keeping its identity, spool and process id, so
neither systemd nor a foreground supervisor sees it go).

The running agent loads this module only when an Upgrade arrives, and the work is done by
a child process (``python -m agent.upgrade``): downloading over HTTPS needs Python's ssl,
which the running agent does not load (``agent.main``), and pip is a child anyway. The
child downloads the package with the controller's CA (from the state directory), checks its
SHA-256, and runs ``<venv>/bin/python -m pip install``: first from the controller's wheels
alone (``--no-index --find-links``: hosts without the package index), else from the
package index with the controller's wheels beside it; then once more with
``--no-deps --force-reinstall`` so that the files are the package's even when the
installed copy says it has that version already. It prints one JSON line at the end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overcast.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

UPGRADE_TIMEOUT = 900.0  # seconds for download and installs (cryptography from an index...)
PIP_TIMEOUT = 600.0      # seconds for one pip run
OUTPUT_LINES = 20        # of pip's output, kept for the controller's audit on failure


class UpgradeError(Exception):
    """The upgrade failed; the message says why, in words."""


CANNOT_WRITE = "this agent cannot write its environment; re-run the install script as root to upgrade"


def own_environment() -> str:
    """Why this agent cannot upgrade itself, in words ("" when it can): only an agent
    installed into a virtual environment of its own (by the install script) can, and only
    when it may write that environment. A source tree or a system-wide install is upgraded
    the way it was installed; an agent the script installed with ``--user`` runs as
    overcast-agent from an environment that stays root's (so that the agent cannot change
    what root runs when the script runs again): the script, run again as root, upgrades it."""
    import agent

    if sys.prefix == sys.base_prefix:
        return ("this agent does not run from a virtual environment of its own: upgrade it "
                "the way it was installed")
    here = Path(agent.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    if prefix not in here.parents:
        return (f"this agent's code ({here.parent}) is not installed in its environment "
                f"({sys.prefix}): upgrade it the way it was installed")
    # what pip writes: the package's directory, site-packages (new packages, dist-info), bin
    for d in (here.parent, here.parent.parent, prefix / "bin", prefix):
        if not os.access(d, os.W_OK):
            return f"{CANNOT_WRITE} ({d} is not writable to it)"
    return ""


class Upgrader:
    """In the running agent: one upgrade at a time, answered on the stream through ``send``;
    ``restart`` is called once the new code is installed and the answer sent."""

    def __init__(self, state_dir: Path, send: Callable[[pb.AgentMessage], Awaitable[None]],
                 restart: Callable[[], None]) -> None:
        self.state_dir = state_dir
        self.send = send
        self.restart = restart
        self.task: asyncio.Task[None] | None = None
        self._refusals: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def start(self, msg: pb.Upgrade) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and not self.task.done():
            # the running one answers for itself; this one is refused
            self._refusals.add(loop.create_task(self._answer(
                msg.request_id, False, "an upgrade is running already", "")))
            self._refusals = {t for t in self._refusals if not t.done()}
            return
        self.task = loop.create_task(self._run(msg), name="upgrade")

    async def _answer(self, request_id: str, ok: bool, error: str, output: str,
                      version: str = "") -> None:
        from overcast.agent.v1 import agent_pb2 as pb

        await self.send(pb.AgentMessage(upgrade_result=pb.UpgradeResult(
            request_id=request_id, ok=ok, error=error, version=version, output=output[-4000:])))

    async def _run(self, msg: pb.Upgrade) -> None:
        why = own_environment()
        if why:
            log.warning("upgrade to %s refused: %s", msg.version, why)
            await self._answer(msg.request_id, False, why, "")
            return
        log.info("upgrading to %s from %s", msg.version, msg.package_url)
        argv = [sys.executable, "-m", "agent.upgrade", "--state-dir", str(self.state_dir),
                "--package-url", msg.package_url, "--sha256", msg.sha256,
                "--version", msg.version, "--find-links", msg.find_links]
        try:
            out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                          timeout=UPGRADE_TIMEOUT, stdin=subprocess.DEVNULL,
                                          check=False)
            result = _last_json(out.stdout) or {
                "ok": False, "error": f"the installer exited {out.returncode}",
                "output": out.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            result = {"ok": False, "error": f"the upgrade took more than {UPGRADE_TIMEOUT:.0f} s"}
        except OSError as exc:
            result = {"ok": False, "error": f"cannot start the installer: {exc}"}
        if not result.get("ok"):
            log.warning("upgrade to %s failed: %s", msg.version, result.get("error"))
            await self._answer(msg.request_id, False, str(result.get("error", "")),
                               str(result.get("output", "")))
            return
        await self._answer(msg.request_id, True, "", str(result.get("output", "")),
                           str(result.get("version", msg.version)))
        log.info("upgraded to %s: restarting", result.get("version"))
        await asyncio.sleep(0.2)  # let the answer leave before the stream closes
        self.restart()


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


# ---- the child: download, check, install ---------------------------------------------------

def _controller_url(state_dir: Path) -> str:
    try:
        url = json.loads((state_dir / "agent.json").read_text()).get("controller_url", "")
    except (OSError, ValueError):
        url = ""
    if not url:
        raise UpgradeError(f"{state_dir}/agent.json names no controller: enrol first")
    return str(url).rstrip("/")


def _download(url: str, ca_file: Path, dest: Path) -> None:
    """``url`` into ``dest``, verified with the controller's own CA (or, for a certificate
    the operator got elsewhere, the system's trust store)."""
    import ssl
    import urllib.error
    import urllib.request

    contexts: list[ssl.SSLContext | None] = [None]
    if url.startswith("https://"):
        contexts = [ssl.create_default_context(cafile=str(ca_file)), ssl.create_default_context()]
    last: Exception | None = None
    for ctx in contexts:
        try:
            with urllib.request.urlopen(url, timeout=60, context=ctx) as r:  # noqa: S310
                dest.write_bytes(r.read())
            return
        except urllib.error.HTTPError as exc:
            raise UpgradeError(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            if not isinstance(getattr(exc, "reason", None), ssl.SSLCertVerificationError):
                break
    raise UpgradeError(f"cannot download {url}: {getattr(last, 'reason', last)}")


def _trust_bundle(ca_file: Path, dest: Path) -> Path:
    """The system's CAs and the controller's in one file, for pip runs that reach both the
    package index and the controller."""
    import ssl

    paths = ssl.get_default_verify_paths()
    parts = []
    for name in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt",
                 "/etc/pki/tls/certs/ca-bundle.crt"):
        if name and os.path.isfile(name):
            parts.append(Path(name).read_bytes())
            break
    parts.append(ca_file.read_bytes())
    dest.write_bytes(b"\n".join(parts))
    return dest


def pip_options(url: str, find_links: str, cert: Path | None) -> list[str]:
    """How pip reaches the controller's wheels at ``find_links``: with ``cert`` for https,
    and, for a plain-http controller (tests, loopback), naming it a trusted host (pip
    otherwise ignores http indexes that are not on loopback)."""
    from urllib.parse import urlsplit

    opts = ["--find-links", find_links] if find_links else []
    if url.startswith("http://"):
        opts += ["--trusted-host", urlsplit(url).netloc]
    elif cert is not None:
        opts += ["--cert", str(cert)]
    return opts


def _pip(args: list[str], log_lines: list[str]) -> bool:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
            "--no-cache-dir", "install", *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        log_lines.append(f"pip took more than {PIP_TIMEOUT:.0f} s")
        return False
    log_lines.extend((out.stdout + out.stderr).strip().splitlines()[-OUTPUT_LINES:])
    return out.returncode == 0


def install(state_dir: Path, package_url: str, sha256: str, version: str,
            find_links: str, work: Path) -> tuple[str, list[str]]:
    """Download, check and install the package (see the module's docstring); returns the
    version now installed and pip's last lines. Raises UpgradeError."""
    import hashlib
    from urllib.parse import urljoin, urlsplit

    base = _controller_url(state_dir) + "/"
    url = urljoin(base, package_url)  # relative: to the URL this agent enrolled with
    name = Path(urlsplit(url).path).name
    if not name.endswith(".whl"):
        raise UpgradeError(f"{url} is not a wheel")
    ca_file = state_dir / "ca.pem"
    wheel = work / name
    _download(url, ca_file, wheel)
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if got != sha256.lower().removeprefix("sha256:"):
        raise UpgradeError(f"the package's SHA-256 is {got}, not the {sha256} the controller "
                           "announced: not installing it")
    links = urljoin(base, find_links) if find_links else ""
    lines: list[str] = []
    offline = _pip(["--no-index", *pip_options(url, links, ca_file), str(wheel)], lines) \
        if links else False
    if not offline:
        bundle = _trust_bundle(ca_file, work / "trust.pem") if url.startswith("https://") else None
        if not _pip([*pip_options(url, links, bundle), str(wheel)], lines):
            raise UpgradeError("pip could not install the package or its dependencies", lines)
    if not _pip(["--no-deps", "--force-reinstall", str(wheel)], lines):
        raise UpgradeError("pip could not reinstall the package", lines)
    out = subprocess.run([sys.executable, "-c", "import agent; print(agent.AGENT_VERSION)"],
                         capture_output=True, text=True, timeout=60, check=False,
                         stdin=subprocess.DEVNULL)
    now = out.stdout.strip()
    if version and now != version:
        raise UpgradeError(f"after installing, the agent's version is {now or '?'}, not "
                           f"{version}", lines)
    return now, lines


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile

    p = argparse.ArgumentParser(prog="python -m agent.upgrade")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--package-url", required=True)
    p.add_argument("--sha256", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--find-links", default="")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="overcast-upgrade-"))
    try:
        version, lines = install(Path(a.state_dir), a.package_url, a.sha256, a.version,
                                 a.find_links, work)
        result: dict[str, Any] = {"ok": True, "version": version, "output": "\n".join(lines)}
    except UpgradeError as exc:
        output = exc.args[1] if len(exc.args) > 1 else []
        result = {"ok": False, "error": str(exc.args[0]), "output": "\n".join(output)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
