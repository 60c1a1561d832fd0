"""A local stand-in for an OpenStack cloud: keystone v3 password auth with a service catalog,
nova (servers, actions, flavors, key pairs, volume attachments, availability zones), glance
v2 images, neutron networks and subnets, cinder v3 volumes. The calls Overcast's adapter
makes, answered as the OpenStack API references document them (``X-Subject-Token`` /
``X-Auth-Token``, ``*_links`` and glance ``next`` pagination, each service's error body).

``start_fake_openstack()`` serves it on a free loopback port from its own thread and event
loop; ``stop()`` ends both. State lives in memory (``server.state``). Transitional statuses
(BUILD, RESIZE, REBOOT, creating) are seen by one read, then settle."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.fake_digitalocean import ThreadedApp

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

C, N, V = "/compute/v2.1", "/networking/v2.0", "/volume/v3/{project}"


async def _body(request: web.Request) -> Json:
    """The JSON body (the middleware has read and checked it; aiohttp keeps the bytes)."""
    body = json.loads(await request.read() or b"{}")
    return body if isinstance(body, dict) else {}


class ApiError(Exception):
    def __init__(self, status: int, body: Json) -> None:
        super().__init__(str(body))
        self.status, self.body = status, body


def nova(status: int, message: str) -> ApiError:
    kind = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 409: "conflictingRequest"}
    return ApiError(status, {kind[status]: {"code": status, "message": message}})


def neutron(status: int, type_: str, message: str) -> ApiError:
    return ApiError(status, {"NeutronError": {"type": type_, "message": message, "detail": ""}})


UNAUTHORIZED = ApiError(401, {"error": {"code": 401, "title": "Unauthorized", "message":
                                        "The request you have made requires authentication."}})


def _now(delta: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flavor(id_: str, name: str, ram: int, disk: int, vcpus: int) -> Json:
    return {"id": id_, "name": name, "ram": ram, "disk": disk, "vcpus": vcpus, "swap": "",
            "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
            "rxtx_factor": 1.0, "os-flavor-access:is_public": True, "links": []}


def _image(name: str, distro: str) -> Json:
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "name": name, "status": "active",
            "visibility": "public", "protected": False, "tags": [], "os_hidden": False,
            "container_format": "bare", "disk_format": "qcow2", "min_disk": 1, "min_ram": 0,
            "size": 21430272, "os_type": "linux", "os_distro": distro,
            "created_at": "2024-05-02T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z"}


def fingerprint(public_key: str) -> str:
    blob = base64.b64decode(public_key.split()[1], validate=True)
    return ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())


@dataclass
class State:
    """Everything the fake holds; tests may read and change it (``tokens.clear()`` revokes)."""

    user: str = "demo"
    password: str = "secret-pass"
    tenant: str = "demo"
    domain: str = "Default"
    region: str = "RegionOne"
    project_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tokens: dict[str, str] = field(default_factory=dict)   # token -> expires_at
    auth_count: int = 0
    zones: list[str] = field(default_factory=lambda: ["nova"])
    flavors: list[Json] = field(default_factory=lambda: [
        _flavor("1", "m1.tiny", 512, 1, 1), _flavor("2", "m1.small", 2048, 20, 1),
        _flavor("3", "m1.medium", 4096, 40, 2)])
    images: list[Json] = field(default_factory=lambda: [
        _image("cirros-0.6.2-x86_64-disk", "cirros"), _image("ubuntu-22.04", "ubuntu"),
        _image("debian-12", "debian")])
    servers: dict[str, Json] = field(default_factory=dict)
    keypairs: dict[str, Json] = field(default_factory=dict)
    networks: dict[str, Json] = field(default_factory=dict)
    subnets: dict[str, Json] = field(default_factory=dict)
    volumes: dict[str, Json] = field(default_factory=dict)
    pending: dict[str, tuple[Json, Json]] = field(default_factory=dict)  # id -> (obj, later)
    ports: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # server -> (net, subnet)
    resizes: dict[str, tuple[str, Json]] = field(default_factory=dict)  # server -> (status, flavor)
    requests: list[tuple[str, str, Json]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, cidr, external in (("private", "10.0.0.0/26", False),
                                     ("public", "203.0.113.0/24", True)):
            net = self.add_network(name, external)
            self.add_subnet(net, f"{name}-subnet", cidr)

    def add_network(self, name: str, external: bool = False) -> Json:
        nid = str(uuid.uuid4())
        self.networks[nid] = net = {
            "id": nid, "name": name, "status": "ACTIVE", "subnets": [], "admin_state_up": True,
            "shared": False, "tenant_id": self.project_id, "project_id": self.project_id,
            "router:external": external, "mtu": 1450, "availability_zones": ["nova"],
            "tags": [], "description": "", "is_default": False, "port_security_enabled": True,
            "created_at": _now(), "updated_at": _now(), "revision_number": 1}
        return net

    def add_subnet(self, net: Json, name: str, cidr: str) -> Json:
        sid, ip = str(uuid.uuid4()), ipaddress.ip_network(cidr)
        hosts = list(ip.hosts()) if ip.num_addresses <= 65536 else [ip[1], ip[-2]]
        self.subnets[sid] = sub = {
            "id": sid, "name": name, "network_id": net["id"], "cidr": str(ip),
            "ip_version": ip.version, "gateway_ip": str(hosts[0]), "enable_dhcp": True,
            "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}],
            "dns_nameservers": [], "host_routes": [], "tenant_id": self.project_id,
            "project_id": self.project_id, "description": "", "tags": [],
            "created_at": _now(), "updated_at": _now(), "revision_number": 0}
        net["subnets"].append(sid)
        return sub

    def settle(self, obj: Json) -> Json:
        """One read sees a transitional status; the next sees where it settles."""
        held = self.pending.get(obj["id"])
        if held is not None:
            if held[1].pop("_seen", False):
                obj.update(held[1])
                del self.pending[obj["id"]]
            else:
                held[1]["_seen"] = True
        return obj

    def later(self, obj: Json, now: Json, then: Json) -> None:
        obj.update(now, updated=_now())
        self.pending[obj["id"]] = (obj, dict(then))


class Api:
    def __init__(self, state: State, page_cap: int) -> None:
        self.s, self.page_cap = state, page_cap

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        add = app.router.add_route
        for method, path, handler in (
            ("POST", "/identity/v3/auth/tokens", self.auth),
            ("GET", f"{C}/servers/detail", self.list_servers),
            ("POST", f"{C}/servers", self.create_server),
            ("GET", f"{C}/servers/{{id}}", self.get_server),
            ("PUT", f"{C}/servers/{{id}}", self.update_server),
            ("DELETE", f"{C}/servers/{{id}}", self.delete_server),
            ("POST", f"{C}/servers/{{id}}/action", self.server_action),
            ("POST", f"{C}/servers/{{id}}/os-volume_attachments", self.attach),
            ("DELETE", f"{C}/servers/{{id}}/os-volume_attachments/{{vid}}", self.detach),
            ("GET", f"{C}/flavors/detail", self.flavors),
            ("GET", f"{C}/os-keypairs", self.list_keypairs),
            ("POST", f"{C}/os-keypairs", self.import_keypair),
            ("GET", f"{C}/os-availability-zone", self.zones),
            ("GET", "/image/v2/images", self.images),
            ("GET", f"{N}/networks", self.list_networks),
            ("POST", f"{N}/networks", self.create_network),
            ("GET", f"{N}/networks/{{id}}", self.get_network),
            ("DELETE", f"{N}/networks/{{id}}", self.delete_network),
            ("GET", f"{N}/subnets", self.list_subnets),
            ("POST", f"{N}/subnets", self.create_subnet),
            ("DELETE", f"{N}/subnets/{{id}}", self.delete_subnet),
            ("GET", f"{V}/volumes/detail", self.list_volumes),
            ("POST", f"{V}/volumes", self.create_volume),
            ("GET", f"{V}/volumes/{{id}}", self.get_volume),
            ("DELETE", f"{V}/volumes/{{id}}", self.delete_volume),
        ):
            add(method, path, handler)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body: Json = {}
        try:
            if not request.path.startswith("/identity/") and \
                    request.headers.get("X-Auth-Token") not in self.s.tokens:
                raise UNAUTHORIZED
            if request.can_read_body:
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    raise nova(400, "Malformed request body") from None
            if request.match_info.get("project", self.s.project_id) != self.s.project_id:
                raise nova(403, "Policy doesn't allow this for another project.")
            self.s.requests.append((request.method, request.path_qs, body))
            return await handler(request)
        except web.HTTPNotFound:
            return web.json_response(nova(404, "The resource could not be found.").body, status=404)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.status)

    def page(self, request: web.Request, key: str, items: list[Json]) -> Json:
        """Nova/cinder paging: ``limit`` (capped), ``marker``; a ``next`` link on a full page."""
        try:
            limit = max(1, min(int(request.query.get("limit", self.page_cap)), self.page_cap))
        except ValueError:
            raise nova(400, "limit must be an integer") from None
        start = 0
        if "marker" in request.query:
            ids = [i["id"] for i in items]
            if request.query["marker"] not in ids:
                raise nova(400, f"marker [{request.query['marker']}] not found")
            start = ids.index(request.query["marker"]) + 1
        chunk = items[start:start + limit]
        out: Json = {key: chunk}
        if len(chunk) == limit and chunk:
            href = request.url.with_query({"limit": limit, "marker": chunk[-1]["id"]})
            out[f"{key}_links"] = [{"rel": "next", "href": str(href)}]
        return out

    # -- keystone --------------------------------------------------------------------------------
    async def auth(self, request: web.Request) -> web.Response:
        a = (await _body(request)).get("auth", {})
        user = a.get("identity", {}).get("password", {}).get("user", {})
        project = a.get("scope", {}).get("project", {})
        pdomain = project.get("domain", {})
        if (user.get("name"), user.get("password"), user.get("domain", {}).get("name")) != \
                (self.s.user, self.s.password, self.s.domain) or project.get("name") != self.s.tenant \
                or (pdomain.get("id") or "").lower() != "default":
            raise UNAUTHORIZED
        self.s.auth_count += 1
        token, expires = "gAAAA" + uuid.uuid4().hex, _now(3600)
        self.s.tokens[token] = expires
        base = f"{request.scheme}://{request.host}"
        services = (("identity", "keystone", "/identity"), ("compute", "nova", C),
                    ("image", "glance", "/image"), ("network", "neutron", "/networking"),
                    ("volumev3", "cinderv3", V.replace("{project}", self.s.project_id)),
                    ("block-storage", "cinder", V.replace("{project}", self.s.project_id)))
        catalog = [{"id": uuid.uuid4().hex, "type": t, "name": n, "endpoints": [
            {"id": uuid.uuid4().hex, "interface": i, "region": self.s.region,
             "region_id": self.s.region, "url": base + path} for i in ("public", "internal")]}
            for t, n, path in services]
        domain = {"id": "default", "name": "Default"}
        return web.json_response({"token": {
            "methods": ["password"], "expires_at": expires, "issued_at": _now(),
            "audit_ids": [uuid.uuid4().hex[:22]], "is_domain": False,
            "user": {"id": uuid.uuid5(uuid.NAMESPACE_DNS, self.s.user).hex,
                     "name": self.s.user, "domain": domain, "password_expires_at": None},
            "project": {"id": self.s.project_id, "name": self.s.tenant, "domain": domain},
            "roles": [{"id": uuid.uuid4().hex, "name": "member"}], "catalog": catalog}},
            status=201, headers={"X-Subject-Token": token})

    # -- nova ------------------------------------------------------------------------------------
    def server(self, sid: str) -> Json:
        if sid not in self.s.servers:
            raise nova(404, f"Instance {sid} could not be found.")
        return self.s.settle(self.s.servers[sid])

    async def list_servers(self, request: web.Request) -> web.Response:
        servers = [self.s.settle(s) for s in self.s.servers.values()]
        return web.json_response(self.page(request, "servers", servers))

    async def get_server(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self.server(request.match_info["id"])})

    async def create_server(self, request: web.Request) -> web.Response:
        b = (await _body(request)).get("server") or {}
        flavor = next((f for f in self.s.flavors if f["id"] == b.get("flavorRef")), None)
        if not b.get("name") or flavor is None:
            raise nova(400, "Invalid flavorRef provided." if b.get("name") else "name is required")
        image = next((i for i in self.s.images if i["id"] == b.get("imageRef")), None)
        if image is None:
            raise nova(400, "Can not find requested image")
        if b.get("key_name") and b["key_name"] not in self.s.keypairs:
            raise nova(400, "Invalid key_name provided.")
        if b.get("availability_zone", "nova") not in self.s.zones:
            raise nova(400, "The requested availability zone is not available")
        meta = b.get("metadata") or {}
        if any(not isinstance(v, str) or len(v) > 255 or len(k) > 255 for k, v in meta.items()):
            raise nova(400, "Invalid input for field/attribute metadata.")
        try:
            base64.b64decode(b.get("user_data") or "", validate=True)
        except binascii.Error:
            raise nova(400, "User data needs to be valid base 64.") from None
        nets = [n.get("uuid") for n in b.get("networks") or []]
        if any(n not in self.s.networks for n in nets):
            raise nova(400, "Network could not be found.")
        if not nets:
            own = [n["id"] for n in self.s.networks.values() if not n["router:external"]]
            if len(own) > 1:
                raise nova(409, "Multiple possible networks found, use a Network ID to be more specific.")
            nets = own
        sid = str(uuid.uuid4())
        addresses: Json = {}
        ports = self.s.ports[sid] = []
        for nid in nets:
            net = self.s.networks[nid]
            sub = self.s.subnets[net["subnets"][0]]
            used = sum(1 for ps in self.s.ports.values() for p in ps if p[1] == sub["id"])
            ip = ipaddress.ip_network(sub["cidr"])[used + 10]
            ports.append((nid, sub["id"]))
            addresses.setdefault(net["name"], []).append({
                "version": ip.version, "addr": str(ip), "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:" + uuid.uuid4().bytes[:3].hex(":")})
        link = f"{request.scheme}://{request.host}{C}/servers/{sid}"
        self.s.servers[sid] = srv = {
            "id": sid, "name": b["name"], "status": "BUILD", "tenant_id": self.s.project_id,
            "user_id": uuid.uuid5(uuid.NAMESPACE_DNS, self.s.user).hex, "metadata": meta,
            "hostId": hashlib.sha224(sid.encode()).hexdigest(), "created": _now(), "updated": _now(),
            "image": {"id": image["id"], "links": []}, "flavor": {"id": flavor["id"], "links": []},
            "addresses": addresses, "accessIPv4": "", "accessIPv6": "", "progress": 0,
            "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}],
            "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": b.get("availability_zone", "nova"),
            "config_drive": "", "key_name": b.get("key_name"), "security_groups": [{"name": "default"}],
            "OS-EXT-STS:task_state": "spawning", "OS-EXT-STS:vm_state": "building",
            "OS-EXT-STS:power_state": 0, "os-extended-volumes:volumes_attached": []}
        self.s.later(srv, {}, {"status": "ACTIVE", "OS-EXT-STS:task_state": None,
                               "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:power_state": 1})
        return web.json_response({"server": {
            "id": sid, "links": srv["links"], "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}], "adminPass": uuid.uuid4().hex[:12]}}, status=202)

    async def update_server(self, request: web.Request) -> web.Response:
        srv, b = self.server(request.match_info["id"]), (await _body(request)).get("server") or {}
        if "name" in b:
            if not str(b["name"]).strip():
                raise nova(400, "Invalid input for field/attribute name.")
            srv.update(name=b["name"], updated=_now())
        return web.json_response({"server": srv})

    async def delete_server(self, request: web.Request) -> web.Response:
        srv = self.server(request.match_info["id"])
        for v in self.s.volumes.values():
            if any(a["server_id"] == srv["id"] for a in v["attachments"]):
                v.update(status="available", attachments=[])
        del self.s.servers[srv["id"]], self.s.ports[srv["id"]]
        self.s.pending.pop(srv["id"], None)
        return web.Response(status=204)

    async def server_action(self, request: web.Request) -> web.Response:
        srv, b = self.server(request.match_info["id"]), await _body(request)
        if len(b) != 1:
            raise nova(400, "There is no such action: " + ",".join(b))
        (action, arg), = b.items()
        status = srv["status"]
        allowed = {"os-start": ("SHUTOFF",), "os-stop": ("ACTIVE", "ERROR"),
                   "reboot": ("ACTIVE", "SHUTOFF") if (arg or {}).get("type") == "HARD" else ("ACTIVE",),
                   "resize": ("ACTIVE", "SHUTOFF"), "confirmResize": ("VERIFY_RESIZE",),
                   "suspend": ("ACTIVE",), "resume": ("SUSPENDED",)}
        if action not in allowed:
            raise nova(400, f"There is no such action: {action}")
        if status not in allowed[action]:
            raise nova(409, f"Cannot '{action}' instance {srv['id']} while it is in vm_state "
                            f"{srv['OS-EXT-STS:vm_state']}")
        vm = {"ACTIVE": "active", "SHUTOFF": "stopped", "SUSPENDED": "suspended"}
        code = 202
        if action == "resize":
            flavor = next((f for f in self.s.flavors if f["id"] == (arg or {}).get("flavorRef")), None)
            if flavor is None:
                raise nova(400, "Invalid flavorRef provided.")
            if flavor["id"] == srv["flavor"]["id"]:
                raise nova(400, "When resizing, instances must change flavor!")
            self.s.resizes[srv["id"]] = (status, srv["flavor"])
            self.s.later(srv, {"status": "RESIZE", "flavor": {"id": flavor["id"], "links": []}},
                         {"status": "VERIFY_RESIZE", "OS-EXT-STS:vm_state": "resized"})
        elif action == "confirmResize":
            before, _ = self.s.resizes.pop(srv["id"])
            srv.update(status=before, updated=_now())
            srv["OS-EXT-STS:vm_state"] = vm[before]
            code = 204
        elif action == "reboot":
            kind = "HARD_REBOOT" if arg.get("type") == "HARD" else "REBOOT"
            self.s.later(srv, {"status": kind}, {"status": "ACTIVE", "OS-EXT-STS:vm_state": "active"})
        else:
            after = {"os-start": "ACTIVE", "os-stop": "SHUTOFF", "suspend": "SUSPENDED",
                     "resume": "ACTIVE"}[action]
            srv.update(status=after, updated=_now())
            srv["OS-EXT-STS:vm_state"] = vm[after]
        return web.Response(status=code)

    async def attach(self, request: web.Request) -> web.Response:
        srv = self.server(request.match_info["id"])
        vid = ((await _body(request)).get("volumeAttachment") or {}).get("volumeId", "")
        vol = self.volume(vid)
        if vol["status"] != "available":
            raise nova(400, f"Invalid volume: volume '{vid}' status must be 'available'. "
                            f"Currently in '{vol['status']}'")
        device = f"/dev/vd{chr(ord('b') + len(srv['os-extended-volumes:volumes_attached']))}"
        vol.update(status="in-use", attachments=[{
            "id": vid, "attachment_id": str(uuid.uuid4()), "volume_id": vid,
            "server_id": srv["id"], "host_name": None, "device": device, "attached_at": _now()}])
        srv["os-extended-volumes:volumes_attached"].append({"id": vid})
        return web.json_response({"volumeAttachment": {
            "device": device, "id": vid, "serverId": srv["id"], "volumeId": vid}})

    async def detach(self, request: web.Request) -> web.Response:
        srv, vid = self.server(request.match_info["id"]), request.match_info["vid"]
        vol = self.s.volumes.get(vid)
        if vol is None or not any(a["server_id"] == srv["id"] for a in vol["attachments"]):
            raise nova(404, f"volume_id not found: {vid}")
        vol.update(status="available", attachments=[])
        srv["os-extended-volumes:volumes_attached"].remove({"id": vid})
        return web.Response(status=202)

    async def flavors(self, request: web.Request) -> web.Response:
        return web.json_response({"flavors": self.s.flavors})

    async def list_keypairs(self, request: web.Request) -> web.Response:
        return web.json_response({"keypairs": [{"keypair": k} for k in self.s.keypairs.values()]})

    async def import_keypair(self, request: web.Request) -> web.Response:
        k = (await _body(request)).get("keypair") or {}
        name, public_key = str(k.get("name") or ""), str(k.get("public_key") or "").strip()
        if not name:
            raise nova(400, "Keypair data is invalid: Keypair name must be string and between 1 and 255 characters long")
        if name in self.s.keypairs:
            raise nova(409, f"Key pair '{name}' already exists.")
        try:
            fp = fingerprint(public_key)
        except (IndexError, ValueError, binascii.Error):
            raise nova(400, "Keypair data is invalid: failed to generate fingerprint") from None
        self.s.keypairs[name] = kp = {"name": name, "public_key": public_key, "fingerprint": fp,
                                      "type": "ssh"}
        return web.json_response({"keypair": kp | {"user_id": self.s.user}})

    async def zones(self, request: web.Request) -> web.Response:
        return web.json_response({"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": None} for z in self.s.zones]})

    # -- glance ----------------------------------------------------------------------------------
    async def images(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", 25)), self.page_cap))
        except ValueError:
            raise ApiError(400, {"message": "limit param must be an integer"}) from None
        ids = [i["id"] for i in self.s.images]
        marker = request.query.get("marker")
        if marker is not None and marker not in ids:
            raise ApiError(400, {"message": f"marker {marker} could not be found"})
        start = ids.index(marker) + 1 if marker else 0
        chunk = self.s.images[start:start + limit]
        out: Json = {"images": chunk, "first": "/v2/images", "schema": "/v2/schemas/images"}
        if len(chunk) == limit and start + limit < len(ids):
            out["next"] = f"/v2/images?marker={chunk[-1]['id']}"
        return web.json_response(out)

    # -- neutron ---------------------------------------------------------------------------------
    def network(self, nid: str) -> Json:
        if nid not in self.s.networks:
            raise neutron(404, "NetworkNotFound", f"Network {nid} could not be found.")
        return self.s.networks[nid]

    def in_use(self, key: int, rid: str) -> bool:
        return any(p[key] == rid for ps in self.s.ports.values() for p in ps)

    async def list_networks(self, request: web.Request) -> web.Response:
        return web.json_response({"networks": list(self.s.networks.values())})

    async def get_network(self, request: web.Request) -> web.Response:
        return web.json_response({"network": self.network(request.match_info["id"])})

    async def create_network(self, request: web.Request) -> web.Response:
        b = (await _body(request)).get("network") or {}
        net = self.s.add_network(str(b.get("name") or ""))
        net.update({k: b[k] for k in ("description", "admin_state_up", "mtu") if k in b})
        return web.json_response({"network": net}, status=201)

    async def delete_network(self, request: web.Request) -> web.Response:
        net = self.network(request.match_info["id"])
        if self.in_use(0, net["id"]):
            raise neutron(409, "NetworkInUse", f"Unable to complete operation on network "
                          f"{net['id']}. There are one or more ports still in use on the network.")
        for sid in net["subnets"]:
            del self.s.subnets[sid]
        del self.s.networks[net["id"]]
        return web.Response(status=204)

    async def list_subnets(self, request: web.Request) -> web.Response:
        return web.json_response({"subnets": list(self.s.subnets.values())})

    async def create_subnet(self, request: web.Request) -> web.Response:
        b = (await _body(request)).get("subnet") or {}
        net = self.network(str(b.get("network_id") or ""))
        try:
            cidr = ipaddress.ip_network(str(b.get("cidr")), strict=False)
        except ValueError:
            raise neutron(400, "HTTPBadRequest", f"Invalid input for cidr. Reason: "
                          f"'{b.get('cidr')}' is not a valid IP subnet.") from None
        if cidr.version != b.get("ip_version", 4):
            raise neutron(400, "HTTPBadRequest", "Invalid input for operation: ip_version does not match cidr.")
        if any(ipaddress.ip_network(self.s.subnets[s]["cidr"]).overlaps(cidr) for s in net["subnets"]):
            raise neutron(400, "InvalidInput", f"Invalid input for operation: Requested subnet with "
                          f"cidr: {cidr} for network: {net['id']} overlaps with another subnet.")
        sub = self.s.add_subnet(net, str(b.get("name") or ""), str(cidr))
        sub.update({k: b[k] for k in ("description", "dns_nameservers", "host_routes") if k in b})
        return web.json_response({"subnet": sub}, status=201)

    async def delete_subnet(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in self.s.subnets:
            raise neutron(404, "SubnetNotFound", f"Subnet {sid} could not be found.")
        if self.in_use(1, sid):
            raise neutron(409, "SubnetInUse", f"Unable to complete operation on subnet {sid}: "
                          "One or more ports have an IP allocation from this subnet.")
        sub = self.s.subnets.pop(sid)
        self.s.networks[sub["network_id"]]["subnets"].remove(sid)
        return web.Response(status=204)

    # -- cinder ----------------------------------------------------------------------------------
    def volume(self, vid: str) -> Json:
        if vid not in self.s.volumes:
            raise nova(404, f"Volume {vid} could not be found.")
        return self.s.settle(self.s.volumes[vid])

    async def list_volumes(self, request: web.Request) -> web.Response:
        vols = [self.s.settle(v) for v in self.s.volumes.values()]
        return web.json_response(self.page(request, "volumes", vols))

    async def get_volume(self, request: web.Request) -> web.Response:
        return web.json_response({"volume": self.volume(request.match_info["id"])})

    async def create_volume(self, request: web.Request) -> web.Response:
        b = (await _body(request)).get("volume") or {}
        if not isinstance(b.get("size"), int) or b["size"] < 1:
            raise nova(400, "Invalid input received: 'size' parameter must be an integer and "
                            "greater than 0.")
        zone = b.get("availability_zone") or "nova"
        if zone not in self.s.zones:
            raise nova(400, f"Invalid input received: Availability zone '{zone}' is invalid.")
        vid = str(uuid.uuid4())
        self.s.volumes[vid] = vol = {
            "id": vid, "name": b.get("name"), "description": b.get("description"),
            "size": b["size"], "status": "creating", "availability_zone": zone, "attachments": [],
            "bootable": "false", "encrypted": False, "multiattach": False, "snapshot_id": None,
            "source_volid": None, "volume_type": b.get("volume_type") or "lvmdriver-1",
            "metadata": b.get("metadata") or {}, "user_id": self.s.user, "links": [],
            "os-vol-tenant-attr:tenant_id": self.s.project_id, "created_at": _now(),
            "updated_at": None}
        self.s.later(vol, {}, {"status": "available"})
        return web.json_response({"volume": vol}, status=202)

    async def delete_volume(self, request: web.Request) -> web.Response:
        vol = self.volume(request.match_info["id"])
        if vol["status"] not in ("available", "error"):
            raise nova(400, "Invalid volume: Volume status must be available or error or "
                            "error_restoring or error_extending or error_managing and must not "
                            "be migrating, attached, belong to a group, have snapshots or be "
                            "disassociated from snapshots after volume transfer.")
        del self.s.volumes[vol["id"]]
        return web.Response(status=202)


class FakeServer(ThreadedApp):
    """The fake, running: ``url`` is the keystone auth URL (``.../identity/v3``, as clouds
    print it); ``user``, ``password``, ``tenant`` (project), ``domain`` and ``region`` are what
    it accepts; ``state`` what it holds."""

    def __init__(self, app: web.Application, state: State) -> None:
        super().__init__(app, "fake-openstack")
        self.url, self.state = f"{self.base_url}/identity/v3", state
        self.user, self.password, self.tenant = state.user, state.password, state.tenant
        self.domain, self.region = state.domain, state.region


def start_fake_openstack(page_cap: int = 1000, state: State | None = None) -> FakeServer:
    """Serve the fake on 127.0.0.1 (a free port). ``page_cap`` is nova's and cinder's
    ``max_limit`` (1000) and glance's largest page; lower it to prove pagination."""
    state = state or State()
    return FakeServer(Api(state, page_cap).app(), state)
