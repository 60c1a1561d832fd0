"""Every provider Overcast offers: its Mist v2 name -> its package, imported lazily.

Each package ``controller.clouds.providers.<name>`` declares ``SPEC`` (a
:class:`~controller.clouds.providers.base.ProviderSpec`) in its ``__init__`` without importing
its driver; ``SPEC.adapter`` names the adapter class, imported only when a cloud is used."""

from __future__ import annotations

import importlib
from typing import Any

from controller.clouds.providers.base import Adapter, ProviderSpec
from controller.errors import Invalid

# the Mist v2 AddCloudRequest providers, without the Kubernetes family (a later issue)
PROVIDERS = ("amazon", "azure", "google", "cloudsigma", "alibaba", "digitalocean", "equinix",
             "ibm", "linode", "rackspace", "vultr", "openstack", "onapp", "vsphere", "kvm", "lxd",
             "docker", "other")


def spec(name: str) -> ProviderSpec:
    """The provider's spec; :class:`Invalid` (naming the choices) for an unknown provider."""
    if name not in PROVIDERS:
        raise Invalid(f"unknown provider {name!r}; one of: {', '.join(PROVIDERS)}", field="provider")
    module = importlib.import_module(f"controller.clouds.providers.{name}")
    s: ProviderSpec = module.SPEC
    return s


def adapter_class(s: ProviderSpec) -> type[Adapter]:
    module_name, _, cls = s.adapter.partition(":")
    cls_obj: Any = getattr(importlib.import_module(module_name), cls)
    return cls_obj  # type: ignore[no-any-return]


def build(name: str, config: dict[str, Any], secrets: dict[str, str], timeout: float) -> Adapter:
    """A new adapter for one cloud. Blocking imports (libcloud) happen here: call it off the
    event loop."""
    _no_redirects()
    return adapter_class(spec(name))(config, secrets, timeout)


def _no_redirects() -> None:
    """Provider calls never follow HTTP redirects: an allowed endpoint could otherwise bounce
    a call (with its credentials) to the controller's own host or a metadata service."""
    import libcloud.http

    libcloud.http.ALLOW_REDIRECTS = 0  # type: ignore[assignment]
