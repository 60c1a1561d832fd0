#!/opt/overcast/bin/python
"""The container's health check: GET /api/v2/health on this controller's own HTTP listener.

Where it listens and whether it serves TLS come from the same settings the controller reads
(the settings file, then OVERCAST_* variables); a listener on all addresses is asked on
loopback. The certificate is not checked: this is the process asking itself, on loopback.
Exit 0 when it answers {"status": "ok"}, else 1 with the reason on stderr."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.request


def main() -> int:
    try:
        from controller.settings import load

        s = load()
        host, port = s.http_host, s.http_port
    except Exception as exc:  # a settings error: the controller is not running with them either
        print(f"overcast-healthcheck: settings: {exc}", file=sys.stderr)
        return 1
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if s.tls_enabled else "http"
    ctx = None
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{host}:{port}/api/v2/health"
    try:
        with urllib.request.urlopen(url, timeout=4, context=ctx) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        print(f"overcast-healthcheck: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if not isinstance(body, dict) or body.get("status") != "ok":
        print(f"overcast-healthcheck: {url} answered {body!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
