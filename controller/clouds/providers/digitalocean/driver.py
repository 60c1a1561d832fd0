"""libcloud's DigitalOcean v2 drivers, made to reach a chosen endpoint and to take a timeout.

Quirks worked around here (libcloud 3.8/3.9):

* ``DigitalOcean_v2_NodeDriver`` cannot be built directly, and through
  ``DigitalOceanNodeDriver`` any keyword (``timeout``, ``host``...) reaches ``object.__new__``
  and raises ``TypeError``: its ``__new__`` chain forwards keywords it should not.
* ``DigitalOcean_v2_BaseDriver.__init__`` accepts ``secure``, ``host`` and ``port`` and then
  drops them, so the connection always goes to https://api.digitalocean.com.

Both subclasses below build the connection through ``BaseDriver.__init__`` themselves."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from libcloud.common.digitalocean import DigitalOcean_v2_BaseDriver
from libcloud.compute.drivers.digitalocean import DigitalOcean_v2_NodeDriver
from libcloud.dns.drivers.digitalocean import DigitalOceanDNSDriver

from controller.errors import Invalid

DEFAULT_ENDPOINT = "https://api.digitalocean.com"
PER_PAGE = 200                     # DigitalOcean's maximum page size


def parse_endpoint(endpoint: str) -> tuple[bool, str, int, str]:
    """``(secure, host, port, path prefix)`` of an API base URL; :class:`Invalid` if it is not
    an http(s) URL with a host."""
    parts = urlsplit(endpoint.strip() or DEFAULT_ENDPOINT)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("endpoint must be an http:// or https:// URL, like "
                      f"{DEFAULT_ENDPOINT}", field="endpoint")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise Invalid("endpoint has an invalid port", field="endpoint") from None
    return secure, parts.hostname, port, parts.path.rstrip("/")


def _init(driver: Any, token: str, endpoint: str, timeout: float, per_page: int) -> None:
    secure, host, port, prefix = parse_endpoint(endpoint)
    driver.ex_per_page = per_page
    # skip DigitalOcean_v2_BaseDriver.__init__, which drops secure/host/port
    super(DigitalOcean_v2_BaseDriver, driver).__init__(
        token, secure=secure, host=host, port=port, timeout=timeout)
    driver.connection.request_path = prefix  # a proxy's path prefix, "" for the real API


class NodeDriver(DigitalOcean_v2_NodeDriver):  # type: ignore[misc]
    """The compute driver on ``endpoint``. ``_to_node`` also keeps the region's slug, which
    libcloud drops (it keeps only the region's display name)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> NodeDriver:
        return object.__new__(cls)

    def __init__(self, token: str, endpoint: str = "", timeout: float = 30.0,
                 per_page: int = PER_PAGE) -> None:
        _init(self, token, endpoint, timeout, per_page)

    def _to_node(self, data: dict[str, Any]) -> Any:
        node = super()._to_node(data)
        node.extra["region_slug"] = (data.get("region") or {}).get("slug", "")
        node.extra["volume_ids"] = list(data.get("volume_ids") or [])
        return node


class DNSDriver(DigitalOceanDNSDriver):  # type: ignore[misc]
    """The DNS driver on ``endpoint``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DNSDriver:
        return object.__new__(cls)

    def __init__(self, token: str, endpoint: str = "", timeout: float = 30.0,
                 per_page: int = PER_PAGE) -> None:
        _init(self, token, endpoint, timeout, per_page)
