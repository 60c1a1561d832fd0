"""The contract every provider adapter keeps, and the typed records a poll returns.

An adapter is a *blocking* object (libcloud blocks): the controller calls it only from its
bounded cloud executor (``controller.clouds.runner``), with a timeout per call, never on the
event loop. An adapter maps every provider failure to the domain's errors in one place
(``providers.errors.libcloud_errors``):

    Invalid / Unsupported (422)   the request cannot work (bad field, action not offered)
    CredentialsRefused (422)      the credentials were refused: the message says which and
                                  why, in words; ``details.field`` names the field
                                  (``credentials.<name>``) when the provider makes it clear
    NotFound (404)                the resource is gone at the provider
    ProviderUnavailable (503)     the endpoint cannot be reached or timed out (retryable)
    ProviderError (502)           anything else the provider said (its message, no traceback)

Who closes what: the runner owns the adapter and calls :meth:`Adapter.close` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.errors import Invalid

JSON = Any  # a JSON-able value (str, int, float, bool, None, list, dict of these)


class Unsupported(Invalid):
    """The provider does not support this action."""

    code = "unsupported"


class Capability(StrEnum):
    MACHINES = "machines"          # list machines
    CREATE = "create"              # create machines
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    DESTROY = "destroy"
    RESIZE = "resize"
    RENAME = "rename"
    SUSPEND = "suspend"
    RESUME = "resume"
    VOLUMES = "volumes"            # list, create, delete volumes
    ATTACH = "attach"              # attach/detach volumes
    NETWORKS = "networks"          # list, create, delete networks (and subnets)
    DNS = "dns"                    # zones and records
    SIZES = "sizes"
    IMAGES = "images"
    LOCATIONS = "locations"


MACHINE_ACTIONS = (Capability.START, Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                   Capability.RESIZE, Capability.RENAME, Capability.SUSPEND, Capability.RESUME)


@dataclass(frozen=True)
class Field:
    """One credential or configuration field of a provider (Mist v2 ``<P>Credentials``)."""

    name: str
    required: bool = False
    secret: bool = False           # encrypted at rest, never returned, never logged
    kind: str = "string"           # string, integer, boolean, text (multi-line), list
    help: str = ""
    default: JSON = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderSpec:
    """What the API needs to know about a provider without importing its driver."""

    name: str                      # the Mist v2 ``provider`` value
    title: str
    fields: tuple[Field, ...]
    capabilities: frozenset[Capability]
    adapter: str                   # "module:Class", imported lazily
    proved: str = "unit"           # how it is proved here: "e2e:<what>" or "unit"
    stopped_is_free: bool = True   # a stopped machine costs nothing (compute billing)


# ---- records a poll returns -------------------------------------------------------------
@dataclass
class MachineRecord:
    external_id: str
    name: str
    state: str = "unknown"         # one of controller.machines.model.STATES
    public_ips: list[str] = field(default_factory=list)
    private_ips: list[str] = field(default_factory=list)
    hostname: str = ""
    size: str = ""                 # external id of the size
    image: str = ""                # external id of the image
    location: str = ""             # external id of the location
    os_type: str = ""
    cores: int = 0
    created: str = ""              # ISO 8601 when the provider says
    tags: dict[str, str] = field(default_factory=dict)
    price_per_hour: float | None = None  # from the size's price when the adapter knows it
    parent: str = ""               # external id of the machine that hosts this one
    macs: list[str] = field(default_factory=list)  # to match hosts that run an agent
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class VolumeRecord:
    external_id: str
    name: str
    size_gb: int = 0
    state: str = ""
    location: str = ""
    attached_to: list[str] = field(default_factory=list)  # machine external ids
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class SubnetRecord:
    external_id: str
    name: str
    cidr: str = ""
    location: str = ""


@dataclass
class NetworkRecord:
    external_id: str
    name: str
    cidr: str = ""
    location: str = ""
    subnets: list[SubnetRecord] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class ZoneRecord:
    external_id: str
    domain: str
    type: str = "master"
    ttl: int = 0
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class DnsRecord:
    external_id: str
    zone: str                      # zone external id
    name: str
    type: str
    data: str
    ttl: int = 0
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class SizeRecord:
    external_id: str
    name: str
    cpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0
    price_per_hour: float | None = None  # None (or 0.0 in libcloud's data) = unknown
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class ImageRecord:
    external_id: str
    name: str
    os_type: str = ""
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class LocationRecord:
    external_id: str
    name: str
    country: str = ""
    extra: dict[str, JSON] = field(default_factory=dict)


@dataclass
class CreateMachine:
    """A create request already checked by the service (ids are provider external ids)."""

    name: str
    size: str = ""
    image: str = ""
    location: str = ""
    public_key: str = ""           # OpenSSH public key to install, when given
    cloud_init: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, JSON] = field(default_factory=dict)  # provider-specific (e.g. subnet)


class Adapter:
    """Base adapter: every operation says plainly that the provider does not offer it.

    Subclasses set ``capabilities`` and override what they support. Constructed with the
    cloud's non-secret ``config`` and decrypted ``secrets`` (both keyed by the spec's field
    names) and a per-call network ``timeout`` in seconds. Nothing here may log ``secrets``."""

    provider = ""
    capabilities: frozenset[Capability] = frozenset()
    # the credential field a refusal is about when the provider's answer does not say which
    # (the API token of a one-token provider, the password of a user and password)
    credential = ""

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        self.config = config
        self.secrets = secrets
        self.timeout = timeout

    def refused_credential(self) -> str:
        """The field a refusal names when the provider does not say which (``credential``;
        adapters whose answer depends on the cloud's fields override this)."""
        return self.credential

    def _field(self, name: str, secret: bool = False) -> str:
        """A required text field of the cloud's config (or secrets), stripped; Invalid naming
        it when empty."""
        value = str((self.secrets if secret else self.config).get(name) or "").strip()
        if not value:
            raise Invalid(f"{self.provider}: {name} is required", field=name)
        return value

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"{self.provider or 'this provider'} does not support {what}",
                           provider=self.provider, action=what)

    # checks and inventory
    def check(self) -> None:
        """Prove the credentials work (one cheap authenticated call). Raises as above."""
        self.list_machines()

    def list_machines(self) -> list[MachineRecord]:
        raise self._unsupported("listing machines")

    def list_volumes(self) -> list[VolumeRecord]:
        raise self._unsupported("volumes")

    def list_networks(self) -> list[NetworkRecord]:
        raise self._unsupported("networks")

    def list_zones(self) -> list[ZoneRecord]:
        raise self._unsupported("DNS")

    def list_records(self, zone_id: str) -> list[DnsRecord]:
        raise self._unsupported("DNS")

    def list_sizes(self) -> list[SizeRecord]:
        raise self._unsupported("listing sizes")

    def list_images(self) -> list[ImageRecord]:
        raise self._unsupported("listing images")

    def list_locations(self) -> list[LocationRecord]:
        raise self._unsupported("listing locations")

    # machine actions
    def create_machine(self, req: CreateMachine) -> MachineRecord:
        raise self._unsupported("creating machines")

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        """start, stop, reboot, destroy, suspend, resume; resize (``params["size"]``, a size
        external id); rename (``params["name"]``)."""
        raise self._unsupported(str(action))

    # volumes
    def create_volume(self, name: str, size_gb: int, location: str,
                      extra: dict[str, JSON]) -> VolumeRecord:
        raise self._unsupported("creating volumes")

    def delete_volume(self, external_id: str) -> None:
        raise self._unsupported("deleting volumes")

    def attach_volume(self, volume_id: str, machine_id: str, device: str) -> None:
        raise self._unsupported("attaching volumes")

    def detach_volume(self, volume_id: str, machine_id: str) -> None:
        raise self._unsupported("detaching volumes")

    # networks
    def create_network(self, name: str, cidr: str, extra: dict[str, JSON]) -> NetworkRecord:
        raise self._unsupported("creating networks")

    def delete_network(self, external_id: str) -> None:
        raise self._unsupported("deleting networks")

    def create_subnet(self, network_id: str, name: str, cidr: str, location: str) -> SubnetRecord:
        raise self._unsupported("creating subnets")

    def delete_subnet(self, network_id: str, subnet_id: str) -> None:
        raise self._unsupported("deleting subnets")

    # DNS
    def create_zone(self, domain: str, type_: str, ttl: int) -> ZoneRecord:
        raise self._unsupported("DNS")

    def delete_zone(self, zone_id: str) -> None:
        raise self._unsupported("DNS")

    def create_record(self, zone_id: str, name: str, type_: str, data: str, ttl: int) -> DnsRecord:
        raise self._unsupported("DNS")

    def delete_record(self, zone_id: str, record_id: str) -> None:
        raise self._unsupported("DNS")

    def update_record(self, zone_id: str, record_id: str, name: str, type_: str, data: str,
                      ttl: int) -> DnsRecord:
        """Change a record. By default: create the new one, then delete the old (never a
        moment without the name; the record's id changes). Providers with an update call
        override it."""
        made = self.create_record(zone_id, name, type_, data, ttl)
        self.delete_record(zone_id, record_id)
        return made

    def close(self) -> None:
        """Release connections. Called once by the owner."""
