"""libcloud's EC2 driver with the fixes AWS-compatible endpoints (and moto) need.

Each fix names what went wrong without it (see docs TESTBED "AWS: moto server"):
namespace-tolerant parsing, AWS error bodies read whatever their shape, SigV4 for every region
when an endpoint is given, tags numbered from 1, no ``<return>`` read as success, and
``DetachVolume`` sent with the instance. Imports libcloud: load it only through the adapter."""

from __future__ import annotations

import base64
from typing import Any, cast

from libcloud.compute.constants.ec2_region_details_partial import (
    REGION_DETAILS as REGION_DETAILS_PARTIAL,
)
from libcloud.compute.drivers.ec2 import (
    NAMESPACE,
    EC2Connection,
    EC2NodeDriver,
    EC2Response,
)
from libcloud.compute.types import NodeState

from controller.clouds.providers.amazon.aws import AWSError, SigV4, raise_error, renamespace


class Response(EC2Response):
    def parse_body(self) -> Any:
        return renamespace(super().parse_body(), NAMESPACE)

    def parse_error(self) -> str:
        return raise_error(int(self.status), self.body or "", str(self.error or ""))


class Connection(EC2Connection):
    responseCls = Response

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.signature_version == "4":
            self.signer = cast(Any, SigV4(access_key=self.user_id, access_secret=self.key,
                                          version=self.version, connection=self))


class Driver(EC2NodeDriver):
    """EC2 for one region, at AWS or at ``host``/``port`` (an AWS-compatible endpoint)."""

    connectionCls = Connection
    NODE_STATE_MAP = {
        "pending": NodeState.PENDING,
        "running": NodeState.RUNNING,
        "shutting-down": NodeState.STOPPING,   # terminating: libcloud says UNKNOWN
        "stopping": NodeState.STOPPING,
        "stopped": NodeState.STOPPED,
        "terminated": NodeState.TERMINATED,
    }

    def __init__(self, key: str, secret: str, region: str, **kwargs: Any) -> None:
        if region in REGION_DETAILS_PARTIAL:
            super().__init__(key, secret, region=region, **kwargs)
            return
        # a region newer than libcloud's table (us-gov-east-1 is in Mist's list): AWS names
        # its endpoints regularly, and SigV4 is what every new region accepts
        self.region_name = region
        self.token = kwargs.pop("token", None)
        self.api_name = f"ec2_{region}"
        self.country = ""
        self.signature_version = str(kwargs.pop("signature_version", None) or "4")
        host = kwargs.pop("host", None) or f"ec2.{region}.amazonaws.com"
        super(EC2NodeDriver, self).__init__(key=key, secret=secret, host=host, **kwargs)

    # -- results moto (and some compatibles) answer without <return>true</return> -----------
    def _get_boolean(self, element: Any) -> bool:
        text = element.findtext(f"{{{NAMESPACE}}}return") if element is not None else None
        return text is None or text == "true"  # an error would have raised already

    def _get_terminate_boolean(self, element: Any) -> bool:
        return True  # TerminateInstances answered without an error: it is terminating

    # -- tags: AWS numbers list parameters from 1; libcloud's Tag.0 gets a 400 ------------------
    def ex_create_tags(self, resource: Any, tags: dict[str, str]) -> bool:
        if not tags:
            return True
        params: dict[str, str] = {"Action": "CreateTags", "ResourceId.1": resource.id}
        for i, (key, value) in enumerate(tags.items(), start=1):
            params[f"Tag.{i}.Key"] = key
            params[f"Tag.{i}.Value"] = value
        return self._get_boolean(self.connection.request(self.path, params=params).object)

    def ex_delete_tags(self, resource: Any, tags: dict[str, str | None]) -> bool:
        if not tags:
            return True
        params: dict[str, str] = {"Action": "DeleteTags", "ResourceId.1": resource.id}
        for i, (key, value) in enumerate(tags.items(), start=1):
            params[f"Tag.{i}.Key"] = key
            if value is not None:
                params[f"Tag.{i}.Value"] = value
        return self._get_boolean(self.connection.request(self.path, params=params).object)

    # -- volumes ----------------------------------------------------------------------------------
    def detach_volume(self, volume: Any, ex_force: bool = False, ex_node_id: str = "") -> bool:
        """Detach; with ``ex_node_id`` (moto answers 500 without it, AWS accepts both)."""
        params: dict[str, str] = {"Action": "DetachVolume", "VolumeId": volume.id}
        if ex_node_id:
            params["InstanceId"] = ex_node_id
        if ex_force:
            params["Force"] = "true"
        self.connection.request(self.path, params=params)
        return True

    # -- sizes ------------------------------------------------------------------------------------
    def list_sizes(self, location: Any = None) -> list[Any]:
        from libcloud.compute.constants.ec2_region_details_complete import REGION_DETAILS

        if self.region_name in REGION_DETAILS:
            return list(super().list_sizes(location))
        # a region libcloud has no data for: every instance type it knows, price unknown
        from libcloud.compute.base import NodeSize
        from libcloud.compute.constants.ec2_instance_types import INSTANCE_TYPES

        types: dict[str, Any] = INSTANCE_TYPES
        return [NodeSize(driver=self, **{**attrs, "price": None}) for attrs in types.values()]

    # -- images -----------------------------------------------------------------------------------
    def ex_list_images_named(self, owners: list[str], names: list[str]) -> list[Any]:
        """Available images of any of ``owners`` whose name matches any of ``names`` (AWS
        wildcards ``*`` and ``?``), in one DescribeImages call."""
        params: dict[str, str] = {"Action": "DescribeImages"}
        params.update({f"Owner.{n}": owner for n, owner in enumerate(owners, start=1)})
        params.update(self._build_filters({"name": names, "state": "available"}))
        return list(self._to_images(self.connection.request(self.path, params=params).object))

    # -- key pairs --------------------------------------------------------------------------------
    def ex_import_key(self, name: str, public_key: str) -> None:
        """Import ``public_key`` under ``name``; an existing pair of that name is kept (names
        are derived from the key's content by the caller)."""
        params = {"Action": "ImportKeyPair", "KeyName": name,
                  "PublicKeyMaterial": base64.b64encode(public_key.strip().encode()).decode()}
        try:
            self.connection.request(self.path, params=params)
        except AWSError as exc:
            if exc.aws_code != "InvalidKeyPair.Duplicate":
                raise

