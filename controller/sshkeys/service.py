"""SSH keys: generate (ed25519 by default, RSA on request), import, rename, make default,
delete, and read the private half (an explicit request, audited). Blocking key work (RSA
generation) runs in a thread; every change goes through the writer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncssh

from controller.accounts.model import Principal
from controller.errors import Conflict, Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.secrets import SecretBox
from controller.sshkeys.model import ALGORITHMS, KEY, RSA_BITS, key
from controller.store.base import Store
from controller.store.docs import by_ref, dump, load, public
from controller.timeutil import iso

MAX_KEY_TEXT = 16_384


def parse_private(text: str) -> asyncssh.SSHKey:
    """A private key (OpenSSH or PEM) from what a user pasted; Invalid, never quoting it."""
    if not text.strip() or len(text) > MAX_KEY_TEXT:
        raise Invalid("private must be a private key (OpenSSH or PEM)", field="private")
    try:
        return asyncssh.import_private_key(text.strip() + "\n")
    except asyncssh.KeyEncryptionError:
        raise Invalid("the private key is protected by a passphrase: remove it first "
                      "(ssh-keygen -p -N '' -f KEYFILE)", field="private") from None
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise Invalid("private is not a private key Overcast can read (OpenSSH or PEM: "
                      "ed25519, ECDSA or RSA)", field="private") from None


def describe(k: asyncssh.SSHKey) -> dict[str, Any]:
    raw_alg: Any = k.get_algorithm()
    algorithm = raw_alg.decode() if isinstance(raw_alg, bytes) else str(raw_alg)
    bits = getattr(getattr(k, "pyca_key", None), "key_size", 0) or 0
    return {"algorithm": algorithm, "bits": int(bits) if algorithm == "ssh-rsa" else 0,
            "public": k.export_public_key().decode().strip(),
            "fingerprint": k.get_fingerprint("sha256")}


class KeyService:
    def __init__(self, store: Store, writer: Writer, secrets: SecretBox) -> None:
        self.store = store
        self.writer = writer
        self.secrets = secrets

    def _load(self, p: Principal, key_id: str) -> tuple[dict[str, Any], bytes]:
        found = by_ref(self.store, KEY, f"key/{p.org_id}/", key_id) if p.org_id else None
        if found is None:
            raise NotFound("no such key", {"id": key_id})
        return found

    @staticmethod
    def view(doc: dict[str, Any]) -> dict[str, Any]:
        out = public(doc)
        out.pop("org", None)
        out.setdefault("tags", {})
        return out

    def list_keys(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return apply((self.view(load(KEY, raw)) for _, raw in self.store.scan(f"key/{p.org_id}/")), query)

    def get(self, p: Principal, key_id: str) -> dict[str, Any]:
        return self.view(self._load(p, key_id)[0])

    def private(self, p: Principal, actor: Actor, key_id: str) -> dict[str, Any]:
        """The private half: only on request, and the request is audited."""
        doc, _ = self._load(p, key_id)
        text = self.secrets.open(doc["_private"], aad=key(p.org_id, doc["id"])).decode()
        self.writer.commit(actor, Change("key.private.read", org=p.org_id, target_kind="key",
                                         target_id=doc["id"], details={"name": doc["name"]}))
        return dict(self.view(doc), private=text)

    async def add(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """Import (``private``) or generate (``generate``: ``algorithm`` ed25519 or rsa,
        ``bits`` for RSA). With ``dry`` a generated pair is returned and nothing is stored."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        generate, private = bool(body.get("generate")), body.get("private")
        if generate == bool(private):
            raise Invalid("give either private (a key to import) or generate: true", field="private")
        if generate:
            algorithm = str(body.get("algorithm") or "ed25519").lower()
            if algorithm not in ALGORITHMS:
                raise Invalid(f"algorithm must be one of {', '.join(ALGORITHMS)}", field="algorithm")
            bits = int(body.get("bits") or 4096)
            if algorithm == "rsa" and bits not in RSA_BITS:
                raise Invalid(f"bits must be one of {', '.join(map(str, RSA_BITS))}", field="bits")
            alg = ALGORITHMS[algorithm]
            k = await asyncio.to_thread(
                lambda: asyncssh.generate_private_key(alg, key_size=bits) if alg == "ssh-rsa"
                else asyncssh.generate_private_key(alg))
        else:
            k = parse_private(str(private))
        text = k.export_private_key("openssh").decode()
        facts = describe(k)
        if body.get("dry"):
            if not generate:
                raise Invalid("dry is for generated keys", field="dry")
            return dict(facts, private=text, dry=True)
        name = str(body.get("name") or "").strip()
        if not name:
            raise Invalid("name is required", field="name")
        self._unique(p.org_id, name, "")
        for _, v in self.store.scan(f"key/{p.org_id}/"):
            if json.loads(v).get("fingerprint") == facts["fingerprint"]:
                raise Conflict("this key is stored already", {"field": "private"})
        kid = uuid.uuid4().hex
        first = self.store.count(f"key/{p.org_id}/") == 0
        doc = {"id": kid, "org": p.org_id, "name": name, "type": "ssh", **facts,
               "default": first, "certificate": str(body.get("certificate") or ""),
               "tags": {}, "created": iso(), "created_by": p.user.get("email", ""),
               "owned_by": p.user.get("email", ""), "_created_at": time.time(),
               "_private": self.secrets.seal(text, aad=key(p.org_id, kid))}
        change = Change("key.add", org=p.org_id, target_kind="key", target_id=kid,
                        details={"name": name, "generated": generate, "algorithm": facts["algorithm"],
                                 "fingerprint": facts["fingerprint"]})
        change.put(key(p.org_id, kid), dump(KEY, doc))
        change.event("created", "key", kid, {"name": name})
        self.writer.commit(actor, change)
        return self.view(doc)

    def _unique(self, org: str, name: str, except_id: str) -> None:
        for _, v in self.store.scan(f"key/{org}/"):
            d = json.loads(v)
            if d.get("name") == name and d["id"] != except_id:
                raise Conflict(f"a key named {name!r} exists already", {"field": "name"})

    def edit(self, p: Principal, actor: Actor, key_id: str, name: str | None,
             default: bool | None) -> dict[str, Any]:
        doc, raw = self._load(p, key_id)
        change = Change("key.edit", org=p.org_id, target_kind="key", target_id=doc["id"])
        new = dict(doc)
        if name is not None:
            name = name.strip()
            if not name or len(name) > 200:
                raise Invalid("name must have 1 to 200 characters", field="name")
            self._unique(p.org_id, name, doc["id"])
            change.details["name"] = {"from": doc["name"], "to": name}
            new["name"] = name
        if default is True and not doc.get("default"):
            for k, v in self.store.scan(f"key/{p.org_id}/"):
                other = json.loads(v)
                if other.get("default") and other["id"] != doc["id"]:
                    change.put(k, dump(KEY, dict(other, default=False))).expect(k, v)
            new["default"] = True
            change.details["default"] = True
        elif default is False and doc.get("default"):
            new["default"] = False
            change.details["default"] = False
        change.put(key(p.org_id, doc["id"]), dump(KEY, new)).expect(key(p.org_id, doc["id"]), raw)
        change.event("changed", "key", doc["id"], {"name": new["name"], "default": new["default"]})
        self.writer.commit(actor, change)
        return self.view(new)

    def delete(self, p: Principal, actor: Actor, key_id: str) -> None:
        doc, raw = self._load(p, key_id)
        change = Change("key.delete", org=p.org_id, target_kind="key", target_id=doc["id"],
                        details={"name": doc["name"], "fingerprint": doc.get("fingerprint", "")})
        change.delete(key(p.org_id, doc["id"])).expect(key(p.org_id, doc["id"]), raw)
        # its associations go too (the public half stays in authorized_keys: disassociate
        # first to remove it there)
        for k, _ in self.store.scan(f"keyassoc/{p.org_id}/", keys_only=True):
            if k.rsplit("/", 1)[-1] == doc["id"]:
                change.delete(k)
        change.event("deleted", "key", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)

    def private_text(self, org: str, key_id: str) -> str:
        """The private half for connecting with it (SSH runs, shells, key deployment): never
        returned to a user from here, so not audited as a read; NotFound if the key is gone."""
        raw = self.store.get(key(org, key_id)) if org and key_id and "/" not in key_id else None
        if raw is None:
            raise NotFound("no such key", {"id": key_id})
        doc = load(KEY, raw)
        return self.secrets.open(doc["_private"], aad=key(org, key_id)).decode()
