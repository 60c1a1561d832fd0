"""libcloud's OpenStack driver (nova, glance, neutron, cinder behind keystone v3), made to
find its endpoints in real service catalogs and to honour a compute endpoint override.

Quirks worked around here (libcloud 3.8/3.9):

* Each service connection matches the catalog by type *and* a fixed name ("nova", "glance",
  "neutron", "cinderv3") and region "RegionOne"; clouds name services as they like (and have
  other regions), so here a service is found by its type, in the configured region if any.
* ``ex_force_base_url`` (Mist's ``computeEndpoint``) is applied to *every* connection, so
  glance, neutron and cinder calls would go to nova's URL; here it is set on the compute
  connection alone.
* The identity connection appends ``/v3/auth/tokens`` to the auth URL's path, so an auth
  URL ending in ``/v3`` (as clouds print it) would ask ``/v3/v3/auth/tokens``; it is cut.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

from libcloud.compute.drivers.openstack import (
    OpenStack_2_Connection,
    OpenStack_2_ImageConnection,
    OpenStack_2_NetworkConnection,
    OpenStack_2_NodeDriver,
    OpenStack_2_ReservationConnection,
    OpenStack_2_VolumeV2Connection,
    OpenStack_2_VolumeV3Connection,
)

from controller.errors import Invalid

T = TypeVar("T")


def auth_base(url: str) -> str:
    """The keystone base URL libcloud wants: no trailing ``/v3`` or ``/v2.0``."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("authUrl must be the identity (keystone) URL, like "
                      "https://keystone.example.com:5000/v3", field="authUrl")
    for suffix in ("/v3", "/v2.0"):
        if url.endswith(suffix):
            return url[:-len(suffix)]
    return url


def _by_type(base: type[T]) -> type[T]:
    """``base`` finding its endpoint by service type (and the configured region) alone."""
    cls: Any = type(f"{base.__name__}ByType", (base,), {"service_name": None, "service_region": None})
    return cls  # type: ignore[no-any-return]


class NodeDriver(OpenStack_2_NodeDriver):  # type: ignore[misc]
    connectionCls = _by_type(OpenStack_2_Connection)
    image_connectionCls = _by_type(OpenStack_2_ImageConnection)
    network_connectionCls = _by_type(OpenStack_2_NetworkConnection)
    volumev2_connectionCls = _by_type(OpenStack_2_VolumeV2Connection)
    volumev3_connectionCls = _by_type(OpenStack_2_VolumeV3Connection)
    reservation_connectionCls = _by_type(OpenStack_2_ReservationConnection)


def build(user: str, password: str, auth_url: str, tenant: str, domain: str = "",
          region: str = "", compute_endpoint: str = "", timeout: float = 30.0) -> NodeDriver:
    """A driver that authenticates with a keystone v3 password, scoped to project ``tenant``
    (in the default project domain); ``domain`` is the user's domain name ("Default")."""
    kwargs: dict[str, Any] = {
        "ex_force_auth_url": auth_base(auth_url), "ex_force_auth_version": "3.x_password",
        "ex_tenant_name": tenant, "ex_domain_name": domain or "Default", "timeout": timeout}
    if region:
        kwargs["ex_force_service_region"] = region
    driver = NodeDriver(user, password, **kwargs)
    if compute_endpoint:
        endpoint = compute_endpoint.strip().rstrip("/")
        if urlsplit(endpoint).scheme not in ("http", "https"):
            raise Invalid("computeEndpoint must be an http(s) URL", field="computeEndpoint")
        driver.connection._ex_force_base_url = endpoint
    return driver
