"""The Docker adapter: the containers of one Docker (or Podman) daemon, the daemon's host a
machine too (``host:<host>``, every container's ``parent``).

Speaks the Engine API itself (``engine.EngineClient``; why not libcloud's driver is told
there). Reached by a unix socket (``socket``, our extension) or by ``host``/``port``, plain or
TLS: ``tlsCaCert`` pins the CA (hostname checked), ``tlsCert``/``tlsKey`` are the client
certificate (written to a private file only long enough for ``ssl`` to load them); ``username``
and ``password`` send basic auth (a daemon behind an authenticating proxy).

Containers: ``stop`` waits ``params["timeout"]`` (10) seconds then kills, ``destroy`` removes
(forced, with anonymous volumes), ``suspend``/``resume`` pause/unpause, ``start`` of a paused
container unpauses it. Create takes an image already on the daemon (nothing is pulled), a
name, tags as labels and ``extra``: ``command`` (string or list), ``env`` ({name: value}),
``network_mode``, ``cpus``, ``ram_mb``, ``start`` (true). Images: the daemon's local images.
Sizes and locations are not offered."""

from __future__ import annotations

import base64
import ipaddress
import posixpath
import re
import shlex
import ssl
from typing import Any
from urllib.parse import urlsplit

from controller.clouds.providers.base import (
    JSON,
    Adapter,
    Capability,
    CreateMachine,
    ImageRecord,
    MachineRecord,
    Unsupported,
)
from controller.clouds.providers.docker.engine import Endpoint, EngineClient, quote_id
from controller.clouds.providers.docker.secretfiles import SecretFiles
from controller.clouds.providers.libcloud_compute import iso_time
from controller.errors import Invalid, NotFound

STATES = {"created": "stopped", "running": "running", "paused": "paused",
          "restarting": "rebooting", "removing": "terminated", "exited": "stopped",
          "dead": "error", "stopped": "stopped", "configured": "stopped"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,255}$")
_MAX_LABELS = 100


def endpoint(config: dict[str, JSON], secrets: dict[str, str]) -> Endpoint:
    """Where the daemon is, from the cloud's fields; :class:`Invalid` when unclear."""
    sock = str(config.get("socket") or "").strip()
    host = str(config.get("host") or "").strip().rstrip("/")
    if host.startswith("unix://"):
        sock, host = sock or host[len("unix://"):], ""
    if sock and host:
        raise Invalid("give either host (and port) or socket, not both", field="socket")
    if sock:
        if not sock.startswith("/") or posixpath.normpath(sock) != sock or "\0" in sock:
            raise Invalid("socket must be an absolute path such as /var/run/docker.sock",
                          field="socket")
        return Endpoint(socket=sock)
    if not host:
        raise Invalid("host (and port) or socket is required", field="host")
    tls = any(secrets.get(k) for k in ("tlsKey", "tlsCert", "tlsCaCert"))
    for scheme in ("tcp://", "http://", "https://"):
        if host.startswith(scheme):
            tls = tls or scheme == "https://"
            host = host[len(scheme):]
    try:
        parts = urlsplit("//" + host)
        name, parsed_port = parts.hostname or "", parts.port
    except ValueError:
        name, parsed_port = "", None
    if not name or not _HOST.match(name) or parts.path or parts.username is not None:
        raise Invalid("host must be a host name or address (with an optional port)",
                      field="host")
    port = _port(config.get("port"), parsed_port or (2376 if tls else 2375))
    return Endpoint(host=name, port=port, tls=tls)


def _port(value: JSON, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        port = int(value)  # Mist sends it as a string
    except (TypeError, ValueError):
        raise Invalid("port must be a number", field="port") from None
    if isinstance(value, bool) or not 0 < port < 65536:
        raise Invalid("port must be between 1 and 65535", field="port")
    return port


def _seconds(value: JSON, default: int = 10) -> int:
    """How long stop/restart let a container exit before it is killed (0-300 s)."""
    if value is None or value == "":
        return default
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise Invalid("timeout must be a number of seconds", field="timeout") from None
    if isinstance(value, bool) or not 0 <= seconds <= 300:
        raise Invalid("timeout must be between 0 and 300 seconds", field="timeout")
    return seconds


def _flag(value: JSON, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def to_machine(c: dict[str, Any], host_id: str) -> MachineRecord:
    """One container from ``GET /containers/json`` (the listing's shape)."""
    names = c.get("Names") or []
    name = str(names[0]).lstrip("/") if names else str(c.get("Id", ""))[:12]
    nets = ((c.get("NetworkSettings") or {}).get("Networks") or {})
    public: list[str] = []
    private: list[str] = []
    macs: list[str] = []
    for net in nets.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            addr = str((net or {}).get(key) or "")
            if addr:
                try:
                    (public if ipaddress.ip_address(addr).is_global else private).append(addr)
                except ValueError:
                    pass
        if (net or {}).get("MacAddress"):
            macs.append(str(net["MacAddress"]).lower())
    ports = [f"{p.get('IP', '')}:{p['PublicPort']}->{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
             if p.get("PublicPort") else f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
             for p in (c.get("Ports") or []) if isinstance(p, dict)]
    labels = c.get("Labels") or {}
    state = str(c.get("State") or "").lower()
    created = c.get("Created")
    return MachineRecord(
        external_id=str(c["Id"]), name=name, state=STATES.get(state, "unknown"),
        public_ips=public, private_ips=private, image=str(c.get("ImageID") or ""),
        location=host_id, parent=host_id, macs=macs, os_type="linux",
        created=iso_time(_datetime(created)) if isinstance(created, int | float) else "",
        tags={str(k)[:255]: str(v)[:255] for k, v in list(labels.items())[:_MAX_LABELS]},
        extra={"kind": "container", "image_name": str(c.get("Image") or ""),
               "command": str(c.get("Command") or "")[:500], "status": str(c.get("Status") or ""),
               "docker_state": state, "ports": ports[:50], "networks": sorted(nets)[:20]})


def _datetime(epoch: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class DockerAdapter(Adapter):
    provider = "docker"
    capabilities = frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                              Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                              Capability.SUSPEND, Capability.RESUME, Capability.RENAME,
                              Capability.IMAGES})

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self.endpoint = endpoint(config, secrets)
        self.show_all = _flag(config.get("showAll"), True)
        self.host_id = f"host:{self.endpoint.host or 'localhost'}"
        self._client: EngineClient | None = None

    # -- connection ------------------------------------------------------------------------
    @property
    def client(self) -> EngineClient:
        if self._client is None:
            auth = ""
            user, password = str(self.config.get("username") or ""), self.secrets.get("password", "")
            if user or password:
                auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            context = self._tls_context() if self.endpoint.tls else None
            self._client = EngineClient(self.endpoint, self.timeout, context, auth,
                                        self.refused_credential(), self._tls12_context)
        return self._client

    def refused_credential(self) -> str:
        """A 401/403 is about the basic-auth password when one is sent (a proxy's), else
        about the client certificate (an authorization plugin's refusal)."""
        if self.config.get("username") or self.secrets.get("password"):
            return "password"
        return "tlsCert" if self.secrets.get("tlsCert") else ""

    def _tls_context(self) -> ssl.SSLContext:
        ca, cert, key = (self.secrets.get(k, "").strip()
                         for k in ("tlsCaCert", "tlsCert", "tlsKey"))
        if bool(cert) != bool(key):
            raise Invalid("tlsCert and tlsKey go together", field="tlsCert")
        try:
            context = ssl.create_default_context(cadata=ca or None)
        except (ssl.SSLError, ValueError):
            raise Invalid("tlsCaCert is not a PEM certificate", field="tlsCaCert") from None
        if cert:
            files = SecretFiles()
            try:
                context.load_cert_chain(files.write("cert.pem", cert), files.write("key.pem", key))
            except (ssl.SSLError, ValueError, OSError):
                raise Invalid("tlsCert/tlsKey are not a PEM certificate and its private key",
                              field="tlsCert") from None
            finally:
                files.close()  # ssl holds them in memory now
        return context

    def _tls12_context(self) -> ssl.SSLContext:
        context = self._tls_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def check(self) -> None:
        self.client.call("GET", "/info", what="checking the connection")

    # -- inventory -------------------------------------------------------------------------
    def list_machines(self) -> list[MachineRecord]:
        info = self.client.call("GET", "/info", what="reading the host")
        items = self.client.call("GET", "/containers/json",
                                 {"all": "1" if self.show_all else "0"}, what="listing machines")
        containers = [to_machine(c, self.host_id) for c in (items or [])
                      if isinstance(c, dict) and c.get("Id")]
        return [self._host_record(info if isinstance(info, dict) else {}), *containers]

    def _host_record(self, info: dict[str, Any]) -> MachineRecord:
        keys = ("ServerVersion", "OperatingSystem", "KernelVersion", "Architecture",
                "Containers", "ContainersRunning", "ContainersPaused", "ContainersStopped",
                "Images", "Driver")
        extra: dict[str, JSON] = {"kind": "container-host", "endpoint": self.endpoint.label}
        extra.update({k[0].lower() + re.sub(r"([A-Z])", r"_\1", k[1:]).lower(): info[k]
                      for k in keys if isinstance(info.get(k), str | int)})
        if isinstance(info.get("MemTotal"), int):
            extra["memory_mb"] = info["MemTotal"] // (1024 * 1024)
        name = str(info.get("Name") or self.endpoint.host or "localhost")
        return MachineRecord(external_id=self.host_id, name=name, state="running", hostname=name,
                             cores=int(info.get("NCPU") or 0),
                             os_type=str(info.get("OSType") or "linux"), extra=extra)

    def list_images(self) -> list[ImageRecord]:
        images = self.client.call("GET", "/images/json", what="listing images") or []
        result = []
        for i in images:
            tags = [t for t in (i.get("RepoTags") or []) if t and t != "<none>:<none>"]
            result.append(ImageRecord(
                external_id=str(i["Id"]), name=tags[0] if tags else str(i["Id"])[:19],
                os_type="linux", extra={"tags": tags[:20], "size": i.get("Size"),
                                        "created": i.get("Created")}))
        return result

    # -- actions ---------------------------------------------------------------------------
    def _path(self, external_id: str) -> str:
        if external_id == self.host_id:
            raise Unsupported("actions on the docker host itself are not supported: act on its "
                              "containers", provider="docker", action="host")
        if not _NAME.match(external_id):
            raise NotFound(f"docker has no machine {external_id!r}", {"external_id": external_id})
        return f"/containers/{quote_id(external_id)}"

    def _state(self, path: str) -> str:
        info = self.client.call("GET", f"{path}/json", what="finding the machine") or {}
        return str((info.get("State") or {}).get("Status") or "").lower()

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action not in self.capabilities or action == Capability.RESIZE:
            raise self._unsupported(str(action))
        path = self._path(external_id)
        call = self.client.call
        what = f"running {action}"
        wait = _seconds(params.get("timeout"))
        if action == Capability.START:
            if self._state(path) == "paused":
                call("POST", f"{path}/unpause", what=what)
            else:
                call("POST", f"{path}/start", what=what, ok_not_modified=True)
        elif action == Capability.STOP:
            call("POST", f"{path}/stop", {"t": wait}, what=what, wait=wait, ok_not_modified=True)
        elif action == Capability.REBOOT:
            call("POST", f"{path}/restart", {"t": wait}, what=what, wait=wait)
        elif action == Capability.DESTROY:
            call("DELETE", path, {"force": "1", "v": "1"}, what=what, wait=wait)
        elif action == Capability.SUSPEND:
            if self._state(path) != "paused":
                call("POST", f"{path}/pause", what=what)
        elif action == Capability.RESUME:
            if self._state(path) == "paused":
                call("POST", f"{path}/unpause", what=what)
        elif action == Capability.RENAME:
            name = str(params.get("name") or "")
            if not _NAME.match(name):
                raise Invalid("a container name is letters, digits, '_', '.' or '-'",
                              field="name")
            call("POST", f"{path}/rename", {"name": name}, what=what)

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        if not _NAME.match(req.name or ""):
            raise Invalid("a container name is letters, digits, '_', '.' or '-', starting with "
                          "a letter or digit", field="name")
        if not req.image:
            raise Invalid("docker needs an image (one already on the host)", field="image")
        if req.size or req.location:
            raise Invalid("docker has no sizes or locations (use extra cpus/ram_mb)",
                          field="size" if req.size else "location")
        body = {"Image": req.image, "Labels": {str(k): str(v) for k, v in req.tags.items()},
                "HostConfig": self._host_config(req.extra), "Tty": False, "OpenStdin": False}
        command = req.extra.get("command")
        if command:
            body["Cmd"] = (shlex.split(command) if isinstance(command, str)
                           else [str(a) for a in command] if isinstance(command, list) else None)
            if not body["Cmd"]:
                raise Invalid("command must be a string or a list of strings", field="extra")
        env = req.extra.get("env")
        if env:
            if not isinstance(env, dict):
                raise Invalid("env must be an object of name: value", field="extra")
            body["Env"] = [f"{k}={v}" for k, v in env.items()]
        try:
            made = self.client.call("POST", "/containers/create", {"name": req.name}, body,
                                    what="creating the machine")
        except NotFound:
            raise Invalid(f"docker has no image {req.image!r} (nothing is pulled: load or pull "
                          f"it on the host first)", field="image") from None
        cid = str((made or {}).get("Id") or "")
        if _flag(req.extra.get("start"), True):
            try:
                self.client.call("POST", f"/containers/{quote_id(cid)}/start",
                                 what="starting the new machine")
            except Exception:
                self.client.call("DELETE", f"/containers/{quote_id(cid)}", {"force": "1"},
                                 what="removing the machine that did not start")
                raise
        found = self.client.call("GET", "/containers/json",
                                 {"all": "1", "filters": f'{{"id":["{cid}"]}}'},
                                 what="reading the new machine") or []
        if not found:
            raise NotFound(f"docker lost the new container {cid}", {"external_id": cid})
        return to_machine(found[0], self.host_id)

    @staticmethod
    def _host_config(extra: dict[str, JSON]) -> dict[str, JSON]:
        host: dict[str, JSON] = {}
        if extra.get("network_mode"):
            host["NetworkMode"] = str(extra["network_mode"])
        try:
            if extra.get("cpus"):
                host["NanoCpus"] = int(float(extra["cpus"]) * 1e9)
            if extra.get("ram_mb"):
                host["Memory"] = int(extra["ram_mb"]) * 1024 * 1024
        except (TypeError, ValueError):
            raise Invalid("cpus and ram_mb must be numbers", field="extra") from None
        return host

