"""The "other server" adapter: each host reached over SSH (asyncssh), its facts read by a
small sh script, reboot run as a command.

Blocking, like every adapter: each public call runs its own ``asyncio.run`` (no loop or thread
outlives the call), talks to all hosts concurrently and bounds each host by ``self.timeout``
(connect, authenticate and command together). One host failing never fails a listing: it is
listed ``unreachable`` with the reason in words. Nothing here logs or quotes a private key."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh

from controller.clouds.providers.base import JSON, Adapter, Capability, MachineRecord
from controller.clouds.providers.errors import clean
from controller.clouds.providers.other import facts
from controller.clouds.providers.other.hosts import HostEntry, parse_hosts
from controller.errors import (
    CredentialsRefused,
    Invalid,
    NotFound,
    OvercastError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)
from controller.exec.ssh import Pin, PinningClient, parse_pin

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PARALLEL = 32                  # hosts contacted at once


class _HostKeyMismatch(Exception):
    """The host offered a key other than the pinned one."""


@dataclass
class _Failure:
    reason: str                    # in words: "connection refused", "key refused", ...
    error: type[OvercastError]     # what check() raises for it


@dataclass
class _Outcome:
    entry: HostEntry
    facts: facts.Facts | None = None
    failure: _Failure | None = None
    host_key: str = ""             # the key the host offered, OpenSSH public format
    fingerprint: str = ""


def _pin(entry: HostEntry) -> Pin | None:
    try:
        return parse_pin(entry.host_key)
    except Invalid:
        raise Invalid(f"hosts[{entry.index}] ({entry.label}): host_key is neither a known_hosts "
                      "line nor an SHA256:/MD5: fingerprint", field="hosts") from None


def _private_key(entry: HostEntry) -> asyncssh.SSHKey:
    """The entry's private key; :class:`Invalid` (never quoting it) when it cannot be read."""
    try:
        return asyncssh.import_private_key(entry.key)
    except asyncssh.KeyEncryptionError:
        why = "cannot be decrypted"
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        why = ("is encrypted with a passphrase, which is not supported"
               if "passphrase" in str(exc).lower() else "is not a valid private key")
    raise Invalid(f"hosts[{entry.index}] ({entry.label}): the key {why} "
                  "(expected an unencrypted OpenSSH or PEM private key)", field="hosts")


def _failure(exc: BaseException) -> _Failure:
    """One host's failure, in words, and the domain error it stands for."""
    if isinstance(exc, Invalid):
        return _Failure(exc.message, Invalid)
    if isinstance(exc, _HostKeyMismatch):
        return _Failure("host key mismatch", ProviderError)
    if isinstance(exc, asyncssh.PermissionDenied):
        return _Failure("key refused", ProviderAuthError)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return _Failure("host key mismatch", ProviderError)
    if isinstance(exc, TimeoutError):
        return _Failure("timed out", ProviderUnavailable)
    if isinstance(exc, ConnectionRefusedError):
        return _Failure("connection refused", ProviderUnavailable)
    if isinstance(exc, asyncssh.ConnectionLost):
        return _Failure("connection lost", ProviderUnavailable)
    if isinstance(exc, socket.gaierror):
        return _Failure("unknown host name", ProviderUnavailable)
    if isinstance(exc, OSError):
        return _Failure(clean(exc.strerror or exc).lower(), ProviderUnavailable)
    if isinstance(exc, asyncssh.DisconnectError):
        return _Failure(f"ssh failed: {clean(exc.reason)}", ProviderError)
    return _Failure(f"failed: {clean(exc)}", ProviderError)


# check() raises the most telling failure first: the user's input, then trust, then network
_SEVERITY: tuple[type[OvercastError], ...] = (Invalid, ProviderAuthError, ProviderError,
                                              ProviderUnavailable)


def _ip_lists(entry: HostEntry, f: facts.Facts) -> tuple[list[str], list[str]]:
    """The host's addresses, plus the one it is reached at (it may be NAT'd, so not local)."""
    public, private = list(f.public_ips), list(f.private_ips)
    try:
        addr = ipaddress.ip_address(entry.host)
    except ValueError:
        return public, private
    if str(addr) not in public + private:
        (public if addr.is_global else private).append(str(addr))
    return public, private


class OtherAdapter(Adapter):
    provider = "other"
    credential = "hosts"
    capabilities = frozenset({Capability.MACHINES, Capability.REBOOT})
    # What REBOOT runs (``sudo -n`` prepended for a user other than root). Tests replace it
    # on the instance; it is deliberately not a cloud field, so no API user can set it.
    reboot_command = "reboot"

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self._entries: list[HostEntry] | None = None

    @property
    def entries(self) -> list[HostEntry]:
        if self._entries is None:
            self._entries = parse_hosts(self.config, self.secrets)
        return self._entries

    # -- blocking API ------------------------------------------------------------------------
    def check(self) -> None:
        """Every host reached and its key accepted; otherwise the worst failure, naming the
        host(s): Invalid (key unreadable), ProviderAuthError (key refused), ProviderError
        (host key mismatch), ProviderUnavailable (unreachable, timed out)."""
        outcomes = self._run(self._probe_all(gather=False))
        failed = [o for o in outcomes if o.failure is not None]
        for kind in _SEVERITY:
            same = [o for o in failed if o.failure is not None and o.failure.error is kind]
            if same:
                raise self._check_error(kind, same, len(failed))

    def list_machines(self) -> list[MachineRecord]:
        return [self._record(o) for o in self._run(self._probe_all(gather=True))]

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action is not Capability.REBOOT:
            raise self._unsupported(str(action))
        entry = next((e for e in self.entries if e.external_id == external_id), None)
        if entry is None:
            raise NotFound(f"no host {external_id} in this cloud",
                           {"provider": self.provider, "external_id": external_id})
        self._run(self._reboot(entry))

    # -- the event loop of one call ----------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """One private event loop for this call, closed (with its executor) before returning."""
        return asyncio.run(coro)

    async def _probe_all(self, gather: bool) -> list[_Outcome]:
        entries = self.entries
        gate = asyncio.Semaphore(MAX_PARALLEL)

        async def one(entry: HostEntry) -> _Outcome:
            async with gate:
                return await self._probe(entry, gather)

        return list(await asyncio.gather(*(one(e) for e in entries)))

    async def _probe(self, entry: HostEntry, gather: bool) -> _Outcome:
        """Connect (and with ``gather`` read the facts); never raises."""
        out = _Outcome(entry)
        client: PinningClient | None = None
        try:
            pin, key = _pin(entry), _private_key(entry)
            client = PinningClient(pin)
            async with asyncio.timeout(self.timeout):
                async with await self._connect(entry, key, client) as conn:
                    if gather:
                        result = await conn.run("sh -s", input=facts.SCRIPT, check=False,
                                                errors="replace")
                        out.facts = facts.parse(str(result.stdout or ""))
        except Exception as exc:  # one host's failure is a fact about that host
            out.failure = _failure(exc)
            if client is not None and client.seen is not None and client.pin is not None \
                    and not client.pin.matches(client.seen):
                out.failure = _failure(_HostKeyMismatch())
            log.debug("host %s: %s", entry.label, out.failure.reason)
        if client is not None and client.seen is not None:
            out.host_key = client.seen.export_public_key("openssh").decode().strip()
            out.fingerprint = client.seen.get_fingerprint("sha256")
        return out

    async def _connect(self, entry: HostEntry, key: asyncssh.SSHKey,
                       client: PinningClient) -> asyncssh.SSHClientConnection:
        def factory() -> asyncssh.SSHClient:
            return client

        conn: asyncssh.SSHClientConnection = await asyncssh.connect(
            entry.host, entry.port, username=entry.user, client_factory=factory,
            client_keys=[key], known_hosts=([], [], []),  # empty: every key goes to the client
            config=None, agent_path=None, password=None, preferred_auth="publickey",
            gss_host=None, connect_timeout=self.timeout, login_timeout=self.timeout,
            keepalive_interval=0)
        return conn

    async def _reboot(self, entry: HostEntry) -> None:
        key, pin = _private_key(entry), _pin(entry)
        client = PinningClient(pin)
        command = reboot_command(entry.user, self.reboot_command)
        sent = False
        try:
            async with asyncio.timeout(self.timeout):
                async with await self._connect(entry, key, client) as conn:
                    sent = True
                    result = await conn.run(command, check=False, errors="replace")
        except (asyncssh.ConnectionLost, asyncssh.ChannelOpenError, asyncssh.DisconnectError,
                ConnectionResetError) as exc:
            if sent:  # logged in and ran it, then the host went down: that is a reboot
                log.debug("host %s dropped the session while rebooting: %s", entry.label, exc)
                return
            failure = _failure(exc)
            raise self._check_error(failure.error, [_Outcome(entry, failure=failure)], 1) from None
        except Exception as exc:
            failure = _failure(exc)
            raise self._check_error(failure.error, [_Outcome(entry, failure=failure)], 1) from None
        # no exit status (or a signal): the session died with the host, as a reboot does
        if result.exit_status not in (0, None, -1) and result.exit_signal is None:
            why = clean(str(result.stderr or "") or f"exit status {result.exit_status}")
            raise ProviderError(f"reboot on {entry.label} failed: {why}",
                                {"provider": self.provider, "host": entry.external_id})

    def _check_error(self, kind: type[OvercastError], outcomes: list[_Outcome],
                     failing: int) -> OvercastError:
        first = outcomes[0]
        reason = first.failure.reason if first.failure else "failed"
        label = first.entry.label
        if kind is Invalid:
            return Invalid(reason, field="hosts")
        messages: dict[type[OvercastError], str] = {
            ProviderAuthError: f"{label} refused the key for user {first.entry.user}",
            ProviderUnavailable: f"cannot reach {label}: {reason}",
        }
        message = messages.get(kind, f"{label}: {reason}")
        if reason == "host key mismatch":
            message = (f"the host key of {label} does not match the pinned one "
                       f"(it offered {first.fingerprint or 'another key'})")
        if failing > 1:
            message += f" ({failing - 1} more host(s) failing)"
        details: dict[str, Any] = {"provider": self.provider,
                                   "hosts": [o.entry.external_id for o in outcomes]}
        if kind is ProviderAuthError:  # the first refused host's key names the field
            return CredentialsRefused(message, f"hosts[{first.entry.index}].key", **details)
        return kind(message, details)

    def _record(self, o: _Outcome) -> MachineRecord:
        e = o.entry
        extra: dict[str, JSON] = {"address": e.host, "port": e.port, "user": e.user,
                                  "host_key": o.host_key, "host_key_fingerprint": o.fingerprint,
                                  "host_key_pinned": bool(e.host_key)}
        if o.failure is not None or o.facts is None:
            extra["error"] = o.failure.reason if o.failure else "no facts"
            if o.failure is not None and o.failure.reason == "host key mismatch":
                extra["host_key"] = ""  # not trusted: do not offer it for pinning
            return MachineRecord(external_id=e.external_id, name=e.name, state="unreachable",
                                 extra=extra)
        f = o.facts
        public, private = _ip_lists(e, f)
        extra.update(f.extra())
        return MachineRecord(external_id=e.external_id, name=e.name, state="running",
                             hostname=f.hostname, os_type=f.os_type, cores=f.cores,
                             public_ips=public, private_ips=private, macs=f.macs, extra=extra)


def reboot_command(user: str, command: str = OtherAdapter.reboot_command) -> str:
    """The reboot as the login user runs it: through ``sudo -n`` (never prompting) unless root."""
    return command if user == "root" else f"sudo -n {command}"
