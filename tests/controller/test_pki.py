"""The controller's own CA and server certificate."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path

from controller.pki import ensure_pki, fingerprint


def test_ca_and_server_cert_are_made_once_private_and_verify(tmp_path: Path) -> None:
    pki = ensure_pki(str(tmp_path), ["127.0.0.1", "ctl.example.com"])
    for p in (pki.ca_key, pki.server_key, pki.ca_cert, pki.server_cert):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    again = ensure_pki(str(tmp_path), ["127.0.0.1"])
    assert again.ca_fingerprint == pki.ca_fingerprint == fingerprint(pki.ca_pem)
    assert again.server_cert.read_bytes() == pki.server_cert.read_bytes()  # reused

    # a real TLS handshake: a client that trusts only the CA accepts the server certificate
    srv = pki.server_ssl_context()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with srv.wrap_socket(conn, server_side=True) as s:
            s.sendall(b"hi")

    t = threading.Thread(target=serve)
    t.start()
    cli = ssl.create_default_context(cafile=str(pki.ca_cert))
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            cli.wrap_socket(raw, server_hostname="ctl.example.com") as s:
        assert s.recv(2) == b"hi"
    t.join()
    lsock.close()


def test_new_host_reissues_server_cert_but_keeps_ca(tmp_path: Path) -> None:
    a = ensure_pki(str(tmp_path), ["127.0.0.1"])
    before = a.server_cert.read_bytes()
    b = ensure_pki(str(tmp_path), ["new.example.com"])
    assert b.server_cert.read_bytes() != before
    assert a.ca_fingerprint == b.ca_fingerprint
