"""Linode over libcloud's API v4 driver: what its translation gets wrong, set right."""

from __future__ import annotations

import re
import secrets as secrets_module
from collections import defaultdict
from typing import Any

from controller.clouds.providers.base import CreateMachine, MachineRecord
from controller.clouds.providers.errors import libcloud_errors
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter
from controller.clouds.providers.linode import SPEC
from controller.errors import Invalid

# LinodeResponseV4 raises a bare LibcloudError for every status but 401/403 and keeps the
# status only in its message ("<reason> Status code: 404.")
_STATUS = re.compile(r"\s*Status code: (\d+)\.?\s*$")


class LinodeAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def driver(self) -> Any:
        from libcloud.compute.drivers.linode import LinodeNodeDriverV4
        from libcloud.compute.types import NodeState

        token = self._field("apikey", secret=True)
        d = LinodeNodeDriverV4(token, api_version="4.0", timeout=self.timeout)
        # the driver indexes its state map with the API's status, so a status it does not
        # know (billing_suspension, ...) would fail the whole listing with a KeyError
        states: defaultdict[str, Any] = defaultdict(lambda: NodeState.UNKNOWN)
        states.update(LinodeNodeDriverV4.LINODE_STATES)
        states["billing_suspension"] = NodeState.SUSPENDED
        d.LINODE_STATES = states
        return d

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.types import InvalidCredsError, LibcloudError

        with libcloud_errors(self.provider, what, self.refused_credential()):
            try:
                return fn(*args, **kwargs)
            except InvalidCredsError:
                raise
            except LibcloudError as exc:
                text = str(getattr(exc, "value", exc))
                m = _STATUS.search(text)
                if m is None:
                    raise
                raise BaseHTTPError(int(m.group(1)), _STATUS.sub("", text)) from None

    def to_machine(self, node: Any) -> MachineRecord:
        record = super().to_machine(node)
        extra = node.extra or {}
        # the driver keeps type and image as plain ids, and tags as a list of strings
        record.size = str(node.size or "")
        record.image = str(node.image or "")
        record.tags = tags_from_list(extra.get("tags") or [])
        record.cores = int((extra.get("specs") or {}).get("vcpus") or 0)
        record.price_per_hour = self.size_price(record.size)
        return record

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        for name in ("size", "image", "location"):
            if not getattr(req, name):
                raise Invalid(f"{self.provider} needs a {name} to create a machine", field=name)
        return super().create_machine(req)

    def create_kwargs(self, req: CreateMachine) -> dict[str, Any]:
        # Linode insists on a root password with an image: a random one nobody keeps, since
        # access is by the SSH key (or by the console's password reset)
        kwargs: dict[str, Any] = {"root_pass": secrets_module.token_urlsafe(24) + "aA1!"}
        if req.public_key:
            kwargs["ex_authorized_keys"] = [req.public_key.strip()]
        if req.cloud_init:
            kwargs["ex_userdata"] = req.cloud_init
        if req.tags:
            kwargs["ex_tags"] = [f"{k}={v}" if v else k for k, v in req.tags.items()]
        return kwargs


def tags_from_list(tags: list[Any]) -> dict[str, str]:
    """Linode tags are strings: ``key=value`` becomes a pair, a bare word a key with no value."""
    out: dict[str, str] = {}
    for tag in tags:
        key, _, value = str(tag).partition("=")
        out[key] = value
    return out
