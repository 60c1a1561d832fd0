"""Run real agents (``python -m agent``) against a test controller, on loopback or inside a
network-namespace host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.controller import ROOT, Controller, Http
from tests.support.netns import Host


def join_token(h: Http, uses: int = 1, ttl: int | None = None, tags: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"uses": uses}
    if ttl is not None:
        body["ttl"] = ttl
    if tags:
        body["tags"] = tags
    r = h.post("/api/v2/agents/tokens", body)
    assert r.status == 201, r.body
    return r.body  # type: ignore[no-any-return]


class AgentProc:
    """One agent process with its own state directory (and hostname, inside a namespace)."""

    def __init__(self, controller: Controller, state_dir: Path, host: Host | None = None,
                 hostname: str | None = None, interval: float = 1.0) -> None:
        self.controller = controller
        self.state_dir = state_dir
        self.host = host
        self.hostname = hostname
        self.interval = interval
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    def argv(self, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", "agent", "--state-dir", str(self.state_dir),
               "--interval", str(self.interval), *extra]
        if self.hostname:
            cmd += ["--hostname", self.hostname]
        if self.host and self.hostname:
            # its own UTS namespace, so the inventory reports the host's own name
            import shlex

            inner = f"hostname {shlex.quote(self.hostname)} && exec {shlex.join(cmd)}"
            return self.host.cmd("unshare", "--uts", "sh", "-c", inner)
        return self.host.cmd(*cmd) if self.host else cmd

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERCAST_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proto")])
        return env

    def enrol(self, token: str, fingerprint: str | None = None) -> subprocess.CompletedProcess[str]:
        fp = self.controller.ca_fingerprint if fingerprint is None else fingerprint
        return subprocess.run(self.argv("--controller", self.controller.url, "--token", token,
                                        "--ca-fingerprint", fp, "--enrol-only"),
                              capture_output=True, text=True, env=self.env(), timeout=60, cwd=str(ROOT))

    def start(self) -> AgentProc:
        self.log = open(self.log_path, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, env=self.env(), cwd=str(ROOT))
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    @property
    def agent_id(self) -> str:
        return str(json.loads((self.state_dir / "agent.json").read_text())["agent_id"])

    def acked_seq(self) -> int:
        p = self.state_dir / "spool" / "acked"
        return int(p.read_text().split()[0]) if p.exists() else 0


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
