"""A libcloud node driver for SoftLayer's REST API (``api.softlayer.com/rest/v3.1``): virtual
guests (list, power, delete) and datacenters. Blocking, like every libcloud driver.

REST calls are ``<Service>/<id>/<method>.json``, authenticated by HTTP Basic with the user
name and API key; an object mask picks the fields a listing returns."""

from __future__ import annotations

import base64
from typing import Any

from libcloud.common.base import ConnectionUserAndKey, JsonResponse
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import Node, NodeDriver, NodeLocation
from libcloud.compute.types import NodeState

API_HOST = "api.softlayer.com"
API_ROOT = "/rest/v3.1"
PAGE = 100  # guests per request (``resultLimit=<offset>,<limit>``)
GUEST_MASK = (
    "mask[id,hostname,domain,fullyQualifiedDomainName,primaryIpAddress,"
    "primaryBackendIpAddress,maxCpu,maxMemory,createDate,hourlyBillingFlag,"
    "powerState[keyName],status[keyName],datacenter[name,longName],"
    "operatingSystem[softwareLicense[softwareDescription[name,referenceCode]]],"
    "billingItem[hourlyRecurringFee,recurringFee],tagReferences[tag[name]],"
    "networkComponents[macAddress]]"
)
POWER_STATES = {"RUNNING": NodeState.RUNNING, "HALTED": NodeState.STOPPED,
                "PAUSED": NodeState.PAUSED}


class SoftLayerResponse(JsonResponse):
    def success(self) -> bool:
        return 200 <= int(self.status) < 300

    def parse_error(self) -> Any:
        try:
            body = self.parse_body()
        except Exception:  # an unreadable error body still has a status
            body = None
        message = str(body.get("error") or "") if isinstance(body, dict) else ""
        message = message.strip() or f"HTTP {self.status}"
        if int(self.status) in (401, 403):
            raise InvalidCredsError(message)
        raise BaseHTTPError(int(self.status), message)


class SoftLayerConnection(ConnectionUserAndKey):
    host = API_HOST
    responseCls = SoftLayerResponse

    def add_default_headers(self, headers: dict[str, str]) -> dict[str, str]:
        pair = f"{self.user_id}:{self.key}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        headers["Accept"] = "application/json"
        return headers


class SoftLayerNodeDriver(NodeDriver):
    name = "IBM Cloud classic infrastructure (SoftLayer)"
    website = "https://cloud.ibm.com/docs/sl-reference"
    connectionCls = SoftLayerConnection

    def _get(self, path: str, params: dict[str, str] | None = None, method: str = "GET") -> Any:
        return self.connection.request(f"{API_ROOT}/{path}", params=params or {},
                                       method=method).object

    def list_nodes(self) -> list[Node]:
        guests: list[dict[str, Any]] = []
        while True:
            page = self._get("SoftLayer_Account/getVirtualGuests.json",
                             {"objectMask": GUEST_MASK, "resultLimit": f"{len(guests)},{PAGE}"})
            page = page if isinstance(page, list) else []
            guests.extend(page)
            if len(page) < PAGE:
                return [self._to_node(g) for g in guests]

    def _guest(self, node: Node, method: str) -> bool:
        self._get(f"SoftLayer_Virtual_Guest/{int(str(node.id))}/{method}.json")
        return True

    def start_node(self, node: Node) -> bool:
        return self._guest(node, "powerOn")

    def stop_node(self, node: Node) -> bool:
        return self._guest(node, "powerOffSoft")  # the guest shuts down cleanly

    def reboot_node(self, node: Node) -> bool:
        return self._guest(node, "rebootDefault")  # soft, then hard if the guest hangs

    def destroy_node(self, node: Node) -> bool:
        # deleteObject: immediate for hourly guests; a monthly one is cancelled at the
        # anniversary of its billing
        self._get(f"SoftLayer_Virtual_Guest/{int(str(node.id))}.json", method="DELETE")
        return True

    def list_locations(self) -> list[NodeLocation]:
        data = self._get("SoftLayer_Location_Datacenter/getDatacenters.json",
                         {"objectMask": "mask[id,name,longName]"})
        return [NodeLocation(id=str(d.get("name") or d.get("id")),
                             name=str(d.get("longName") or d.get("name") or ""),
                             country="", driver=self, extra={"id": d.get("id")})
                for d in data or []]

    def _to_node(self, g: dict[str, Any]) -> Node:
        power = str((g.get("powerState") or {}).get("keyName") or "")
        return Node(
            id=str(g["id"]), name=str(g.get("hostname") or g["id"]),
            state=POWER_STATES.get(power, NodeState.UNKNOWN),
            public_ips=[g["primaryIpAddress"]] if g.get("primaryIpAddress") else [],
            private_ips=[g["primaryBackendIpAddress"]] if g.get("primaryBackendIpAddress") else [],
            driver=self, extra=g)
