"""wireguard-go's UAPI socket (https://www.wireguard.com/xplatform/): one request and its
reply a connection, whether anyone answers, and sockets left behind by a killed wireguard-go.
The text of requests and replies is ``tunnel.config``'s.

Each call blocks for one exchange on a Unix socket (well under a millisecond; 5 s at most).
"""

from __future__ import annotations

import contextlib
import os
import socket

from tunnel.config import TunnelError, errno_words, uapi_errno


class Unreachable(TunnelError):
    """The socket did not answer: wireguard-go is gone, or not there yet."""


class Refused(TunnelError):
    """wireguard-go answered with an error: the request itself is wrong."""


def exchange(path: str, request: str, who: str, what: str) -> str:
    """Send ``request`` to the socket at ``path`` and return the reply. ``who`` and ``what``
    word the errors ("wireguard-go of oc-hub", "set peer ..."): Unreachable when the socket
    does not answer, Refused when the reply's errno is not 0. The request may hold a private
    key: it never goes into a message or the log."""
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(request.encode())
            while not data.endswith(b"\n\n"):  # a blank line ends the reply
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise Unreachable(f"could not reach {who} to {what}: {e.strerror or e}") from None
    reply = data.decode(errors="replace")
    errno = uapi_errno(reply)
    if errno != 0:
        raise Refused(f"{who} refused to {what}: {errno_words(errno)}")
    return reply


def answers(path: str) -> bool:
    """True when something accepts connections on the socket at ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
        return True
    except OSError:
        return False


def remove_stale(path: str) -> None:
    """Remove the socket at ``path`` when nobody answers on it: a wireguard-go killed with
    SIGKILL leaves its socket behind, which would look like a new one ready."""
    if os.path.exists(path) and not answers(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
