"""Which cloud configurations reach the controller's own host or link-local addresses."""

from __future__ import annotations

import pytest

from controller.clouds.targets import local_targets


@pytest.mark.parametrize("config", [
    {"endpoint": "http://127.0.0.1:5000"},
    {"endpoint": "http://localhost:5000/"},
    {"authUrl": "https://[::1]:5000/v3"},
    {"host": "169.254.169.254"},
    {"host": "0.0.0.0:2375"},
    {"hosts": [{"host": "10.0.0.5"}, {"host": "127.0.0.2"}]},
    {"uri": "qemu:///system"},
    {"uri": "test:///default"},
    {"uri": "qemu+ssh://root@127.0.0.1/system"},
    {"socket": "/run/docker.sock"},
])
def test_local_targets_are_found(config: dict[str, object]) -> None:
    assert local_targets(config)


@pytest.mark.parametrize("config", [
    {"endpoint": "https://ec2.eu-west-1.amazonaws.com"},
    {"host": "10.1.2.3"},
    {"authUrl": "http://192.168.10.5:5000/v3"},
    {"hosts": [{"host": "10.0.0.5", "port": 22}]},
    {"uri": "qemu+ssh://root@10.0.0.9/system"},
    {"region": "us-east-1", "apikey": "AKIA"},
    {"host": "no-such-host.invalid"},
])
def test_remote_and_private_targets_are_allowed(config: dict[str, object]) -> None:
    assert local_targets(config) == []
