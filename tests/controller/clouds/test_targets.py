"""Which cloud configurations reach the controller's own host or link-local addresses."""

from __future__ import annotations

import pytest

from controller.clouds.targets import local_targets


@pytest.mark.parametrize("config", [
    {"endpoint": "http://127.0.0.1:5000"},
    {"endpoint": "http://localhost:5000/"},
    {"authUrl": "https://[::1]:5000/v3"},
    {"host": "169.254.169.254"},
    {"host": "0.0.0.0:2375"},
    {"hosts": [{"host": "10.0.0.5"}, {"host": "127.0.0.2"}]},
    {"uri": "qemu:///system"},
    {"uri": "test:///default"},
    {"uri": "qemu+ssh://root@127.0.0.1/system"},
    {"socket": "/run/docker.sock"},
])
def test_local_targets_are_found(config: dict[str, object]) -> None:
    assert local_targets(config)


@pytest.mark.parametrize("config", [
    {"endpoint": "https://ec2.eu-west-1.amazonaws.com"},
    {"host": "10.1.2.3"},
    {"authUrl": "http://192.168.10.5:5000/v3"},
    {"hosts": [{"host": "10.0.0.5", "port": 22}]},
    {"uri": "qemu+ssh://root@10.0.0.9/system"},
    {"region": "us-east-1", "apikey": "AKIA"},
    {"host": "no-such-host.invalid"},
])
def test_remote_and_private_targets_are_allowed(config: dict[str, object]) -> None:
    assert local_targets(config) == []


@pytest.mark.parametrize("config", [
    {"host": "unix:///var/run/docker.sock"},
    {"host": "/var/run/docker.sock"},
    {"endpoint": "http://[::ffff:127.0.0.1]:8080"},
    {"hosts": [{"host": "::ffff:169.254.169.254"}]},
])
def test_disguised_local_targets_are_found(config: dict[str, object]) -> None:
    assert local_targets(config)


def test_the_controllers_own_addresses_are_local() -> None:
    from controller.clouds.targets import own_addresses

    mine = [a for a in own_addresses() if not a.is_loopback and not a.is_link_local]
    if not mine:
        pytest.skip("this host has no address besides loopback")
    assert local_targets({"host": str(mine[0])})


def test_provider_calls_never_follow_redirects() -> None:
    """An allowed endpoint answering 302 towards another address must not bounce the call
    (and the credentials) there."""
    import http.server
    import threading

    from controller.clouds.providers import registry
    from controller.errors import OvercastError

    hits: list[str] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)

    class Bouncer(Target):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}{self.path}")
            self.end_headers()

    bouncer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bouncer)
    for srv in (target, bouncer):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        adapter = registry.build("digitalocean", {"endpoint": f"http://127.0.0.1:{bouncer.server_port}"},
                                 {"token": "secret-token"}, 5.0)
        with pytest.raises(OvercastError):
            adapter.check()
        assert hits == []
    finally:
        target.shutdown()
        bouncer.shutdown()
