"""The LXD adapter: the instances of one LXD server through libcloud's ``LXDContainerDriver``,
the server a machine too (``host:<host>``, every container's ``parent``).

Connection: LXD speaks HTTPS with a client certificate (``tlsCert``/``tlsKey``, trusted on the
server with ``lxc config trust add``); ``tlsCaCert`` pins the server's certificate (LXD's are
self-signed: give the server's own certificate). Without ``tlsCaCert`` the server's
certificate is NOT verified (libcloud's LXD default, as ``lxc remote add`` accepts a
fingerprint on first use); say so to users. libcloud reads the key and certificates from
files on every new connection, so they live in a private 0700 directory until :meth:`close`.
``http://host`` (no TLS) is accepted for an LXD behind a local proxy, and for tests.

What differs from libcloud's own behaviour: hosts are stripped of their scheme here (libcloud
uses ``str.strip``, which eats letters: ``https://localhost`` -> ``localhos``); a container
without ``eth0`` does not break the listing (libcloud indexes ``network["eth0"]``); state
comes from LXD's status (libcloud folds everything but Running/Frozen into STOPPED); destroy
stops a running container first (LXD refuses to delete one); LXD's error JSON becomes the
domain's errors by its ``error_code``.

Blocking (HTTP via libcloud/requests): the runner calls it from its executor."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from controller.clouds.providers.base import (
    JSON,
    Adapter,
    Capability,
    CreateMachine,
    ImageRecord,
    MachineRecord,
    Unsupported,
)
from controller.clouds.providers.docker.adapter import endpoint
from controller.clouds.providers.docker.secretfiles import SecretFiles
from controller.clouds.providers.errors import clean, libcloud_errors
from controller.clouds.providers.kvm.domains import split_ips
from controller.clouds.providers.libcloud_compute import json_safe
from controller.errors import Conflict, Invalid, NotFound

PROVIDER = "lxd"
STATES = {"running": "running", "stopped": "stopped", "frozen": "paused", "freezing": "paused",
          "thawed": "running", "starting": "starting", "stopping": "stopping",
          "error": "error", "aborting": "error", "pending": "pending", "ready": "running"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")  # LXD: a valid host name
_FINGERPRINT = re.compile(r"^[0-9a-f]{12,64}$")
_SKIP_EXTRA = ("config", "expanded_config", "devices", "expanded_devices", "ips", "status")


@contextmanager
def lxd_errors(what: str, credential: str = "") -> Iterator[None]:
    """LXD's errors (JSON bodies with ``error`` and ``error_code``) by their code, then
    libcloud's mapping for the rest; a refusal names ``credential``."""
    from libcloud.common.exceptions import BaseHTTPError
    from libcloud.container.drivers.lxd import LXDAPIException

    with libcloud_errors(PROVIDER, what, credential):
        try:
            yield
        except LXDAPIException as exc:
            body = exc.response_dict if isinstance(exc.response_dict, dict) else {}
            code = int(body.get("error_code") or 0) or (404 if exc.message == "not found" else 0)
            raise BaseHTTPError(code or 500, clean(body.get("error") or exc.message)) from None
        except BaseHTTPError as exc:
            try:
                body = json.loads(exc.message)
            except (TypeError, ValueError):
                raise exc from None
            code = int(body.get("error_code") or exc.code or 500)
            message = clean(body.get("error") or "no message")
            if code == 409:
                raise Conflict(f"lxd refused while {what}: {message}",
                               {"provider": PROVIDER, "status": code}) from None
            raise BaseHTTPError(code, message) from None


class LxdAdapter(Adapter):
    provider = PROVIDER
    capabilities = frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                              Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                              Capability.SUSPEND, Capability.RESUME, Capability.IMAGES})

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        host = str(config.get("host") or "").strip()
        if not host or host.startswith("unix:"):
            raise Invalid("host (the LXD server's name or address) is required", field="host")
        self.plain = host.startswith("http://")
        self.endpoint = endpoint({"host": host, "port": config.get("port") or 8443}, {})
        self.host_id = f"host:{self.endpoint.host}"
        self.show_all = str(config.get("showAll", True)).lower() not in ("false", "0", "no")
        self._driver: Any = None
        self._files = SecretFiles()
        self._wait = max(1, min(int(timeout), 120))  # how long LXD may take per operation

    def refused_credential(self) -> str:
        """A refusal is about the basic-auth password when one is sent (an authenticating
        proxy's), else about the client certificate the server does not trust."""
        if self.config.get("username") or self.secrets.get("password"):
            return "password"
        return "tlsCert"

    # -- connection ------------------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._driver is None:
            with lxd_errors("connecting", self.refused_credential()):
                self._driver = self._build()
        return self._driver

    def _build(self) -> Any:
        from libcloud.container.drivers.lxd import LXDContainerDriver

        cert, key, ca = (self.secrets.get(k, "").strip() for k in ("tlsCert", "tlsKey", "tlsCaCert"))
        if bool(cert) != bool(key):
            raise Invalid("tlsCert and tlsKey go together", field="tlsCert")
        if self.plain and (cert or ca):
            raise Invalid("TLS certificates need an https host", field="host")
        kwargs: dict[str, Any] = {"host": self.endpoint.host, "port": self.endpoint.port,
                                  "secure": not self.plain,
                                  "key": str(self.config.get("username") or ""),
                                  "secret": self.secrets.get("password", "")}
        if cert:
            kwargs["cert_file"] = self._files.write("client.crt", cert)
            kwargs["key_file"] = self._files.write("client.key", key)
        if ca:
            kwargs["ca_cert"] = self._files.write("server-ca.crt", ca)
        driver = LXDContainerDriver(**kwargs)
        driver.connection.timeout = self.timeout
        return driver

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with lxd_errors(what, self.refused_credential()):
            return fn(*args, **kwargs)

    def check(self) -> None:
        self._call("checking the credentials", self.conn.ex_get_server_configuration)

    # -- inventory -------------------------------------------------------------------------
    def list_machines(self) -> list[MachineRecord]:
        d = self.conn
        server = self._call("reading the server", d.ex_get_server_configuration)
        names = [c.name for c in self._call("listing machines", d.list_containers,
                                            ex_detailed=False)]
        machines = [self.to_machine(self._get(n)) for n in names]
        if not self.show_all:
            machines = [m for m in machines if m.state != "stopped"]
        return [self._host_record(server, len(machines)), *machines]

    def _get(self, name: str) -> Any:
        with lxd_errors("reading the machine", self.refused_credential()):
            try:
                return self.conn.get_container(name)
            except KeyError:  # libcloud indexes network["eth0"]: read it without addresses
                return self.conn.get_container(name, ex_get_ip_addr=False)

    def to_machine(self, c: Any) -> MachineRecord:
        meta = dict(c.extra or {})
        config = meta.get("config") or {}
        public, private = split_ips([str(ip) for ip in (meta.get("ips") or [])])
        cores = str(config.get("limits.cpu") or "")
        tags = {k[5:]: str(v)[:255] for k, v in config.items() if k.startswith("user.")}
        extra = {k: json_safe(v) for k, v in meta.items() if k not in _SKIP_EXTRA}
        extra.update({"kind": str(meta.get("type") or "container"),
                      "lxd_status": str(meta.get("status") or "")})
        return MachineRecord(
            external_id=str(c.name), name=str(c.name),
            state=STATES.get(str(meta.get("status") or "").lower(), "unknown"),
            public_ips=public, private_ips=private,
            image=str(config.get("volatile.base_image") or ""),
            os_type=str(config.get("image.os") or "").lower(),
            cores=int(cores) if cores.isdigit() else 0, created=str(meta.get("created_at") or ""),
            location=self.host_id, parent=self.host_id, tags=tags, extra=extra)

    def _host_record(self, server: Any, count: int) -> MachineRecord:
        env = getattr(server, "environment", None) or {}
        name = str(env.get("server_name") or self.endpoint.host)
        extra: dict[str, JSON] = {"kind": "container-host", "instances": count}
        for key in ("server_version", "kernel", "kernel_version", "storage", "driver"):
            if isinstance(env.get(key), str):
                extra[key] = env[key]
        return MachineRecord(external_id=self.host_id, name=name, state="running",
                             hostname=name, os_type="linux", extra=extra)

    def list_images(self) -> list[ImageRecord]:
        images = self._call("listing images", self.conn.list_images)
        return [ImageRecord(external_id=str(i.id), name=str(i.name or i.id),
                            os_type=str(((i.extra or {}).get("properties") or {}).get("os") or
                                        "").lower(),
                            extra={"version": json_safe(i.version)}) for i in images]

    # -- actions ---------------------------------------------------------------------------
    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action not in self.capabilities or action in (Capability.RESIZE, Capability.RENAME):
            raise self._unsupported(str(action))
        if external_id == self.host_id:
            raise Unsupported("actions on the LXD server itself are not supported: act on its "
                              "instances", provider=PROVIDER, action="host")
        if not _NAME.match(external_id):
            raise NotFound(f"lxd has no machine {external_id!r}", {"external_id": external_id})
        d, c = self.conn, self._get(external_id)
        status = str((c.extra or {}).get("status") or "").lower()
        what, t = f"running {action}", self._wait
        if action == Capability.START:
            if status == "frozen":
                self._call(what, d.ex_unfreeze_container, c, ex_timeout=t)
            elif status != "running":
                self._call(what, d.start_container, c, ex_timeout=t)
        elif action == Capability.STOP:
            if status != "stopped":
                self._call(what, d.stop_container, c, ex_timeout=t)
        elif action == Capability.REBOOT:
            self._call(what, d.restart_container, c, ex_timeout=t)
        elif action == Capability.SUSPEND:
            if status != "frozen":
                self._call(what, d.ex_freeze_container, c, ex_timeout=t)
        elif action == Capability.RESUME:
            if status == "frozen":
                self._call(what, d.ex_unfreeze_container, c, ex_timeout=t)
        elif action == Capability.DESTROY:
            if status != "stopped":  # LXD refuses to delete a running (or frozen) instance
                self._call("stopping before removal", d.stop_container, c, ex_timeout=t)
            self._call(what, d.destroy_container, c, ex_timeout=t)

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        """From a local image (fingerprint or alias); ``extra``: ``cpus``, ``ram_mb``,
        ``profiles`` (["default"]), ``start`` (true). Tags become ``user.*`` config keys."""
        if not _NAME.match(req.name or ""):
            raise Invalid("an LXD name is letters, digits and '-', starting with a letter or "
                          "digit (at most 63)", field="name")
        if not req.image:
            raise Invalid("lxd needs an image (a fingerprint or alias on the server)",
                          field="image")
        if req.size or req.location:
            raise Invalid("lxd has no sizes or locations here (use extra cpus/ram_mb)",
                          field="size" if req.size else "location")
        key = "fingerprint" if _FINGERPRINT.match(req.image) else "alias"
        source = {"source": {"type": "image", key: req.image}}
        config = {f"user.{k}": str(v) for k, v in req.tags.items()}
        try:
            if req.extra.get("cpus"):
                config["limits.cpu"] = str(int(req.extra["cpus"]))
            if req.extra.get("ram_mb"):
                config["limits.memory"] = f"{int(req.extra['ram_mb'])}MB"
        except (TypeError, ValueError):
            raise Invalid("cpus and ram_mb must be numbers", field="extra") from None
        profiles = req.extra.get("profiles") or ["default"]
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            raise Invalid("profiles must be a list of names", field="extra")
        start = str(req.extra.get("start", True)).lower() not in ("false", "0", "no")
        self._call("creating the machine", self.conn.deploy_container, req.name, None,
                   parameters=json.dumps(source), start=start, ex_profiles=profiles,
                   ex_config=config, ex_timeout=self._wait)
        return self.to_machine(self._get(req.name))

    def close(self) -> None:
        conn = getattr(self._driver, "connection", None)
        session = getattr(getattr(conn, "connection", None), "session", None)
        if session is not None:
            try:
                session.close()
            except Exception:  # closing is best effort
                pass
        self._driver = None
        self._files.close()
