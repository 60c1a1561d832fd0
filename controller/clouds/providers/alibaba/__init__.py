"""Alibaba Cloud ECS through libcloud's ``aliyun_ecs`` driver, one region per cloud.

Mist v2 ``AlibabaCredentials``: ``apikey`` (an AccessKey ID), ``apisecret`` (its secret) and
``region`` (a region id such as ``eu-central-1``). Calls go to the region's own endpoint
``ecs.<region>.aliyuncs.com``. Locations are the region's zones, as machines name them."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="alibaba",
    title="Alibaba Cloud",
    fields=(
        # the AccessKey ID names the key (as AWS's access key id does): an identifier
        Field("apikey", required=True, help="An AccessKey ID (of a RAM user)"),
        Field("apisecret", required=True, secret=True, help="That AccessKey's secret"),
        Field("region", required=True, help="The region id, e.g. eu-central-1, cn-hangzhou"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.alibaba.adapter:AlibabaAdapter",
    proved="unit",
    # pay-as-you-go instances keep billing when stopped unless the account turned on
    # "no fees for stopped instances"; the driver does not ask for StopCharging
    stopped_is_free=False,
)
