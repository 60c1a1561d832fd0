"""Which hypervisors a KVM cloud reaches, and the libvirt URI for each (pure: no libvirt).

Two forms, never both:

* ``hosts`` (Mist's ``KvmCredentials``): ``[{host, key, alias?, user? (root), port? (22),
  host_key?}]``, the same shape and secret handling as the "other server" provider (each
  item's private key lives in ``secrets["hosts.<i>.key"]``). Each host is reached as
  ``qemu+libssh://user@host:port/system`` with libvirt's built-in libssh transport, so the key
  file and the known_hosts file are ours (no ssh binary, no ``~/.ssh``). ``host_key`` pins the
  host's key (a known_hosts line, ``<type> <base64>``, or a ``SHA256:`` fingerprint); without
  it the first key seen is accepted and reported in the host machine's ``extra.host_key``.
* ``uri`` (our extension): a *local* libvirt URI: ``test:///default``, ``test:///abs/path.xml``
  (libvirt's test driver, a fleet described in a file), ``qemu:///system`` or
  ``qemu:///session``. No transport, no host and no query are accepted: libvirt's ``ext``
  transport and ``command=``/``netcat=`` parameters run programs on the controller, so a
  free-form URI would let whoever adds a cloud run commands there.

Each hypervisor is a machine too: its id is ``host:<host>`` (``host:localhost`` for a local
URI) and every guest names it as its ``parent`` and ``location``."""

from __future__ import annotations

import base64
import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from controller.clouds.providers.other.hosts import HostEntry, parse_hosts
from controller.clouds.providers.other.hosts import split_credentials as split_hosts
from controller.errors import Invalid

JSON = Any

LOCAL_URIS = ("test:///default", "qemu:///system", "qemu:///session")
_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


@dataclass(frozen=True)
class Target:
    """One hypervisor: how to reach it and how it is named."""

    id: str                        # "host:<host>", the host machine's external id
    name: str                      # alias, else host
    uri: str                       # the libvirt URI, without key or known_hosts paths
    entry: HostEntry | None = None  # the SSH host (with its private key) for remote targets

    @property
    def is_test(self) -> bool:
        return self.uri.startswith("test:")


def check_uri(value: JSON) -> str:
    """A local libvirt URI, or :class:`Invalid` saying which are accepted."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("uri must be a libvirt URI such as test:///default or qemu:///system",
                      field="uri")
    uri = value.strip()
    parts = urlsplit(uri)
    ok = not parts.netloc and not parts.query and not parts.fragment and "\\" not in uri
    if ok and parts.scheme == "test" and parts.path != "/default":
        path = parts.path
        ok = (path.startswith("/") and path.endswith(".xml") and posixpath.normpath(path) == path
              and all(c.isprintable() for c in path))
    elif ok:
        ok = uri in LOCAL_URIS
    if not ok:
        raise Invalid("uri must be a local libvirt URI: test:///default, test:///<absolute "
                      "path>.xml, qemu:///system or qemu:///session (remote hypervisors go in "
                      "hosts, reached over SSH)", field="uri")
    return uri


def split_credentials(credentials: dict[str, JSON]) -> tuple[dict[str, JSON], dict[str, str]]:
    """A create/edit request -> (config, secrets): ``{"uri"}`` as is, or ``{"hosts"}`` split
    like the "other server" provider (private keys to ``secrets["hosts.<i>.key"]``)."""
    uri, hosts = credentials.get("uri"), credentials.get("hosts")
    if uri and hosts:
        raise Invalid("give either hosts (SSH) or uri (local libvirt), not both", field="uri")
    if uri:
        return {"uri": check_uri(uri)}, {}
    if not hosts:
        raise Invalid("hosts (a list of {host, key, ...}) or uri is required", field="hosts")
    return split_hosts({"hosts": hosts})


def targets(config: dict[str, JSON], secrets: dict[str, str]) -> list[Target]:
    """The hypervisors of one cloud, checked (:class:`Invalid` for a bad config)."""
    uri, hosts = config.get("uri"), config.get("hosts")
    if uri and hosts:
        raise Invalid("give either hosts (SSH) or uri (local libvirt), not both", field="uri")
    if uri:
        return [Target(id="host:localhost", name="localhost", uri=check_uri(uri))]
    result: list[Target] = []
    seen: set[str] = set()
    for e in parse_hosts(config, secrets):
        if e.host in seen:
            raise Invalid(f"hosts[{e.index}] repeats the host {e.host}", field="hosts")
        seen.add(e.host)
        netloc = f"{quote(e.user, safe='')}@{_bracket(e.host)}:{e.port}"
        result.append(Target(id=f"host:{e.host}", name=e.name,
                             uri=f"qemu+libssh://{netloc}/system", entry=e))
    return result


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---- SSH host keys --------------------------------------------------------------------------
def known_hosts_name(entry: HostEntry) -> str:
    """How OpenSSH (and libssh) name the host in known_hosts."""
    return entry.host if entry.port == 22 else f"[{entry.host}]:{entry.port}"


def pinned_line(entry: HostEntry) -> str:
    """A known_hosts line for ``entry.host_key`` when it holds a key (not a fingerprint); ""
    when there is nothing to pin that way."""
    words = entry.host_key.split()
    for i, word in enumerate(words[:-1]):
        if word.startswith(_KEY_TYPES):
            return f"{known_hosts_name(entry)} {word} {words[i + 1]}"
    return ""


def fingerprint(key_b64: str) -> str:
    """OpenSSH's ``SHA256:`` fingerprint of a base64 public key blob."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def pin_matches(pin: str, key_b64: str) -> bool:
    """Whether a ``SHA256:``/``MD5:`` fingerprint pin names this key."""
    if pin.startswith("MD5:"):
        digest = hashlib.md5(base64.b64decode(key_b64), usedforsecurity=False).hexdigest()
        pairs = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
        return pin[4:].lower() == pairs
    return pin.rstrip("=") == fingerprint(key_b64)


def learned_key(known_hosts: str, entry: HostEntry) -> tuple[str, str]:
    """The ``(type, base64)`` key that libssh recorded for ``entry``, or ``("", "")``."""
    name = known_hosts_name(entry)
    for line in known_hosts.splitlines():
        words = line.split()
        if len(words) >= 3 and name in words[0].split(","):
            return words[1], words[2]
    return "", ""


def ssh_uri(target: Target, keyfile: str, known_hosts: str, verify: str) -> str:
    """The libssh URI with our key and known_hosts files; ``verify`` is libvirt's
    ``known_hosts_verify``: "normal" (refuse unknown keys) or "auto" (accept and record)."""
    query = urlencode({"keyfile": keyfile, "known_hosts": known_hosts,
                       "known_hosts_verify": verify, "sshauth": "privkey"})
    return f"{target.uri}?{query}"
