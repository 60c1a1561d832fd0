"""Associating SSH keys with machines (Mist v2 ``associate-key`` / ``disassociate-key``).

Associating deploys the key's public half into the login user's ``authorized_keys``: through
the machine's agent when it is connected, else over SSH with a way in that already works (an
older association, or the key an "other server" cloud holds), else it checks that the key
itself already lets the user in (a key a cloud put there at creation). ``deploy: false`` (an
Overcast extension) only records the association. Disassociating removes the line the same
way. The association records user, port, sudo, the host key seen (pinned from then on) and
when the key last worked; it lives at ``keyassoc/<org>/<machine>/<key>``.

Talks to machines: await it on the event loop. Raises NotFound (machine or key not the
caller's), Invalid (bad user, machine without an address), ProviderUnavailable /
ProviderAuthError / ProviderError when the machine cannot be reached or refuses."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import asyncssh

from controller.accounts.model import Principal
from controller.errors import Invalid, NotFound, ProviderError
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.exec import ssh
from controller.exec.agentlink import AgentLink
from controller.exec.model import Payload, SshTarget, sha256_hex
from controller.exec.targets import Route, Targets, address, assoc_key
from controller.sshkeys.service import KeyService
from controller.store.base import Store
from controller.timeutil import iso

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
DEPLOY_TIMEOUT = 60.0


class _Capture:
    def __init__(self) -> None:
        self.data = bytearray()

    def output(self, stream: str, data: bytes) -> None:
        self.data += data[: 8192 - len(self.data)]


class Associations:
    def __init__(self, store: Store, writer: Writer, keys: KeyService, targets: Targets,
                 link: AgentLink) -> None:
        self.store = store
        self.writer = writer
        self.keys = keys
        self.targets = targets
        self.link = link

    def list(self, p: Principal, machine_ref: str) -> list[dict[str, Any]]:
        m = self.targets.machine(p, machine_ref)
        return [_view(a) for a in self.targets.associations(p.org_id, m["id"])]

    async def associate(self, p: Principal, actor: Actor, machine_ref: str,
                        body: dict[str, Any]) -> dict[str, Any]:
        machine = self.targets.machine(p, machine_ref)
        kdoc = self.keys.get(p, str(body.get("key") or ""))
        user = str(body.get("user") or "root")
        if not _USER.match(user):
            raise Invalid("user must be a login name (lower case letters, digits, _ and -)",
                          field="user")
        port = int(body.get("port") or 22)
        deploy = body.get("deploy", True) is not False
        host = address(machine)
        how = "recorded"
        if deploy:
            how = await self._deploy(machine, kdoc, user, port, add=True)
        host_key = await self._pin(machine, host, port)
        doc = {"key": kdoc["id"], "machine": machine["id"], "user": user, "port": port,
               "sudo": bool(body.get("sudo")), "host_key": host_key, "deployed_via": how,
               "created": iso(), "created_by": p.user.get("email", "") or actor.email,
               "last_used": int(time.time()) if how != "recorded" else 0}
        change = Change("key.associate", org=p.org_id, target_kind="machine",
                        target_id=machine["id"],
                        details={"key": kdoc["id"], "key_name": kdoc["name"], "user": user,
                                 "port": port, "via": how})
        change.put(assoc_key(p.org_id, machine["id"], kdoc["id"]), json.dumps(doc).encode())
        change.event("changed", "machine", machine["id"], {"key_associations": "added"})
        self.writer.commit(actor, change)
        return _view(doc)

    async def disassociate(self, p: Principal, actor: Actor, machine_ref: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        machine = self.targets.machine(p, machine_ref)
        key_ref = str(body.get("key") or "")
        kdoc = self.keys.get(p, key_ref)
        k = assoc_key(p.org_id, machine["id"], kdoc["id"])
        raw = self.store.get(k)
        if raw is None:
            raise NotFound("this key is not associated with the machine",
                           {"key": kdoc["id"], "machine": machine["id"]})
        doc = json.loads(raw)
        how = "forgotten"
        if body.get("deploy", True) is not False:
            how = await self._deploy(machine, kdoc, doc["user"], int(doc.get("port") or 22),
                                     add=False)
        change = Change("key.disassociate", org=p.org_id, target_kind="machine",
                        target_id=machine["id"],
                        details={"key": kdoc["id"], "key_name": kdoc["name"],
                                 "user": doc["user"], "via": how})
        change.delete(k).expect(k, raw)
        change.event("changed", "machine", machine["id"], {"key_associations": "removed"})
        self.writer.commit(actor, change)
        return dict(_view(doc), removed_via=how)

    async def _pin(self, machine: dict[str, Any], host: str, port: int) -> str:
        """The host key to pin for the association: the one already pinned for this machine
        (another association's, or its cloud's), checked against what the host offers now;
        else what it offers now (trust on first use). ProviderError on a mismatch."""
        if not host:
            return ""
        known = next((a["host_key"] for a in self.targets.associations(machine["org"],
                                                                        machine["id"])
                      if a.get("host_key") and int(a.get("port") or 22) == port), "")
        if not known:
            cloud = self.targets.cloud_route(machine)
            if cloud is not None and cloud.ssh is not None and cloud.ssh.port == port:
                known = cloud.ssh.host_key
        seen = await _host_key(host, port)
        if known and seen:
            pin = ssh.parse_pin(known)
            if pin is not None and not pin.matches(asyncssh.import_public_key(seen)):
                raise ProviderError(f"the host key of {host}:{port} is not the one pinned for "
                                    "this machine (a different host, or someone in between)")
        return known or seen

    # ---- deploying --------------------------------------------------------------------------
    async def _deploy(self, machine: dict[str, Any], kdoc: dict[str, Any], user: str, port: int,
                      add: bool) -> str:
        try:
            script = (ssh.authorize_script if add else ssh.revoke_script)(user, kdoc["public"])
        except ValueError as exc:
            raise Invalid(str(exc), field="user") from None
        # the script runs as the user whose file it changes, never as root for another user:
        # root writing in a directory the user owns could be sent elsewhere by a planted link
        route = self.targets.route(machine)
        if route.agent_id:
            return await self._via_agent(route, script, user)
        other = self.targets.ssh_route(machine, exclude_key=kdoc["id"] if add else "")
        if other is not None and other.ssh is not None:
            await self._via_ssh(other.ssh, script, user)
            return "ssh"
        host = address(machine)
        if not host:
            raise Invalid("the machine has no address to reach it at, and no connected agent",
                          field="machine")
        target = SshTarget(host=host, port=port, user=user,
                           private_key=self.keys.private_text(machine["org"], kdoc["id"]))
        if add:
            # no other way in: the key may be there already (put by the cloud at creation)
            code, _, _ = await ssh.run_command(target, "true", timeout=DEPLOY_TIMEOUT)
            if code != 0:
                raise ProviderError(f"the key does not let {user} in on {route.name}, and "
                                    "there is no agent or other working key to deploy it with")
            return "already-authorized"
        await self._via_ssh(target, script, user)  # it removes the very key it logged in with
        return "ssh"

    async def _via_agent(self, route: Route, script: str, user: str) -> str:
        content = script.encode()
        cap = _Capture()
        results = await self.link.run_many(
            [route.agent_id], Payload(content=content, sha256=sha256_hex(content),
                                      interpreter="/bin/sh", timeout=DEPLOY_TIMEOUT),
            lambda _aid: cap, user=user)
        r = results[route.agent_id]
        if r.exit_code != 0:
            why = r.error or cap.data.decode("utf-8", "replace").strip()[-500:]
            raise ProviderError(f"deploying the key through the agent failed: {why}")
        return "agent"

    async def _via_ssh(self, target: SshTarget, script: str, user: str) -> None:
        code, out, err = await ssh.run_command(target, as_user(target.user, user),
                                               input=script.encode(), timeout=DEPLOY_TIMEOUT)
        if code != 0:
            why = (err or out).decode("utf-8", "replace").strip()[-500:]
            raise ProviderError(f"changing authorized_keys over SSH failed: {why or code}")


def as_user(login: str, user: str) -> str:
    """The command that runs a script read from standard input as ``user`` when logged in
    as ``login`` (names already checked against _USER): root switches with runuser (su where
    there is none), anyone else with sudo -n."""
    if login == user:
        return "sh -s"
    if login == "root":
        return (f"if command -v runuser >/dev/null 2>&1; then exec runuser -u {user} -- sh -s; "
                f"else exec su -s /bin/sh {user} -c 'sh -s'; fi")
    return f"sudo -n -u {user} sh -s"


async def _host_key(host: str, port: int) -> str:
    """The host key the machine offers now (pinned for later connections); "" if unknown."""
    try:
        k = await asyncio.wait_for(asyncssh.get_server_host_key(host, port), 10)
    except (OSError, TimeoutError, asyncssh.Error):
        return ""
    return k.export_public_key().decode().strip() if k is not None else ""


def _view(doc: dict[str, Any]) -> dict[str, Any]:
    """Mist's KeyMachineAssociation, plus Overcast's fields."""
    return {"key": doc["key"], "machine": doc["machine"], "user": doc["user"],
            "ssh_user": doc["user"], "port": doc.get("port", 22), "sudo": doc.get("sudo", False),
            "last_used": doc.get("last_used", 0), "created": doc.get("created", ""),
            "deployed_via": doc.get("deployed_via", ""), "host_key": doc.get("host_key", "")}

