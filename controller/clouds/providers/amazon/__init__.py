"""Amazon Web Services: EC2 instances, EBS volumes, VPCs and subnets, and Route53 DNS, through
libcloud (with fixes for today's APIs, see ``ec2.py`` and ``route53.py``).

Mist v2 ``AmazonCredentials``: ``apikey`` (the access key id), ``apisecret`` (the secret access
key), ``region``. Our extension: ``endpoint``, the URL of an AWS-compatible endpoint that serves
EC2 and Route53 (a gateway, or moto in the tests); requests to it are signed with SigV4.

Machines: start, stop, reboot, destroy (terminate), rename (the ``Name`` tag) and resize (the
instance must be stopped, as AWS requires). Create takes an instance type, an AMI id and an
availability zone; the public key is imported as a key pair named after its content,
cloud-init is the user data, ``extra.subnet`` (and ``extra.security_groups``, ids) place it in
a VPC. Images are the account's own AMIs plus the newest few of some well-known public
families (see ``adapter.FEATURED_IMAGES``), not the tens of thousands AWS lists. Locations are
the region's availability zones; sizes and prices come from libcloud's bundled data."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

# Mist v2 AmazonRegions
REGIONS = (
    "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
    "eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1", "ca-central-1",
    "sa-east-1", "us-east-1", "us-west-1", "us-west-2", "us-east-2", "ap-south-1", "ap-east-1",
    "cn-north-1", "cn-northwest-1", "us-gov-west-1", "us-gov-east-1",
)

SPEC = ProviderSpec(
    name="amazon",
    title="Amazon Web Services",
    fields=(
        # the access key id names the key (it is shown in AWS's console and in CloudTrail):
        # an identifier, not a secret; the secret access key is the secret
        Field("apikey", required=True, help="Your AWS API key (access key id)"),
        Field("apisecret", required=True, secret=True,
              help="Your AWS API secret (secret access key)"),
        Field("region", required=True, choices=REGIONS, help="The AWS region"),
        Field("endpoint", help="URL of an AWS-compatible endpoint for EC2 and Route53 "
                               "(Overcast extension), e.g. http://127.0.0.1:5000"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.CREATE, Capability.START, Capability.STOP,
        Capability.REBOOT, Capability.DESTROY, Capability.RESIZE, Capability.RENAME,
        Capability.VOLUMES, Capability.ATTACH, Capability.NETWORKS, Capability.DNS,
        Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS}),
    adapter="controller.clouds.providers.amazon.adapter:AmazonAdapter",
    proved="e2e:moto",
    stopped_is_free=True,  # a stopped instance is not billed for compute (its EBS volumes are)
)
