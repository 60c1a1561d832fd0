"""A local stand-in for DigitalOcean's API v2: the calls Overcast's adapter makes, answered
as https://docs.digitalocean.com/reference/api/ documents them (Bearer token, JSON bodies,
``links.pages`` pagination, ``{"id", "message"}`` errors, 201/202/204 codes).

``start_fake_digitalocean()`` serves it on a free loopback port from its own thread and
event loop; ``stop()`` ends both. State lives in memory (``server.state``): droplets go from
``new`` to ``active`` on the next read, as the real API reports them once built."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import itertools
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_")


async def _body(request: web.Request) -> Json:
    """The JSON body (the middleware has read and checked it; aiohttp keeps the bytes)."""
    body = json.loads(await request.read() or b"{}")
    return body if isinstance(body, dict) else {}


class ApiError(Exception):
    def __init__(self, status: int, id_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.id, self.message = status, id_, message


def _422(message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message)


NOT_FOUND = ApiError(404, "not_found", "The resource you were accessing could not be found.")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _region(slug: str, name: str, available: bool = True) -> Json:
    return {"slug": slug, "name": name, "available": available,
            "features": ["backups", "ipv6", "metadata", "install_agent", "storage"],
            "sizes": ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-4gb"]}


def _size(slug: str, mem: int, cpus: int, disk: int, monthly: float, regions: list[str]) -> Json:
    return {"slug": slug, "memory": mem, "vcpus": cpus, "disk": disk, "transfer": 1.0 * cpus,
            "price_monthly": monthly, "price_hourly": round(monthly / 672, 5),
            "regions": regions, "available": True, "description": "Basic"}


def _image(id_: int, slug: str, name: str, distro: str) -> Json:
    return {"id": id_, "name": name, "distribution": distro, "slug": slug, "public": True,
            "regions": ["nyc3", "ams3", "fra1"], "created_at": "2024-04-23T12:00:00Z",
            "min_disk_size": 7, "type": "base", "size_gigabytes": 2.3,
            "description": f"{name} x64", "tags": [], "status": "available", "error_message": ""}


def fingerprint(public_key: str) -> str:
    """DigitalOcean's key fingerprint: MD5 of the key blob, colon-separated hex."""
    blob = base64.b64decode(public_key.split()[1])
    return ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())


@dataclass
class State:
    """Everything the fake holds; tests may read and change it."""

    regions: list[Json] = field(default_factory=lambda: [
        _region("nyc3", "New York 3"), _region("ams3", "Amsterdam 3"),
        _region("fra1", "Frankfurt 1"), _region("sfo1", "San Francisco 1", available=False)])
    sizes: list[Json] = field(default_factory=lambda: [
        _size("s-1vcpu-1gb", 1024, 1, 25, 6.0, ["nyc3", "ams3", "fra1"]),
        _size("s-1vcpu-2gb", 2048, 1, 50, 12.0, ["nyc3", "ams3", "fra1"]),
        _size("s-2vcpu-4gb", 4096, 2, 80, 24.0, ["nyc3", "fra1"])])
    images: list[Json] = field(default_factory=lambda: [
        _image(129211873, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu"),
        _image(130000001, "debian-12-x64", "12 x64", "Debian")])
    droplets: dict[int, Json] = field(default_factory=dict)
    keys: dict[int, Json] = field(default_factory=dict)
    volumes: dict[str, Json] = field(default_factory=dict)
    domains: dict[str, Json] = field(default_factory=dict)
    records: dict[str, list[Json]] = field(default_factory=dict)
    actions: list[Json] = field(default_factory=list)
    requests: list[tuple[str, str, Json]] = field(default_factory=list)  # method, path, body
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(3164400))

    def find(self, kind: str, value: Any) -> Json:
        items = {"region": self.regions, "size": self.sizes, "image": self.images}[kind]
        for item in items:
            if value in (item.get("slug"), item.get("id")) and item.get("available", True):
                return item
        raise _422(f"You specified an invalid {kind} for Droplet creation.")

    def droplet(self, id_: str | int) -> Json:
        try:
            return self.droplets[int(id_)]
        except (KeyError, ValueError):
            raise NOT_FOUND from None

    def settle(self) -> None:
        """Droplets built since the last read are active and have their addresses now."""
        for d in self.droplets.values():
            if d["status"] == "new":
                n = d["id"] % 250 + 1
                d["status"] = "active"
                d["networks"]["v4"] = [
                    {"ip_address": f"203.0.113.{n}", "netmask": "255.255.255.0",
                     "gateway": "203.0.113.254", "type": "public"},
                    {"ip_address": f"10.110.0.{n}", "netmask": "255.255.240.0",
                     "gateway": "10.110.0.1", "type": "private"}]

    def action(self, type_: str, resource_id: int | str, kind: str, region: Json) -> Json:
        a = {"id": next(self.ids), "status": "in-progress", "type": type_, "started_at": _now(),
             "completed_at": None, "resource_id": resource_id, "resource_type": kind,
             "region": region, "region_slug": region["slug"]}
        self.actions.append(a)
        return a


class Api:
    def __init__(self, state: State, token: str, page_cap: int) -> None:
        self.s, self.token, self.page_cap = state, token, page_cap

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        r = app.router
        r.add_get("/v2/account", self.account)
        r.add_get("/v2/sizes", self.lister("sizes", lambda: self.s.sizes))
        r.add_get("/v2/images", self.lister("images", lambda: self.s.images))
        r.add_get("/v2/regions", self.lister("regions", lambda: self.s.regions))
        r.add_get("/v2/droplets", self.list_droplets)
        r.add_post("/v2/droplets", self.create_droplet)
        r.add_get("/v2/droplets/{id}", self.get_droplet)
        r.add_delete("/v2/droplets/{id}", self.delete_droplet)
        r.add_post("/v2/droplets/{id}/actions", self.droplet_action)
        r.add_get("/v2/account/keys", self.lister("ssh_keys", lambda: list(self.s.keys.values())))
        r.add_post("/v2/account/keys", self.create_key)
        r.add_get("/v2/volumes", self.lister("volumes", lambda: list(self.s.volumes.values())))
        r.add_post("/v2/volumes", self.create_volume)
        r.add_get("/v2/volumes/{id}", self.get_volume)
        r.add_delete("/v2/volumes/{id}", self.delete_volume)
        r.add_post("/v2/volumes/actions", self.volume_action)
        r.add_post("/v2/volumes/{id}/actions", self.volume_action)
        r.add_get("/v2/domains", self.lister("domains", lambda: list(self.s.domains.values())))
        r.add_post("/v2/domains", self.create_domain)
        r.add_get("/v2/domains/{name}", self.get_domain)
        r.add_delete("/v2/domains/{name}", self.delete_domain)
        r.add_get("/v2/domains/{name}/records", self.list_records)
        r.add_post("/v2/domains/{name}/records", self.create_record)
        r.add_delete("/v2/domains/{name}/records/{id}", self.delete_record)
        return app

    def lister(self, key: str, items: Callable[[], list[Json]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.page(request, key, items())
        return handler

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body: Json = {}
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "unauthorized", "Unable to authenticate you")
            if request.can_read_body:
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    raise ApiError(400, "bad_request", "unable to parse request body") from None
            self.s.requests.append((request.method, request.path, body))
            return await handler(request)
        except web.HTTPNotFound:
            return self.error(NOT_FOUND)
        except web.HTTPMethodNotAllowed:
            return self.error(ApiError(405, "method_not_allowed", "Method not allowed"))
        except ApiError as exc:
            return self.error(exc)

    @staticmethod
    def error(exc: ApiError) -> web.Response:
        return web.json_response({"id": exc.id, "message": exc.message,
                                  "request_id": str(uuid.uuid4())}, status=exc.status)

    async def page(self, request: web.Request, key: str, items: list[Json]) -> web.Response:
        """One page, as DigitalOcean paginates: ``per_page`` (at most the cap), ``page``, and
        ``links.pages`` with absolute first/prev/next/last URLs when there is more than one."""
        try:
            per_page = max(1, min(int(request.query.get("per_page", 20)), self.page_cap))
            page = max(1, int(request.query.get("page", 1)))
        except ValueError:
            raise _422("page and per_page must be integers") from None
        last = max(1, -(-len(items) // per_page))
        body: Json = {key: items[(page - 1) * per_page:page * per_page], "links": {},
                      "meta": {"total": len(items)}}
        if last > 1:
            def link(n: int) -> str:
                return str(request.url.with_query({"page": n, "per_page": per_page}))
            pages: dict[str, str] = {}
            if page > 1:
                pages.update(first=link(1), prev=link(page - 1))
            if page < last:
                pages.update(next=link(page + 1), last=link(last))
            body["links"] = {"pages": pages}
        return web.json_response(body)

    # -- account, droplets ------------------------------------------------------------------------
    async def account(self, request: web.Request) -> web.Response:
        return web.json_response({"account": {
            "droplet_limit": 25, "floating_ip_limit": 3, "volume_limit": 100,
            "email": "dev@example.com", "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
            "email_verified": True, "status": "active", "status_message": ""}})

    async def list_droplets(self, request: web.Request) -> web.Response:
        self.s.settle()
        droplets = list(self.s.droplets.values())
        if "tag_name" in request.query:
            droplets = [d for d in droplets if request.query["tag_name"] in d["tags"]]
        return await self.page(request, "droplets", droplets)

    async def get_droplet(self, request: web.Request) -> web.Response:
        self.s.settle()
        return web.json_response({"droplet": self.s.droplet(request.match_info["id"])})

    async def create_droplet(self, request: web.Request) -> web.Response:
        b: Json = await _body(request)
        if not b.get("name"):
            raise _422("Name is required and must be a valid hostname.")
        size, image = self.s.find("size", b.get("size")), self.s.find("image", b.get("image"))
        region = self.s.find("region", b.get("region"))
        if region["slug"] not in size["regions"]:
            raise _422("Size is not available in this region.")
        for ref in b.get("ssh_keys") or []:
            key = next((k for k in self.s.keys.values() if ref in (k["id"], k["fingerprint"])), None)
            if key is None:
                raise _422("You specified invalid SSH key IDs or fingerprints for Droplet creation.")
        tags = b.get("tags") or []
        if any(not t or set(t) - TAG_CHARS or len(t) > 255 for t in tags):
            raise _422("Tags may contain letters, numbers, colons, dashes, and underscores.")
        id_ = next(self.s.ids)
        self.s.droplets[id_] = d = {
            "id": id_, "name": b["name"], "memory": size["memory"], "vcpus": size["vcpus"],
            "disk": size["disk"], "locked": False, "status": "new", "kernel": None,
            "created_at": _now(), "features": ["virtio"], "backup_ids": [], "snapshot_ids": [],
            "next_backup_window": None, "image": image, "volume_ids": [], "size": size,
            "size_slug": size["slug"], "networks": {"v4": [], "v6": []}, "region": region,
            "tags": tags, "vpc_uuid": "5a4981aa-9653-4bd1-bef5-d6bff52042e4"}
        action = self.s.action("create", id_, "droplet", region)
        return web.json_response({"droplet": d, "links": {"actions": [
            {"id": action["id"], "rel": "create",
             "href": str(request.url.with_path(f"/v2/actions/{action['id']}"))}]}}, status=202)

    async def delete_droplet(self, request: web.Request) -> web.Response:
        d = self.s.droplet(request.match_info["id"])
        del self.s.droplets[d["id"]]
        for v in self.s.volumes.values():
            if d["id"] in v["droplet_ids"]:
                v["droplet_ids"].remove(d["id"])
        return web.Response(status=204)

    async def droplet_action(self, request: web.Request) -> web.Response:
        self.s.settle()
        d, b = self.s.droplet(request.match_info["id"]), await _body(request)
        type_ = b.get("type")
        on = d["status"] == "active"
        if type_ == "power_on":
            if on:
                raise _422("Droplet is already powered on.")
            d["status"] = "active"
        elif type_ in ("power_off", "shutdown"):
            if not on:
                raise _422("Droplet is already powered off.")
            d["status"] = "off"
        elif type_ in ("reboot", "power_cycle"):
            d["status"] = "active"
        elif type_ == "resize":
            if on:
                raise _422("Droplet is currently on. Please power it off to run this event.")
            size = self.s.find("size", b.get("size"))
            d.update(size=size, size_slug=size["slug"], memory=size["memory"], vcpus=size["vcpus"])
            if b.get("disk"):
                d["disk"] = size["disk"]
        elif type_ == "rename":
            if not b.get("name"):
                raise _422("Name is required and must be a valid hostname.")
            d["name"] = b["name"]
        else:
            raise _422(f"{type_!r} is not a valid action type.")
        action = self.s.action(str(type_), d["id"], "droplet", d["region"])
        return web.json_response({"action": action}, status=201)

    # -- SSH keys ---------------------------------------------------------------------------------
    async def create_key(self, request: web.Request) -> web.Response:
        b = await _body(request)
        public_key = str(b.get("public_key") or "").strip()
        try:
            fp = fingerprint(public_key)
        except (IndexError, ValueError, binascii.Error):
            raise _422("Key invalid, key should be of the format `type key [comment]`") from None
        if not b.get("name"):
            raise _422("Name can't be blank")
        if any(k["fingerprint"] == fp for k in self.s.keys.values()):
            raise _422("SSH Key is already in use on your account")
        id_ = next(self.s.ids)
        self.s.keys[id_] = key = {"id": id_, "fingerprint": fp, "public_key": public_key,
                                  "name": b["name"]}
        return web.json_response({"ssh_key": key}, status=201)

    # -- volumes ----------------------------------------------------------------------------------
    def volume(self, id_: str) -> Json:
        if id_ not in self.s.volumes:
            raise NOT_FOUND
        return self.s.volumes[id_]

    async def get_volume(self, request: web.Request) -> web.Response:
        return web.json_response({"volume": self.volume(request.match_info["id"])})

    async def create_volume(self, request: web.Request) -> web.Response:
        b = await _body(request)
        name, size = str(b.get("name") or ""), b.get("size_gigabytes")
        if not name or not name[0].isalpha() or not name.replace("-", "").isalnum() \
                or name.lower() != name or len(name) > 64:
            raise _422("name must be lowercase letters, numbers and hyphens, starting with a letter")
        if not isinstance(size, int) or not 1 <= size <= 16384:
            raise _422("size_gigabytes must be between 1 and 16384")
        try:
            region = self.s.find("region", b.get("region"))
        except ApiError:
            raise _422("region is not valid") from None
        if any(v["name"] == name and v["region"]["slug"] == region["slug"]
               for v in self.s.volumes.values()):
            raise ApiError(409, "conflict", "a volume with that name already exists in the region")
        vid = str(uuid.uuid4())
        self.s.volumes[vid] = v = {
            "id": vid, "region": region, "droplet_ids": [], "name": name,
            "description": b.get("description") or "", "size_gigabytes": size,
            "created_at": _now(), "filesystem_type": b.get("filesystem_type") or "",
            "filesystem_label": "", "tags": b.get("tags") or []}
        return web.json_response({"volume": v}, status=201)

    async def delete_volume(self, request: web.Request) -> web.Response:
        v = self.volume(request.match_info["id"])
        if v["droplet_ids"]:
            raise ApiError(409, "conflict", "Volume is attached to a Droplet; detach it first.")
        del self.s.volumes[v["id"]]
        return web.Response(status=204)

    async def volume_action(self, request: web.Request) -> web.Response:
        """By id (``/v2/volumes/{id}/actions``) or by ``volume_name`` + ``region``."""
        b = await _body(request)
        if "id" in request.match_info:
            v = self.volume(request.match_info["id"])
        else:
            found: Json | None = next((v for v in self.s.volumes.values()
                                       if v["name"] == b.get("volume_name")
                                       and v["region"]["slug"] == b.get("region")), None)
            if found is None:
                raise NOT_FOUND
            v = found
        if not isinstance(b.get("droplet_id"), int):
            raise ApiError(400, "bad_request", "droplet_id must be an integer")
        d = self.s.droplet(b["droplet_id"])
        if b.get("type") == "attach":
            if d["region"]["slug"] != v["region"]["slug"]:
                raise _422("Droplet and volume must be in the same region.")
            if v["droplet_ids"]:
                raise _422("Volume is already attached to a Droplet.")
            v["droplet_ids"].append(d["id"])
            d["volume_ids"].append(v["id"])
        elif b.get("type") == "detach":
            if d["id"] not in v["droplet_ids"]:
                raise _422("Volume is not attached to this Droplet.")
            v["droplet_ids"].remove(d["id"])
            d["volume_ids"].remove(v["id"])
        else:
            raise _422(f"{b.get('type')!r} is not a valid action type.")
        action = self.s.action(f"{b['type']}_volume", v["id"], "volume", v["region"])
        return web.json_response({"action": action}, status=202)

    # -- domains ----------------------------------------------------------------------------------
    def domain(self, name: str) -> Json:
        if name not in self.s.domains:
            raise NOT_FOUND
        return self.s.domains[name]

    def add_record(self, domain: str, type_: str, name: str, data: str, ttl: int = 1800,
                   priority: int | None = None) -> Json:
        rec = {"id": next(self.s.ids), "type": type_, "name": name, "data": data,
               "priority": priority, "port": None, "ttl": ttl, "weight": None, "flags": None,
               "tag": None}
        self.s.records[domain].append(rec)
        return rec

    async def create_domain(self, request: web.Request) -> web.Response:
        b = await _body(request)
        name = str(b.get("name") or "").lower().rstrip(".")
        if "." not in name:
            raise _422("Name is invalid")
        if name in self.s.domains:
            raise _422("Name already exists")
        self.s.domains[name] = dom = {"name": name, "ttl": 1800, "zone_file": None}
        self.s.records[name] = []
        self.add_record(name, "SOA", "@", "1800")
        for n in (1, 2, 3):
            self.add_record(name, "NS", "@", f"ns{n}.digitalocean.com")
        if b.get("ip_address"):
            self.add_record(name, "A", "@", str(b["ip_address"]))
        return web.json_response({"domain": dom}, status=201)

    async def get_domain(self, request: web.Request) -> web.Response:
        return web.json_response({"domain": self.domain(request.match_info["name"])})

    async def delete_domain(self, request: web.Request) -> web.Response:
        name = self.domain(request.match_info["name"])["name"]
        del self.s.domains[name], self.s.records[name]
        return web.Response(status=204)

    async def list_records(self, request: web.Request) -> web.Response:
        name = self.domain(request.match_info["name"])["name"]
        return await self.page(request, "domain_records", self.s.records[name])

    async def create_record(self, request: web.Request) -> web.Response:
        name, b = self.domain(request.match_info["name"])["name"], await _body(request)
        type_, data = b.get("type"), str(b.get("data") or "")
        if type_ not in ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "TXT", "SRV"):
            raise _422("Type is not a valid record type")
        if not data:
            raise _422("Data needs to end with a dot (.)" if type_ == "CNAME" else "Data is invalid")
        if type_ in ("A", "AAAA"):
            try:
                ip = ipaddress.ip_address(data)
            except ValueError:
                raise _422("IP address did not match IPv4 format (e.g. 127.0.0.1).") from None
            if ip.version != (4 if type_ == "A" else 6):
                raise _422(f"IP address is not valid for a {type_} record.")
        if type_ in ("MX", "SRV") and b.get("priority") is None:
            raise _422("Priority is required for MX and SRV records.")
        ttl = b.get("ttl") or 1800
        if not isinstance(ttl, int) or ttl < 30:
            raise _422("TTL must be at least 30 seconds.")
        rec = self.add_record(name, str(type_), str(b.get("name") or "@"), data, ttl,
                              b.get("priority"))
        return web.json_response({"domain_record": rec}, status=201)

    async def delete_record(self, request: web.Request) -> web.Response:
        name = self.domain(request.match_info["name"])["name"]
        records = self.s.records[name]
        rec = next((r for r in records if str(r["id"]) == request.match_info["id"]), None)
        if rec is None:
            raise NOT_FOUND
        records.remove(rec)
        return web.Response(status=204)


class ThreadedApp:
    """An aiohttp app served on a free 127.0.0.1 port from its own thread and event loop, so
    blocking clients (libcloud) and sync tests can use it. ``stop()`` is sync and idempotent."""

    def __init__(self, app: web.Application, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{name} did not start")
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class FakeServer(ThreadedApp):
    """The fake, running: ``url`` is the endpoint to give the adapter, ``token`` the one
    token it accepts, ``state`` what it holds. ``accept(token)`` changes the token it
    accepts (revoking the old one, as a user does in DigitalOcean's console)."""

    def __init__(self, api: Api, token: str, state: State) -> None:
        super().__init__(api.app(), "fake-digitalocean")
        self.url, self.token, self.state = self.base_url, token, state
        self._api = api

    def accept(self, token: str) -> None:
        self._api.token = self.token = token


def start_fake_digitalocean(token: str = "do-fake-token-0123456789", page_cap: int = 200,
                            state: State | None = None) -> FakeServer:
    """Serve the fake on 127.0.0.1 (a free port). ``page_cap`` is the largest page it returns
    (DigitalOcean's is 200); lower it to prove pagination."""
    state = state or State()
    return FakeServer(Api(state, token, page_cap), token, state)
