"""A generic adapter over a libcloud compute driver: node, size, image and location
translation and the standard actions. Provider adapters subclass it and override
``driver()`` (how to build the driver from the cloud's fields) and what differs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller.clouds.providers.base import (
    JSON,
    Adapter,
    Capability,
    CreateMachine,
    ImageRecord,
    LocationRecord,
    MachineRecord,
    SizeRecord,
)
from controller.clouds.providers.errors import libcloud_errors
from controller.errors import Invalid, NotFound

# libcloud NodeState value -> Overcast machine state
STATE_MAP = {
    "running": "running", "starting": "starting", "rebooting": "rebooting",
    "terminated": "terminated", "pending": "pending", "unknown": "unknown",
    "stopping": "stopping", "stopped": "stopped", "suspended": "suspended", "error": "error",
    "paused": "paused", "reconfiguring": "pending", "migrating": "pending", "normal": "running",
    "updating": "pending",
}


def json_safe(value: Any, depth: int = 0) -> JSON:
    """A provider's ``extra`` value reduced to JSON: objects become their id or name, depth
    and length are bounded so one odd driver cannot bloat a machine document."""
    if value is None or isinstance(value, bool | int | float | str):
        return value[:1000] if isinstance(value, str) else value
    if depth > 3:
        return str(value)[:200]
    if isinstance(value, dict):
        return {str(k)[:100]: json_safe(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple | set):
        return [json_safe(v, depth + 1) for v in list(value)[:100]]
    if isinstance(value, dt.datetime):
        return iso_time(value)
    for attr in ("id", "name"):
        if isinstance(getattr(value, attr, None), str):
            return str(getattr(value, attr))
    return str(value)[:200]


def iso_time(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value) if value else ""


def price(value: Any) -> float | None:
    """libcloud's price, with 0.0 and missing read as unknown (its data lacks ~15 % of sizes)."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if p > 0 else None


def set_timeout(driver: Any, timeout: float) -> None:
    """Bound every HTTP call of a libcloud driver. The connection copies its timeout into the
    HTTP session when it connects, which some drivers do while being built: set both."""
    connection = getattr(driver, "connection", None)
    if connection is None:
        return
    connection.timeout = timeout
    session = getattr(getattr(connection, "connection", None), "session", None)
    if session is not None:
        session.timeout = timeout
        session.max_redirects = 0  # never follow a redirect (see providers.registry)


class LibcloudComputeAdapter(Adapter):
    capabilities = frozenset({Capability.MACHINES, Capability.START, Capability.STOP,
                              Capability.REBOOT, Capability.DESTROY, Capability.SIZES,
                              Capability.IMAGES, Capability.LOCATIONS})

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self._driver: Any = None
        self._prices: dict[str, float | None] | None = None

    # -- building ----------------------------------------------------------------------------
    def driver(self) -> Any:
        """Build the libcloud driver (called once, lazily). Subclasses override."""
        raise NotImplementedError

    @property
    def conn(self) -> Any:
        if self._driver is None:
            with libcloud_errors(self.provider, "connecting", self.refused_credential()):
                self._driver = self.driver()
                set_timeout(self._driver, self.timeout)
        return self._driver

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with libcloud_errors(self.provider, what, self.refused_credential()):
            return fn(*args, **kwargs)

    # -- translation ---------------------------------------------------------------------------
    def to_machine(self, node: Any) -> MachineRecord:
        extra = dict(getattr(node, "extra", {}) or {})
        size = getattr(node, "size", None)
        image = getattr(node, "image", None)
        size_id = getattr(size, "id", "") or str(extra.get("instance_type") or extra.get("size") or "")
        image_id = getattr(image, "id", "") or str(extra.get("image_id") or extra.get("image") or "")
        tags = extra.pop("tags", {}) or {}
        state = getattr(node.state, "value", node.state)
        return MachineRecord(
            external_id=str(node.id), name=str(node.name or node.id),
            state=STATE_MAP.get(str(state).lower(), "unknown"),
            public_ips=[ip for ip in (node.public_ips or []) if ip],
            private_ips=[ip for ip in (node.private_ips or []) if ip],
            size=size_id, image=image_id,
            location=str(extra.get("availability") or extra.get("location") or extra.get("zone") or ""),
            created=iso_time(getattr(node, "created_at", None)),
            tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            price_per_hour=self.size_price(size_id),
            extra={k: json_safe(v) for k, v in extra.items()},
        )

    def size_price(self, size_id: str) -> float | None:
        if not size_id:
            return None
        if self._prices is None:
            try:
                self._prices = {s.external_id: s.price_per_hour for s in self.list_sizes()}
            except Exception:  # prices are a nicety: a listing that fails leaves them unknown
                self._prices = {}
        return self._prices.get(size_id)

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        return SizeRecord(external_id=str(s.id), name=str(s.name or s.id),
                          cpus=int(getattr(s, "extra", {}).get("cpu", 0) or getattr(s, "vcpus", 0) or 0),
                          ram_mb=int(s.ram or 0), disk_gb=int(s.disk or 0), price_per_hour=price(s.price),
                          extra={k: json_safe(v) for k, v in (s.extra or {}).items()})

    @staticmethod
    def to_image(i: Any) -> ImageRecord:
        extra = dict(i.extra or {})
        return ImageRecord(external_id=str(i.id), name=str(i.name or i.id),
                           os_type=str(extra.get("platform") or extra.get("os_type") or ""),
                           extra={k: json_safe(v) for k, v in list(extra.items())[:30]})

    @staticmethod
    def to_location(loc: Any) -> LocationRecord:
        return LocationRecord(external_id=str(loc.id), name=str(loc.name or loc.id),
                              country=str(getattr(loc, "country", "") or ""),
                              extra={k: json_safe(v) for k, v in (getattr(loc, "extra", {}) or {}).items()})

    # -- inventory -------------------------------------------------------------------------------
    def check(self) -> None:
        self._call("checking the credentials", self.conn.list_nodes)

    def list_machines(self) -> list[MachineRecord]:
        return [self.to_machine(n) for n in self._call("listing machines", self.conn.list_nodes)]

    def list_sizes(self) -> list[SizeRecord]:
        return [self.to_size(s) for s in self._call("listing sizes", self.conn.list_sizes)]

    def list_images(self) -> list[ImageRecord]:
        return [self.to_image(i) for i in self._call("listing images", self.conn.list_images)]

    def list_locations(self) -> list[LocationRecord]:
        return [self.to_location(loc) for loc in self._call("listing locations", self.conn.list_locations)]

    # -- actions ---------------------------------------------------------------------------------
    def node(self, external_id: str) -> Any:
        for n in self._call("finding the machine", self.conn.list_nodes):
            if str(n.id) == external_id:
                return n
        raise NotFound(f"{self.provider} has no machine {external_id!r}", {"external_id": external_id})

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action not in self.capabilities:
            raise self._unsupported(str(action))
        node = self.node(external_id)
        d = self.conn
        calls = {
            Capability.START: lambda: d.start_node(node),
            Capability.STOP: lambda: d.stop_node(node),
            Capability.REBOOT: lambda: d.reboot_node(node),
            Capability.DESTROY: lambda: d.destroy_node(node),
            Capability.SUSPEND: lambda: d.ex_suspend_node(node),
            Capability.RESUME: lambda: d.ex_resume_node(node),
            Capability.RESIZE: lambda: d.ex_resize_node(node, self._size(str(params.get("size", "")))),
            Capability.RENAME: lambda: d.ex_rename_node(node, str(params.get("name", ""))),
        }
        if action not in calls:
            raise self._unsupported(str(action))
        self._call(f"running {action}", calls[action])

    def _size(self, size_id: str) -> Any:
        for s in self._call("listing sizes", self.conn.list_sizes):
            if str(s.id) == size_id:
                return s
        raise Invalid(f"{self.provider} has no size {size_id!r}", field="size")

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        if Capability.CREATE not in self.capabilities:
            raise self._unsupported("creating machines")
        d = self.conn
        size = self._size(req.size) if req.size else None
        image = next((i for i in self._call("listing images", d.list_images) if str(i.id) == req.image), None)
        if req.image and image is None:
            raise Invalid(f"{self.provider} has no image {req.image!r}", field="image")
        location = None
        if req.location:
            location = next((loc for loc in self._call("listing locations", d.list_locations)
                             if str(loc.id) == req.location), None)
            if location is None:
                raise Invalid(f"{self.provider} has no location {req.location!r}", field="location")
        kwargs: dict[str, Any] = {"name": req.name, "size": size, "image": image}
        if location is not None:
            kwargs["location"] = location
        kwargs.update(self.create_kwargs(req))
        node = self._call("creating the machine", d.create_node, **kwargs)
        return self.to_machine(node)

    def create_kwargs(self, req: CreateMachine) -> dict[str, Any]:
        """Provider-specific create arguments (key, cloud-init, tags). Subclasses override."""
        return {}

    def close(self) -> None:
        conn = getattr(self._driver, "connection", None)
        if conn is not None and getattr(conn, "connection", None) is not None:
            try:
                conn.connection.close()
            except Exception:  # closing is best effort
                pass
        self._driver = None
