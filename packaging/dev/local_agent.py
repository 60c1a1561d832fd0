"""`make run`'s local agent: once the controller answers, enrol an agent on this host (first
run only: the identity stays in .run/agent) with a one-use join token made with the admin
account. Prints what it did; exits non-zero with the reason when it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def call(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> tuple[dict, dict]:  # type: ignore[type-arg]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback, make run)
        return json.loads(r.read() or b"{}"), dict(r.headers)


def main() -> int:
    url, email, pwfile, state_dir, overcast = sys.argv[1:6]
    if (Path(state_dir) / "agent.json").exists():
        return 0  # enrolled on an earlier run
    deadline = time.monotonic() + 30
    while True:
        try:
            call(url + "/api/v2/health")
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                print("make run: the controller did not answer; no local agent", file=sys.stderr)
                return 1
            time.sleep(0.3)
    pw = Path(pwfile)
    if not pw.exists():
        print("make run: admin password unknown: enrol a local agent yourself with "
              "'overcast token join create'", file=sys.stderr)
        return 1
    login, headers = call(url + "/api/v2/auth/sessions", "POST",
                          {"email": email, "password": pw.read_text().strip()})
    cookie = "; ".join(c.split(";", 1)[0] for c in headers.get("Set-Cookie", "").split(", ") if "=" in c)
    tok, _ = call(url + "/api/v2/agents/tokens", "POST", {"uses": 1, "ttl": 600, "tags": "local=true"},
                  {"Cookie": cookie, "X-CSRF-Token": login["data"]["csrf_token"]})
    boot, _ = call(url + "/api/v2/agents/bootstrap")
    r = subprocess.run([overcast, "agent", "--controller", url, "--token", tok["token"],
                        "--ca-fingerprint", boot["ca_fingerprint"], "--state-dir", state_dir,
                        "--enrol-only"], capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
