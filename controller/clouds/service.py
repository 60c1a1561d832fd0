"""Clouds: add (credentials checked at the provider, then sealed), edit, remove, list, and one
poll of a cloud (snapshot from the adapter, diffed into the store by ``inventory``).

Credentials: the spec's secret fields are sealed with the controller's secret key (bound to
the cloud's key) and never leave this module except into the adapter; views say which
secret fields are set, never their values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from controller.accounts.model import Principal
from controller.clouds.costs import totals
from controller.clouds.inventory import Snapshot, reconcile
from controller.clouds.links import link_agents, unlink_cloud
from controller.clouds.model import (
    CLOUD,
    agents_cloud_id,
    check_tags,
    cloud_key,
    doc_key,
    index_prefix,
    status_key,
)
from controller.clouds.providers import registry
from controller.clouds.providers.base import Adapter, Capability, Field, ProviderSpec
from controller.clouds.runner import CloudRunner
from controller.clouds.targets import ADDRESS_FIELDS, local_targets
from controller.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    OvercastError,
    ProviderError,
)
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Batch, Store
from controller.store.docs import by_ref, dump, load
from controller.timeutil import iso

log = logging.getLogger(__name__)

POLLER = Actor(kind="system", id="poller", via="poller")
CATALOG_EVERY = 3600.0
POLL_CALLS = 5  # a poll may take this many call timeouts
# credential fields that are not secret but not shown whole either (access key ids, users)
IDENTIFIERS = frozenset({"apikey", "key", "username", "user", "email"})
MAX_DIFFS = 3  # a poll's diff is redone when a document changed under it, this many times
# fields that say where the controller connects (with the cloud's secrets)
TARGET_FIELDS = (*ADDRESS_FIELDS, "uri", "socket", "port")  # sizes, images and locations change rarely: refreshed hourly
MAX_INTERVAL = 24 * 3600


def check_fields(spec: ProviderSpec, given: dict[str, Any], partial: bool = False) -> dict[str, Any]:
    """The credentials checked against the provider's fields: unknown ones refused, required
    ones present (unless ``partial``), types right. Errors name ``credentials.<field>``."""
    if not isinstance(given, dict):
        raise Invalid("credentials must be an object", field="credentials")
    by_name = {f.name: f for f in spec.fields}
    for name in given:
        if name not in by_name:
            raise Invalid(f"{spec.name} has no credential field {name!r}; its fields: "
                          f"{', '.join(by_name)}", field=f"credentials.{name}")
    out: dict[str, Any] = {}
    for f in spec.fields:
        if f.name not in given or given[f.name] is None:
            if f.required and not partial and f.default is None:
                raise Invalid(f"credentials.{f.name} is required for {spec.name}",
                              field=f"credentials.{f.name}")
            if f.default is not None and not partial:
                out[f.name] = f.default
            continue
        out[f.name] = _check_value(f, given[f.name])
    return out


def _check_value(f: Field, v: Any) -> Any:
    where = f"credentials.{f.name}"
    if f.kind in ("string", "text"):
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise Invalid(f"{where} must be a string", field=where)
        if len(v) > (65536 if f.kind == "text" else 4096):
            raise Invalid(f"{where} is too long", field=where)
        if f.required and not v.strip():
            raise Invalid(f"{where} must not be empty", field=where)
        if f.choices and v not in f.choices:
            raise Invalid(f"{where} must be one of: {', '.join(f.choices)}", field=where)
        return v
    if f.kind == "integer":
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise Invalid(f"{where} must be an integer", field=where)
        return v
    if f.kind == "boolean":
        if not isinstance(v, bool):
            raise Invalid(f"{where} must be true or false", field=where)
        return v
    if f.kind == "list":
        if not isinstance(v, list) or len(v) > 1000:
            raise Invalid(f"{where} must be a list (at most 1000 items)", field=where)
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            raise Invalid(f"{where} must be JSON", field=where) from None
        return v
    return v


class CloudService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets: SecretBox) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets
        self.runner = CloudRunner(settings.cloud_workers, settings.cloud_call_timeout)
        self.on_change: list[Any] = []  # callbacks (org, cloud_id, removed) for the pollers

    # ---- documents -------------------------------------------------------------------------
    def _load(self, p: Principal, cloud_id: str) -> tuple[dict[str, Any], bytes]:
        found = by_ref(self.store, CLOUD, cloud_key(p.org_id, ""), cloud_id) if p.org_id else None
        if found is None:
            raise NotFound("no such cloud", {"id": cloud_id})
        return dict(found[0], org=p.org_id), found[1]

    def find(self, p: Principal, cloud_id: str) -> dict[str, Any]:
        return self._load(p, cloud_id)[0]

    def status(self, org: str, cloud_id: str) -> dict[str, Any]:
        raw = self.store.get(status_key(org, cloud_id))
        return json.loads(raw) if raw else {"state": "new", "failures": 0}

    def view(self, doc: dict[str, Any], with_totals: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if not k.startswith("_") and k != "org"}
        if doc.get("agents") or "config" not in doc:
            out.update(title="Overcast agents", config={}, credentials_set=[])
        else:
            s = registry.spec(doc["provider"])
            out["config"] = {k: (_hint(v) if k in IDENTIFIERS else v)
                             for k, v in (doc.get("config") or {}).items()}
            out["title"] = s.title
            out["capabilities"] = sorted(s.capabilities)
            out["proved"] = s.proved
        out["status"] = self.status(doc["org"], doc["id"])
        if with_totals:
            machines = [json.loads(raw) for raw in self._machine_docs(doc["org"], doc["id"])]
            t = totals(machines, "cloud").get(doc["id"], {"hourly": 0.0, "monthly": 0.0, "machines": 0})
            out["totals"] = {"machines": t["machines"],
                             "running": sum(m.get("state") == "running" for m in machines),
                             "cost": {"hourly": t["hourly"], "monthly": t["monthly"], "currency": "USD"}}
        return out

    def _machine_docs(self, org: str, cloud_id: str) -> list[bytes]:
        if cloud_id == agents_cloud_id(org):
            return [raw for _, raw in self.store.scan(f"machine/{org}/")
                    if json.loads(raw).get("cloud") == cloud_id]
        out = []
        for _, k in self.store.scan(index_prefix(org, cloud_id, "machine")):
            raw = self.store.get(k.decode())
            if raw is not None:
                out.append(raw)
        return out

    def list_clouds(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        docs = [self.view(dict(load(CLOUD, raw), org=p.org_id))
                for _, raw in self.store.scan(f"cloud/{p.org_id}/")]
        return apply(docs, query)

    def get(self, p: Principal, cloud_id: str) -> dict[str, Any]:
        return self.view(self.find(p, cloud_id))

    # ---- credentials -------------------------------------------------------------------------
    def _seal(self, org: str, cloud_id: str, secrets: dict[str, Any]) -> str:
        return self.secrets.seal(json.dumps(secrets), aad=cloud_key(org, cloud_id))

    def _open(self, doc: dict[str, Any]) -> dict[str, Any]:
        if not doc.get("_secrets"):
            return {}
        opened: dict[str, Any] = json.loads(self.secrets.open(doc["_secrets"],
                                                              aad=cloud_key(doc["org"], doc["id"])))
        return opened

    @staticmethod
    def _split(spec: ProviderSpec, creds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, secrets). A provider with secrets inside structured fields (``other``: a
        private key per host) splits its credentials itself (``split_credentials``)."""
        custom = _custom_split(spec)
        if custom is not None:
            config, secrets = custom(creds)
            return dict(config), dict(secrets)
        secret_names = {f.name for f in spec.fields if f.secret}
        config = {k: v for k, v in creds.items() if k not in secret_names}
        secrets = {k: v for k, v in creds.items() if k in secret_names}
        return config, secrets

    def adapter_factory(self, doc: dict[str, Any]) -> Any:
        provider, config = doc["provider"], dict(doc.get("config", {}))
        secrets = self._open(doc)
        timeout = float(self.settings.cloud_call_timeout)
        return lambda: registry.build(provider, config, secrets, timeout)

    async def call(self, doc: dict[str, Any], purpose: str, fn: Any, what: str = "",
                   timeout: float | None = None) -> Any:
        return await self.runner.call(doc["org"], doc["id"], purpose, doc.get("_rev", ""),
                                      self.adapter_factory(doc), fn, timeout=timeout, what=what)

    # ---- add, edit, remove -----------------------------------------------------------------
    async def add(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        spec = registry.spec(body["provider"])
        name = body["name"].strip()
        if not name:
            raise Invalid("name must not be empty", field="name")
        self._unique_name(p.org_id, name, "")
        creds = check_fields(spec, body.get("credentials") or {})
        config, secrets = self._split(spec, creds)
        await self._check_targets(config)
        cloud_id = uuid.uuid4().hex
        doc: dict[str, Any] = {"id": cloud_id, "org": p.org_id, "name": name, "provider": spec.name,
               "config": config, "credentials_set": sorted(secrets), "_rev": uuid.uuid4().hex,
               "features": _features(spec, body.get("features")), "enabled": body.get("enabled", True),
               "poll_interval": _interval(body.get("poll_interval"), self.settings.cloud_poll_interval),
               "tags": check_tags(body.get("tags")), "created": iso(), "created_by": p.user.get("email", ""),
               "owned_by": p.user.get("email", "")}
        doc["_user_tags"] = doc["tags"]
        details = {"provider": spec.name, "name": name}
        try:
            await self.runner.once(p.org_id, lambda: registry.build(spec.name, config, secrets,
                                                          float(self.settings.cloud_call_timeout)),
                                   lambda a: a.check(), what="checking the credentials")
        except OvercastError as exc:
            failed = dict(details, error=exc.message, code=exc.code)
            if exc.details.get("field"):
                failed["field"] = exc.details["field"]
            self.writer.commit(actor, Change("cloud.add", org=p.org_id, target_kind="cloud",
                                             target_id=cloud_id, outcome="failed",
                                             details=failed))
            raise
        doc["_secrets"] = self._seal(p.org_id, cloud_id, secrets)
        change = Change("cloud.add", org=p.org_id, target_kind="cloud", target_id=cloud_id,
                        details=dict(details, fields=sorted(creds)))
        change.put(cloud_key(p.org_id, cloud_id), dump(CLOUD, doc))
        change.event("created", "cloud", cloud_id, {"name": name, "provider": spec.name})
        self.writer.commit(actor, change)
        self._changed(p.org_id, cloud_id, False)
        return self.view(doc)

    async def _check_targets(self, config: dict[str, Any]) -> None:
        if self.settings.allow_local_clouds:
            return
        reasons = await asyncio.to_thread(local_targets, config)
        if reasons:
            raise Forbidden(f"{reasons[0]}: clouds on the controller's own host or on link-local "
                            "addresses are refused unless the operator sets allow_local_clouds",
                            {"reasons": reasons})

    def _unique_name(self, org: str, name: str, except_id: str) -> None:
        for _, raw in self.store.scan(f"cloud/{org}/"):
            d = json.loads(raw)
            if d.get("name") == name and d["id"] != except_id:
                raise Conflict(f"a cloud named {name!r} exists already", {"field": "name"})

    async def edit(self, p: Principal, actor: Actor, cloud_id: str, body: dict[str, Any]) -> dict[str, Any]:
        doc, raw = self._load(p, cloud_id)
        if doc.get("agents"):
            raise Invalid("the Agents cloud is managed by Overcast: enrol or revoke agents instead")
        spec = registry.spec(doc["provider"])
        if body.get("provider") not in (None, doc["provider"]):
            raise Invalid("a cloud's provider cannot change: add a new cloud", field="provider")
        new = dict(doc)
        changed: list[str] = []
        if "name" in body:
            name = body["name"].strip()
            if not name:
                raise Invalid("name must not be empty", field="name")
            self._unique_name(p.org_id, name, doc["id"])
            new["name"] = name
            changed.append("name")
        for k in ("enabled", "features", "tags", "poll_interval"):
            if k in body:
                if k == "poll_interval":
                    new[k] = _interval(body[k], self.settings.cloud_poll_interval)
                elif k == "features":
                    new[k] = _features(spec, body[k])
                elif k == "tags":
                    new["tags"] = new["_user_tags"] = check_tags(body[k])
                else:
                    new[k] = body[k]
                changed.append(k)
        if "credentials" in body:
            whole = _custom_split(spec) is not None  # structured: given whole, replaced whole
            given = check_fields(spec, body["credentials"] or {}, partial=not whole)
            config, secrets = self._split(spec, given)
            if whole:
                merged_config, merged_secrets = config, secrets
            else:
                merged_config = dict(doc.get("config", {}), **config)
                kept = {k: v for k, v in self._open(doc).items() if k not in secrets}
                moved = [k for k in TARGET_FIELDS
                         if merged_config.get(k) != doc.get("config", {}).get(k)]
                if moved and kept:
                    # the stored secrets go only where they went before: a new address needs
                    # them given again (else anyone who may edit could have them sent away)
                    raise Invalid(f"changing {', '.join(moved)} needs the secret fields again: "
                                  f"{', '.join(sorted(kept))}", field=f"credentials.{sorted(kept)[0]}")
                merged_secrets = dict(kept, **secrets)
                check_fields(spec, {**merged_config, **merged_secrets})  # still complete
            await self._check_targets(merged_config)
            await self.runner.once(doc["org"], lambda: registry.build(spec.name, merged_config, merged_secrets,
                                                          float(self.settings.cloud_call_timeout)),
                                   lambda a: a.check(), what="checking the credentials")
            new.update(config=merged_config, credentials_set=sorted(merged_secrets),
                       _secrets=self._seal(doc["org"], doc["id"], merged_secrets),
                       _rev=uuid.uuid4().hex)
            changed.append("credentials")
        change = Change("cloud.edit", org=doc["org"], target_kind="cloud", target_id=doc["id"],
                        details={"fields": changed, "name": new["name"]})
        change.put(cloud_key(doc["org"], doc["id"]), dump(CLOUD, new)).expect(
            cloud_key(doc["org"], doc["id"]), raw)
        change.event("changed", "cloud", doc["id"], {"name": new["name"], "fields": changed})
        self.writer.commit(actor, change)
        if "credentials" in changed:
            self.runner.forget(doc["id"])
        self._changed(doc["org"], doc["id"], False)
        return self.view(new)

    def remove(self, p: Principal, actor: Actor, cloud_id: str) -> dict[str, int]:
        """Delete the cloud and every document its polls made (Overcast forgets them; nothing
        is touched at the provider)."""
        doc, raw = self._load(p, cloud_id)
        if doc.get("agents"):
            raise Invalid("the Agents cloud is managed by Overcast: revoke its agents instead")
        org, cid = doc["org"], doc["id"]
        change = Change("cloud.remove", org=org, target_kind="cloud", target_id=cid,
                        details={"name": doc["name"], "provider": doc["provider"]})
        counts: dict[str, int] = {}
        for k, v in self.store.scan(index_prefix(org, cid)):
            kind = k[len(index_prefix(org, cid)):].split("/", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
            change.delete(k)
            change.delete(v.decode())
        change.details["forgotten"] = counts
        change.details["agents_unlinked"] = unlink_cloud(self.store, org, cid, change)
        change.delete(cloud_key(org, cid)).delete(status_key(org, cid)).expect(cloud_key(org, cid), raw)
        change.event("deleted", "cloud", cid, {"name": doc["name"]})
        self.writer.commit(actor, change)
        self.runner.forget(cid)
        self._changed(org, cid, True)
        return counts

    def _changed(self, org: str, cloud_id: str, removed: bool) -> None:
        for cb in self.on_change:
            cb(org, cloud_id, removed)

    # ---- polling -------------------------------------------------------------------------------
    def pollable(self) -> list[tuple[str, str]]:
        """(org, cloud id) of every cloud a poller should watch."""
        out = []
        for _, raw in self.store.scan("cloud/"):
            d = json.loads(raw)
            if not d.get("agents") and "config" in d:
                out.append((d["org"], d["id"]))
        return out

    def load_any(self, org: str, cloud_id: str) -> dict[str, Any] | None:
        raw = self.store.get(cloud_key(org, cloud_id))
        return load(CLOUD, raw) if raw else None

    async def poll(self, org: str, cloud_id: str) -> dict[str, Any]:
        """One poll: list what the provider has, diff it into the store, record the status.
        Returns the new status; raises nothing (failures are recorded on the cloud)."""
        doc = self.load_any(org, cloud_id)
        if doc is None:
            return {"state": "removed"}
        status = self.status(org, cloud_id)
        started = time.monotonic()
        try:
            spec = registry.spec(doc["provider"])
            catalog = time.time() - float(status.get("catalog_at", 0)) > CATALOG_EVERY
            # a poll is several calls (machines, volumes, networks, each zone's records...)
            snap = await self.call(doc, "poll", lambda a: _snapshot(a, spec, doc, catalog),
                                   what="polling", timeout=POLL_CALLS * self.settings.cloud_call_timeout)
            outcome = None
            for _ in range(MAX_DIFFS):
                cloud_raw = self.store.get(cloud_key(org, cloud_id))
                if cloud_raw is None:
                    return {"state": "removed"}  # removed while the provider answered: keep nothing
                outcome = await asyncio.to_thread(reconcile, self.store, doc, snap,
                                                  spec.stopped_is_free)
                if self._store_outcome(outcome, cloud_key(org, cloud_id), cloud_raw):
                    break
            else:
                raise ProviderError(f"the inventory kept changing while this poll stored it "
                                    f"({MAX_DIFFS} tries); the next poll will try again")
            links = await asyncio.to_thread(link_agents, self.store, org, cloud_id)
            for link in links:
                with contextlib.suppress(Conflict):  # changed meanwhile: the next poll links
                    self.writer.commit(POLLER, link)
            new = {"state": "ok", "failures": 0, "last_poll": iso(), "last_success": iso(),
                   "duration_ms": round((time.monotonic() - started) * 1000),
                   "catalog_at": time.time() if catalog else status.get("catalog_at", 0),
                   "warnings": snap.warnings, "counts": outcome.counts, "last_error": ""}
            if status.get("state") == "error":
                self.writer.commit(POLLER, Change("cloud.poll_recovered", org=org, target_kind="cloud",
                                                  target_id=cloud_id, details={"name": doc["name"]}))
        except OvercastError as exc:
            # error_field: the credential a refusal is about (credentials.<name>), when known
            field = str(exc.details.get("field", ""))
            new = dict(status, state="error", failures=int(status.get("failures", 0)) + 1,
                       last_poll=iso(), last_error=exc.message, error_code=exc.code,
                       error_field=field, duration_ms=round((time.monotonic() - started) * 1000))
            if status.get("state") != "error":  # audit the change into failure, not every retry
                details = {"name": doc["name"], "error": exc.message, "code": exc.code}
                if field:
                    details["field"] = field
                self.writer.commit(POLLER, Change("cloud.poll_failed", org=org, target_kind="cloud",
                                                  target_id=cloud_id, outcome="failed",
                                                  details=details))
        except Exception:
            log.exception("polling cloud %s failed", cloud_id)
            new = dict(status, state="error", failures=int(status.get("failures", 0)) + 1,
                       last_poll=iso(), last_error="internal error (see the controller's log)",
                       error_code="internal", error_field="")
        b = Batch()
        b.put(status_key(org, cloud_id), json.dumps(new).encode())
        self.store.write(b)
        return new

    def _store_outcome(self, outcome: Any, cloud_k: str, cloud_raw: bytes) -> bool:
        """Write a poll's diff in one atomic batch, on the condition that neither the cloud
        nor any document it read changed since; False (nothing written) otherwise."""
        batch = outcome.batch()
        batch.expect[cloud_k] = cloud_raw
        try:
            if outcome.changes:
                first = outcome.changes[0]
                for k, v in batch.puts.items():
                    first.put(k, v)
                for k in batch.deletes:
                    first.delete(k)
                first.batch.expect.update(batch.expect)
                self.writer.commit_many(POLLER, outcome.changes)
            elif batch.puts or batch.deletes:
                self.store.write(batch)
        except Conflict:
            return False
        return True

    # ---- inventory reads ---------------------------------------------------------------------
    def cloud_of(self, org: str, doc: dict[str, Any]) -> dict[str, Any]:
        cloud = self.load_any(org, str(doc.get("cloud", "")))
        if cloud is None:
            raise NotFound("the resource's cloud is gone")
        return cloud

    def resource_key(self, kind: str, org: str, rid: str, zone: str = "") -> str:
        return doc_key(kind, org, rid, zone)


def _snapshot(a: Adapter, spec: ProviderSpec, doc: dict[str, Any], catalog: bool) -> Snapshot:
    caps = spec.capabilities
    features = doc.get("features") or {}
    snap = Snapshot(machines=a.list_machines())

    def optional(what: str, fn: Any) -> Any:
        try:
            return fn()
        except OvercastError as exc:  # one kind failing does not fail the poll: it is shown
            snap.warnings.append(f"{what}: {exc.message}")
            return None

    if Capability.VOLUMES in caps:
        snap.volumes = optional("volumes", a.list_volumes)
    if Capability.NETWORKS in caps:
        snap.networks = optional("networks", a.list_networks)
    if Capability.DNS in caps and features.get("dns", True):
        snap.zones = optional("zones", a.list_zones)
        if snap.zones is not None:
            records: dict[str, Any] = {}
            for z in snap.zones:
                rs = optional(f"records of {z.domain}", lambda z=z: a.list_records(z.external_id))
                if rs is not None:
                    records[z.external_id] = rs
            snap.records = records
    if catalog:
        if Capability.SIZES in caps:
            snap.sizes = optional("sizes", a.list_sizes)
        if Capability.IMAGES in caps:
            snap.images = optional("images", a.list_images)
        if Capability.LOCATIONS in caps:
            snap.locations = optional("locations", a.list_locations)
    return snap


def _hint(value: Any) -> str:
    """Enough of an identifier (an API key id, a user name) to recognise it, not to use it."""
    text = str(value)
    return f"{text[:4]}…{text[-4:]}" if len(text) >= 12 else "…"


def _features(spec: ProviderSpec, given: Any) -> dict[str, bool]:
    out = {"compute": True, "dns": Capability.DNS in spec.capabilities}
    if given is None:
        return out
    if not isinstance(given, dict) or not all(isinstance(v, bool) for v in given.values()):
        raise Invalid("features must be an object of true/false", field="features")
    unknown = set(given) - {"compute", "dns", "container", "objectstorage"}
    if unknown:
        raise Invalid(f"unknown feature {sorted(unknown)[0]!r}", field="features")
    if given.get("dns") and Capability.DNS not in spec.capabilities:
        raise Invalid(f"{spec.name} offers no DNS here", field="features.dns")
    out.update({k: v for k, v in given.items() if k in out})
    return out


def _interval(v: Any, default: int) -> int:
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not 5 <= v <= MAX_INTERVAL:
        raise Invalid(f"poll_interval must be 5 to {MAX_INTERVAL} seconds", field="poll_interval")
    return v


def _custom_split(spec: ProviderSpec) -> Any:
    import importlib

    return getattr(importlib.import_module(f"controller.clouds.providers.{spec.name}"),
                   "split_credentials", None)
