"""The script library: add a script (inline text, an http(s) URL, or a git repository) whose
content is fetched once, checked and stored with its sha256, so that a run runs exactly what
was reviewed; list, show, rename, fetch again (refresh), delete, and read the content back,
checked against its sha256. Fetching blocks in threads or awaits the network; every change
goes through the writer, and no content ever enters the audit log or an event."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from controller.accounts.model import Principal
from controller.clouds.model import check_tags
from controller.clouds.targets import local_targets
from controller.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.exec.model import sha256_hex
from controller.listing import Query, apply
from controller.scripts import fetch
from controller.scripts.model import (
    EXEC_TYPES,
    GIT_TYPES,
    LOCATION_TYPES,
    MAX_INLINE,
    SCRIPT,
    ScriptCorrupt,
    content_key,
    script_key,
)
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import by_ref, dump, load, public
from controller.timeutil import iso


class ScriptService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets: SecretBox) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets

    # ---- reading -------------------------------------------------------------------------
    def _load(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        """The script ``ref`` (its id, or its name as Mist allows) of the caller's
        organisation, with its stored bytes; NotFound otherwise (other organisations too)."""
        found = by_ref(self.store, SCRIPT, f"script/{p.org_id}/", ref) if p.org_id else None
        if found is None:
            raise NotFound("no such script", {"id": ref})
        return found

    @staticmethod
    def view(doc: dict[str, Any]) -> dict[str, Any]:
        out = public(doc)
        out.pop("org", None)
        out.setdefault("tags", {})
        return out

    def list_scripts(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return apply((self.view(load(SCRIPT, raw)) for _, raw in self.store.scan(f"script/{p.org_id}/")),
                     query)

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        """The view of script ``ref`` (id or name); NotFound. Never blocks for long."""
        return self.view(self._load(p, ref)[0])

    def payload(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        """(view, content) of script ``ref``: the stored snapshot, checked against its sha256.
        With ``view["entrypoint"]`` "" the content is the script itself (inline text as
        UTF-8, or the file a URL served); otherwise it is a .tar.gz archive and the
        entrypoint is the file to run in it. Raises NotFound, and ScriptCorrupt when the
        content is missing or does not match: such a script must never be run."""
        doc, _ = self._load(p, ref)
        content = self.store.get(content_key(p.org_id, doc["id"]))
        if content is None or sha256_hex(content) != doc.get("sha256"):
            raise ScriptCorrupt(f"the stored script {doc['name']!r} is corrupt (its content does "
                                "not match its sha256): it is not used; refresh it or add it again",
                                {"id": doc["id"]})
        return self.view(doc), content

    # ---- changes -------------------------------------------------------------------------
    async def add(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """Add a script: fetch its content once (see :meth:`_fetch`), store it with its
        sha256. Raises Invalid (a field, or what the source answered), TooLarge, Conflict (the
        name is taken), Forbidden (a source on the controller's own host), SourceUnreachable;
        nothing is stored then."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        name = _name(body.get("name"))
        description = _description(body.get("description"))
        exec_type = str(body.get("exec_type") or "")
        if exec_type not in EXEC_TYPES:
            raise Invalid(f"exec_type must be one of: {', '.join(EXEC_TYPES)}", field="exec_type")
        location_type = str(body.get("location_type") or "")
        if location_type not in LOCATION_TYPES:
            raise Invalid(f"location_type must be one of: {', '.join(LOCATION_TYPES)}",
                          field="location_type")
        tags = check_tags(body.get("tags"))
        self._unique(p.org_id, name, "")
        url, ref, snap = await self._fetch(location_type, str(body.get("script") or ""),
                                           str(body.get("entrypoint") or ""))
        self._unique(p.org_id, name, "")  # again: the fetch took a while
        sid = uuid.uuid4().hex
        email = p.user.get("email", "")
        doc: dict[str, Any] = {
            "id": sid, "org": p.org_id, "name": name, "description": description,
            "exec_type": exec_type, "location_type": location_type, "source": fetch.redact(url),
            "entrypoint": snap.entrypoint, "ref": ref, "commit": snap.commit,
            "sha256": snap.sha256, "size": len(snap.content), "tags": tags, "created": iso(),
            "created_by": email, "owned_by": email, "fetched": iso(), "_created_at": time.time()}
        if url != fetch.redact(url):  # credentials in the URL: kept sealed, for refresh
            doc["_url"] = self.secrets.seal(url, aad=script_key(p.org_id, sid))
        change = Change("script.add", org=p.org_id, target_kind="script", target_id=sid,
                        details={k: doc[k] for k in ("name", "exec_type", "location_type", "source",
                                                     "entrypoint", "ref", "commit", "sha256", "size")})
        change.put(script_key(p.org_id, sid), dump(SCRIPT, doc)).expect(script_key(p.org_id, sid), None)
        change.put(content_key(p.org_id, sid), snap.content)
        change.event("created", "script", sid, {"name": name})
        self.writer.commit(actor, change)
        return self.view(doc)

    async def refresh(self, p: Principal, actor: Actor, ref: str) -> tuple[dict[str, Any], bool]:
        """Fetch a URL or repository script again (same source, ref and entrypoint) and store
        what it is now; return (view, whether the content changed). Raises as :meth:`add`,
        Invalid for an inline script, Conflict when the script changed meanwhile; on failure
        the stored script stays as it was."""
        doc, raw = self._load(p, ref)
        if doc["location_type"] == "inline":
            raise Invalid("an inline script has no source to fetch again", field="location_type")
        url = (self.secrets.open(doc["_url"], aad=script_key(p.org_id, doc["id"])).decode()
               if doc.get("_url") else doc["source"])
        if doc["location_type"] in GIT_TYPES and doc.get("ref"):
            url += "#" + doc["ref"]
        _, _, snap = await self._fetch(doc["location_type"], url, doc.get("entrypoint", ""))
        changed = snap.sha256 != doc["sha256"]
        new = dict(doc, sha256=snap.sha256, size=len(snap.content), commit=snap.commit, fetched=iso())
        details: dict[str, Any] = {"name": doc["name"], "changed": changed, "source": doc["source"],
                                   "sha256": {"from": doc["sha256"], "to": snap.sha256}}
        if doc["location_type"] in GIT_TYPES:
            details["commit"] = {"from": doc.get("commit", ""), "to": snap.commit}
        k = script_key(p.org_id, doc["id"])
        change = Change("script.refresh", org=p.org_id, target_kind="script", target_id=doc["id"],
                        details=details)
        change.put(k, dump(SCRIPT, new)).expect(k, raw)
        if changed:
            change.put(content_key(p.org_id, doc["id"]), snap.content)
        change.event("changed", "script", doc["id"], {"name": doc["name"], "sha256": snap.sha256})
        self.writer.commit(actor, change)
        return self.view(new), changed

    def edit(self, p: Principal, actor: Actor, ref: str, name: str | None,
             description: str | None) -> dict[str, Any]:
        """Rename a script or change its description (its content never changes here).
        Raises NotFound, Invalid, Conflict."""
        doc, raw = self._load(p, ref)
        new = dict(doc)
        change = Change("script.edit", org=p.org_id, target_kind="script", target_id=doc["id"])
        if name is not None and _name(name) != doc["name"]:
            new["name"] = _name(name)
            self._unique(p.org_id, new["name"], doc["id"])
            change.details["name"] = {"from": doc["name"], "to": new["name"]}
        if description is not None and _description(description) != doc.get("description", ""):
            new["description"] = _description(description)
            change.details["description"] = True
        if not change.details:
            return self.view(doc)
        k = script_key(p.org_id, doc["id"])
        change.put(k, dump(SCRIPT, new)).expect(k, raw)
        change.event("changed", "script", doc["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        return self.view(new)

    def delete(self, p: Principal, actor: Actor, ref: str) -> None:
        """Delete a script and its content together. Raises NotFound."""
        doc, raw = self._load(p, ref)
        k = script_key(p.org_id, doc["id"])
        change = Change("script.delete", org=p.org_id, target_kind="script", target_id=doc["id"],
                        details={"name": doc["name"], "sha256": doc.get("sha256", "")})
        change.delete(k).expect(k, raw).delete(content_key(p.org_id, doc["id"]))
        change.event("deleted", "script", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)

    # ---- fetching ------------------------------------------------------------------------
    async def _fetch(self, location_type: str, script: str,
                     entrypoint: str) -> tuple[str, str, fetch.Snapshot]:
        """(source URL with any credentials, ref, snapshot) of what ``script`` says: inline
        text, an http(s) URL, or a repository URL[#ref]."""
        if not script.strip():
            raise Invalid("script is required: the text, a URL or a repository URL", field="script")
        if location_type == "inline":
            content = script.encode("utf-8")
            if len(content) > MAX_INLINE:
                raise TooLarge(f"an inline script may have at most {MAX_INLINE} bytes (this one "
                               f"has {len(content)}): serve a larger one from a URL or repository",
                               {"field": "script", "limit": MAX_INLINE})
            return "", "", fetch.Snapshot(content)
        entry = fetch.check_entrypoint(entrypoint) if entrypoint.strip() else ""
        if location_type == "url":
            url = fetch.check_url(script)
            return url, "", await fetch.fetch_url(url, entry, self._check_target)
        url, ref = fetch.parse_repo(script, location_type)
        if not entry:
            raise Invalid("entrypoint is required for a repository: the path of the file to run "
                          "in it", field="entrypoint")
        await self._check_target(url)
        snap = await asyncio.to_thread(fetch.clone, url, ref, entry, self.settings.allow_local_clouds)
        return url, ref, snap

    async def _check_target(self, url: str) -> None:
        """The clouds' local-endpoint policy, for script sources: the controller's own host
        and link-local addresses are refused unless ``allow_local_clouds`` is on. Resolves
        the name in a thread; raises Forbidden."""
        if self.settings.allow_local_clouds:
            return
        reasons = await asyncio.to_thread(local_targets, {"url": url})
        if reasons:
            why = reasons[0].removeprefix("url: ")
            raise Forbidden(f"{why}: script sources on the controller's own host or on link-local "
                            "addresses are refused unless the operator sets allow_local_clouds",
                            {"field": "script", "reasons": [r.removeprefix("url: ") for r in reasons]})

    def _unique(self, org: str, name: str, except_id: str) -> None:
        for _, v in self.store.scan(f"script/{org}/"):
            d = json.loads(v)
            if d.get("name") == name and d["id"] != except_id:
                raise Conflict(f"a script named {name!r} exists already", {"field": "name"})


def _name(value: Any) -> str:
    name = str(value or "").strip()
    if not name or len(name) > 200:
        raise Invalid("name must have 1 to 200 characters", field="name")
    return name


def _description(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) > 2000:
        raise Invalid("description must have at most 2000 characters", field="description")
    return text
