"""The cloud commands of ``overcast``, run as a user runs them against a real controller:
providers, clouds add/list/show/poll/remove with a bare-metal ("other") cloud whose host is a
real sshd in a network namespace, machines (table, --tree, show, the old ``machines ID``),
tags, costs, jobs, an action the provider does not offer, bad input and exit codes; and, with
moto as AWS, actions that run as jobs followed by ``--wait``. Reboot is never sent to an
"other" machine: the namespace shares this machine's processes."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.cli.inventory import tree
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.store import open_store
from controller.store.docs import dump
from tests.support import sshd as sshd_support
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller
from tests.support.netns import Lab

Run = Callable[..., subprocess.CompletedProcess[str]]

why = sshd_support.available()
needs_sshd = pytest.mark.skipif(why is not None, reason=why or "")


def _login(ctl: Controller, xdg: Path) -> Run:
    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return ctl.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})
    r = run("login", ctl.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


@pytest.fixture(scope="module")
def cli(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _login(controller, tmp_path_factory.mktemp("xdg"))


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def fails(r: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with ``code``, said so on one line of stderr and nothing on stdout."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr


def fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        out[k] = v.strip()
    return out


# ---- providers and bad input --------------------------------------------------------------------
def test_providers_say_which_fields_are_required_and_secret(cli: Run) -> None:
    out = ok(cli("providers"))
    assert out.splitlines()[0].split() == ["PROVIDER", "TITLE", "FIELDS"]
    amazon = next(ln for ln in out.splitlines() if ln.startswith("amazon "))
    assert "apikey*" in amazon and "apisecret* (secret)" in amazon and "endpoint" in amazon
    specs = json.loads(ok(cli("providers", "--json")))
    other = next(s for s in specs if s["provider"] == "other")
    assert other["fields"][0]["name"] == "hosts" and other["fields"][0]["required"]
    out = ok(cli("providers", "amazon"))
    assert "capabilities:" in out and "stop" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("apisecret"))
    assert row.split()[1:3] == ["yes", "yes"]  # required, secret
    fails(cli("providers", "nimbus"), 2, "unknown provider 'nimbus'", "amazon")


def test_bad_input_is_refused_with_clear_messages(cli: Run, controller: Controller,
                                                  tmp_path: Path) -> None:
    secret = "s3cr3t-never-shown"
    fails(cli("clouds", "add", "nimbus", "--name", "x"), 2, "unknown provider 'nimbus'", "other")
    fails(cli("clouds", "add", "amazon", "--name", "x", "--cred", "apikey=AKIA"), 2,
          "missing credentials for amazon: apisecret, region", "--cred")
    fails(cli("clouds", "add", "other", "--name", "x"), 2, "missing credential for other: hosts")
    err = fails(cli("clouds", "add", "amazon", "--name", "x", "--cred", secret), 2, "NAME=VALUE")
    assert secret not in err
    fails(cli("clouds", "add", "amazon", "--name", "x", "--cred", f"apisekret={secret}"), 2,
          "no credential 'apisekret'", "apisecret")
    err = fails(cli("clouds", "add", "other", "--name", "x", "--cred", f"hosts={secret}"), 2,
                "hosts is a JSON list")
    assert secret not in err
    fails(cli("clouds", "add", "amazon", "--name", "x", "--cred", "apikey=A", "--cred",
              f"apisecret=@{tmp_path / 'nope'}", "--cred", "region=eu-west-1"), 2,
          f"cannot read credential apisecret from {tmp_path / 'nope'}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"apisecret": "' + secret + '",')
    err = fails(cli("clouds", "add", "amazon", "--name", "x", "--from-file", str(bad)), 2, "not JSON")
    assert secret not in err
    bad.write_text(json.dumps({"provider": "amazon", "name": "x", "credentials": {}}))
    fails(cli("clouds", "add", "other", "--from-file", str(bad)), 2, "for provider 'amazon'")
    fails(cli("clouds", "add", "other", "--from-file", "-", "--cred", "hosts=-", input="{}"), 2,
          "standard input is read once")
    # the secret read from standard input goes to the controller and nowhere else: the
    # provider cannot be reached (the controller answered: exit 1, saying so)
    r = cli("clouds", "add", "amazon", "--name", "nowhere", "--cred", "apikey=AKIANOWHERE",
            "--cred", "apisecret=-", "--cred", "region=eu-west-1", "--cred",
            "endpoint=http://127.0.0.1:1", input=secret + "\n")
    assert r.returncode == 1 and secret not in r.stdout + r.stderr, r
    assert "cannot reach" in r.stderr or "did not answer" in r.stderr, r.stderr
    # clouds, machines and jobs that do not exist: exit 4, saying what is missing
    args: tuple[str, ...]
    for args in (("clouds", "show", "nowhere"), ("clouds", "poll", "nowhere"),
                 ("clouds", "remove", "nowhere", "--yes"), ("machines", "--cloud", "nowhere"),
                 ("sizes", "--cloud", "nowhere"), ("machines", "create", "--cloud", "nowhere",
                                                   "--name", "x", "--dry-run")):
        fails(cli(*args), 4, "no such cloud")
    for args in (("machines", "show", "nope"), ("machines", "nope"), ("machines", "stop", "nope")):
        fails(cli(*args), 4, "no such machine")
    fails(cli("jobs", "show", "nope"), 4, "no such job")
    fails(cli("tag", "machine", "nope", "a=b"), 4, "no such machine")
    fails(cli("tag", "planet", "x", "a=b"), 1, "type 'planet'")
    fails(cli("tag", "machine", "x", "=b"), 2, "KEY=VALUE")
    fails(cli("machines", "resize", "x"), 2, "--size")
    private = tmp_path / "id_test"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    err = fails(cli("machines", "create", "--cloud", "c", "--name", "n", "--key-file", str(private)),
                2, "is a private key")
    assert "AAAA" not in err
    # not logged in: exit 3
    fails(controller.cli("clouds", env={"XDG_CONFIG_HOME": str(tmp_path / "none")}), 3, "not logged in")


# ---- a bare-metal cloud ------------------------------------------------------------------------
@dataclass
class World:
    sshd: sshd_support.Sshd
    key_file: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bm")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp / "id_ed25519"
    key_file.write_bytes(key.export_private_key())
    with Lab(subnet=random.randint(100, 149)) as lab:
        sshd = sshd_support.Sshd(lab.add_host(), tmp / "web", hostname="occlibare")
        sshd.authorize(key.export_public_key().decode())
        with sshd:
            yield World(sshd, key_file)


@needs_sshd
def test_a_bare_metal_cloud_through_the_cli(cli: Run, world: World, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"hosts": [{"host": world.sshd.host.address, "alias": "bare1",
                                            "key": f"@{world.key_file}"}]}))
    r = cli("clouds", "add", "other", "--name", "Rack", "--from-file", str(hosts), "--json")
    cloud = json.loads(ok(r))
    assert "BEGIN" not in r.stdout + r.stderr and cloud["credentials_set"] == ["hosts.0.key"]
    cid = cloud["id"]
    # the same host again, the whole cloud on standard input and the key through --cred
    key_text = world.key_file.read_text()
    r = cli("clouds", "add", "other", "--from-file", "-", input=json.dumps({
        "name": "Rack 2", "provider": "other", "poll_interval": 3600,
        "credentials": {"hosts": [{"host": world.sshd.host.address, "key": key_text}]}}))
    assert r.returncode == 0 and "added cloud Rack 2" in r.stdout and "BEGIN" not in r.stdout, r
    assert "polled every 3600 s" in r.stdout
    assert json.loads(ok(cli("clouds", "show", "Rack 2", "--json")))["poll_interval"] == 3600
    ok(cli("clouds", "remove", "Rack 2", "-y"))
    # a list credential from a file given to --cred, its key read from another file
    listed_hosts = tmp_path / "list.json"
    listed_hosts.write_text(json.dumps([{"host": world.sshd.host.address, "key": f"@{world.key_file}"}]))
    r = cli("clouds", "add", "other", "--name", "Rack 3", "--cred", f"hosts=@{listed_hosts}")
    assert r.returncode == 0 and "added cloud Rack 3" in r.stdout, r
    ok(cli("clouds", "remove", "Rack 3", "--yes"))

    out = ok(cli("clouds", "poll", "Rack"))
    assert out.startswith("polled Rack: ok") and "1 machines" in out
    out = ok(cli("clouds"))
    assert out.splitlines()[0].split()[:5] == ["ID", "NAME", "PROVIDER", "STATE", "MACHINES"]
    row = next(ln for ln in out.splitlines() if ln.startswith(cid))
    assert row.split()[1:6] == ["Rack", "other", "ok", "1", "1"]
    assert [c["id"] for c in json.loads(ok(cli("clouds", "list", "--json")))] == [cid]
    shown = fields(ok(cli("clouds", "show", "Rack")))
    assert shown["id"] == cid and shown["status"].startswith("ok, polled")
    assert shown["machines"] == "1 (1 running)" and shown["credentials_set"] == "hosts.0.key"
    assert "BEGIN" not in str(shown) and world.sshd.host.address in shown["config"]
    assert json.loads(ok(cli("clouds", "show", cid, "--json")))["totals"]["running"] == 1

    # machines: the table (cloud by name), JSON with ids, show, the old `machines ID`
    out = ok(cli("machines", "--cloud", "Rack"))
    assert out.splitlines()[0].split() == ["ID", "NAME", "STATE", "CLOUD", "PUBLIC_IPS", "TAGS"]
    [line] = out.splitlines()[1:]
    assert line.split()[1:4] == ["bare1", "running", "Rack"]
    [m] = json.loads(ok(cli("machines", "--cloud", cid, "--json")))
    assert m["name"] == "bare1" and m["hostname"] == "occlibare"
    shown = fields(ok(cli("machines", "show", m["id"])))
    assert shown["name"] == "bare1" and shown["state"] == "running"
    assert shown["cloud"] == f"Rack ({cid})"
    assert shown["hostname"] == "occlibare" and "(unknown)" in shown["cost"]
    assert fields(ok(cli("machines", m["id"])))["name"] == "bare1"
    assert json.loads(ok(cli("machines", "--json", m["id"])))["id"] == m["id"]
    assert m["id"] in ok(cli("machines", "--tree", "--cloud", "Rack"))

    # stop is not offered for bare metal: refused before any job, in words, exit 1
    for args in (("machines", "stop", m["id"]), ("machines", "stop", m["id"], "--wait", "--json")):
        fails(cli(*args), 1, "does not support stop")
    assert not [j for j in json.loads(ok(cli("jobs", "--json"))) if j["action"] == "machine.stop"]
    fails(cli("volumes", "create", "--cloud", "Rack", "--name", "v", "--size", "1"), 1,
          "does not support volumes")

    # tags, and costs from a cost tag (a server of one's own has no list price)
    out = ok(cli("tag", "machine", m["id"], "env=lab", "cost_per_month=73", "temp=x"))
    assert "set env=lab, cost_per_month=73, temp=x on 1 machine(s)" in out
    ok(cli("tag", "machine", m["id"], "temp", "--remove"))
    tags = json.loads(ok(cli("machines", "show", m["id"], "--json")))["tags"]
    assert tags == {"env": "lab", "cost_per_month": "73"}
    ok(cli("tag", "cloud", "Rack", "team=ops"))
    listed_tags = json.loads(ok(cli("tags", "--json")))
    assert {"key": "env", "value": "lab", "resources": {"machine": 1}, "count": 1} in listed_tags
    assert any(t["key"] == "team" and t["resources"] == {"cloud": 1} for t in listed_tags)
    assert "env" in ok(cli("tags", "--type", "machine"))
    costs = json.loads(ok(cli("costs", "--tag", "env", "--json")))
    assert costs["org"]["monthly"] == 73 and costs["org"]["hourly"] == 0.1
    assert [c["name"] for c in costs["clouds"] if c["id"] == cid] == ["Rack"]
    lab = next(t for t in costs["tags"] if t["value"] == "lab")
    assert lab["monthly"] == 73 and lab["machines"] == 1
    out = ok(cli("costs", "--tag", "env"))
    assert out.startswith("estimated: $0.1000/hour, $73.00/month for 1 machine(s)")
    assert any(ln.split()[:2] == ["lab", "1"] for ln in out.splitlines())

    # remove: asks first (refused without a terminal), then forgets the inventory
    fails(cli("clouds", "remove", "Rack"), 2, "needs --yes")
    out = ok(cli("clouds", "remove", "Rack", "--yes"))
    assert f"removed cloud Rack ({cid}); forgot 1 machine" in out and "nothing was changed" in out
    fails(cli("clouds", "show", "Rack"), 4, "no such cloud")
    assert json.loads(ok(cli("machines", "--json", "--search", "name:bare1"))) == []


# ---- hosts and their guests ------------------------------------------------------------------------
TREE: list[dict[str, Any]] = [
    {"id": "h1", "name": "host-1", "state": "running", "children": ["g1", "g2"]},
    {"id": "g1", "name": "guest-1", "state": "running", "parent": "h1"},
    {"id": "g2", "name": "guest-2", "state": "stopped", "parent": "h1", "children": ["g3"]},
    {"id": "g3", "name": "nested", "state": "running", "parent": "g2"},
    {"id": "s1", "name": "alone", "state": "running"},
    {"id": "o1", "name": "orphan", "state": "running", "parent": "gone"},
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("tree")
    c = Controller(tmp)
    org = c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--org", "Acme")["org"]["id"]
    store = open_store(Path(c.data_dir) / "store")
    try:
        for m in TREE:
            store.put(machine_key(org, m["id"]), dump(MACHINE, m))
    finally:
        store.close()
    c.start()
    yield _login(c, tmp / "xdg")
    c.stop()


def test_tree_shows_hosts_with_their_guests_indented(seeded: Run) -> None:
    out = ok(seeded("machines", "--tree", "--sort", "name")).splitlines()
    name = slice(out[0].index("NAME"), out[0].index("STATE"))
    rows = [(ln.split()[0], ln[name].rstrip()) for ln in out[1:]]
    assert rows == [("s1", "alone"), ("h1", "host-1"), ("g1", "└─ guest-1"), ("g2", "└─ guest-2"),
                    ("g3", "   └─ nested"), ("o1", "orphan")]
    listed = json.loads(ok(seeded("machines", "list", "--tree", "--sort", "name", "--json")))
    assert [m["id"] for m in listed] == ["s1", "h1", "g1", "g2", "g3", "o1"]
    shown = fields(ok(seeded("machines", "show", "g2")))
    assert shown["parent"] == "h1" and shown["children"] == "g3"


def test_tree_survives_a_loop_of_parents() -> None:
    loop: list[dict[str, Any]] = [{"id": "a", "parent": "b"}, {"id": "b", "parent": "a"},
                                  {"id": "c", "parent": "c"}]
    assert sorted(m["id"] for _, m in tree(loop)) == ["a", "b", "c"]


# ---- jobs and --wait, with moto as AWS ----------------------------------------------------------
try:
    import boto3

    from tests.support.moto import ACCESS_KEY, SECRET_KEY, MotoServer, moto_fixture

    moto = moto_fixture("module")
    no_moto = ""
except ImportError as exc:  # moto or boto3 missing: the lead's environment decides
    no_moto = f"moto is not available: {exc}"


@pytest.mark.skipif(bool(no_moto), reason=no_moto)
def test_actions_run_as_jobs_and_wait_shows_their_progress(cli: Run, moto: MotoServer) -> None:
    moto.reset()
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.url,
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType="t2.micro", MinCount=1, MaxCount=1,
                      TagSpecifications=[{"ResourceType": "instance",
                                          "Tags": [{"Key": "Name", "Value": "web"}]}])
    r = cli("clouds", "add", "amazon", "--name", "aws", "--cred", f"apikey={ACCESS_KEY}",
            "--cred", "apisecret=-", "--cred", "region=us-east-1", "--cred", f"endpoint={moto.url}",
            input=SECRET_KEY + "\n")
    assert r.returncode == 0 and SECRET_KEY not in r.stdout + r.stderr, r
    assert fields(ok(cli("clouds", "show", "aws")))["credentials_set"] == "apisecret"
    ok(cli("clouds", "poll", "aws"))
    [m] = json.loads(ok(cli("machines", "--cloud", "aws", "--json")))
    mid = m["id"]
    assert m["name"] == "web" and m["state"] == "running" and m["cost"]["source"] == "pricing"
    for kind in ("sizes", "images", "locations", "volumes", "networks"):
        assert json.loads(ok(cli(kind, "--cloud", "aws", "--json", "--limit", "5"))), kind
    assert "us-east-1a" in ok(cli("locations", "--cloud", "aws"))

    # --wait: the job's progress on stderr as it comes (stdout is not a terminal), the
    # outcome on stdout, exit 0
    r = cli("machines", "stop", mid, "--wait")
    assert r.returncode == 0, r
    assert "stop web on aws (amazon)" in r.stderr and "refreshing the inventory" in r.stderr
    [line] = r.stdout.splitlines()
    assert line.startswith("machine.stop web: succeeded (job ")
    stop_job = line.rsplit(" ", 1)[1].rstrip(")")
    ok(cli("clouds", "poll", "aws"))
    assert json.loads(ok(cli("machines", "show", mid, "--json")))["state"] == "stopped"
    job = json.loads(ok(cli("machines", "resize", mid, "--size", "t2.small", "--wait", "--json")))
    assert job["status"] == "succeeded" and job["action"] == "machine.resize"
    ok(cli("machines", "start", mid, "--wait"))
    # a job that fails: exit 1, its error in words, its id to look it up
    r = cli("machines", "resize", mid, "--size", "t2.medium", "--wait")
    assert r.returncode == 1, r
    assert "overcast: machine.resize web failed: amazon can change the size of a stopped machine " \
           "only" in r.stderr and "stop it first" in r.stderr
    failed_job = r.stderr.rsplit("(job ", 1)[1].split(")")[0]

    jobs = json.loads(ok(cli("jobs", "--json")))
    by_id = {j["id"]: j for j in jobs}
    assert by_id[stop_job]["status"] == "succeeded" and by_id[failed_job]["status"] == "failed"
    assert jobs[0]["created"] == max(j["created"] for j in jobs)  # newest first (to the second)
    out = ok(cli("jobs"))
    assert out.splitlines()[0].split()[:4] == ["ID", "ACTION", "TARGET", "STATUS"]
    shown = ok(cli("jobs", "show", stop_job))
    assert fields(shown)["status"] == "succeeded" and "stop web on aws (amazon)" in shown
    r = cli("jobs", "show", failed_job)
    assert r.returncode == 1 and "stop it first" in r.stdout, r

    # without --wait: the job as it starts (JSON: a list, one per machine); `jobs wait` follows
    [started] = json.loads(ok(cli("machines", "stop", mid, "--json")))
    assert started["action"] == "machine.stop" and started["status"] in ("queued", "running", "succeeded")
    out = ok(cli("jobs", "wait", started["id"]))
    assert out.startswith("machine.stop web: succeeded")
    # several machines, one unknown: the others still run, the exit code says what failed
    r = cli("machines", "start", mid, "nope", "--wait")
    assert r.returncode == 4 and "overcast: start nope: no such machine" in r.stderr, r
    assert "machine.start web: succeeded" in r.stdout

    out = ok(cli("machines", "create", "--cloud", "aws", "--name", "api", "--size", "t2.micro",
                 "--image", image, "--quantity", "2", "--tag", "env=dev", "--dry-run"))
    assert fields(out)["names"] == "api-1, api-2" and fields(out)["image"] == image
    assert len(json.loads(ok(cli("machines", "--cloud", "aws", "--json")))) == 1
    ok(cli("clouds", "remove", "aws", "--yes"))


COMMANDS = [("clouds",), ("clouds", "add"), ("clouds", "list"), ("clouds", "show"),
            ("clouds", "remove"), ("clouds", "poll"), ("providers",), ("machines",),
            ("machines", "show"), ("machines", "stop"), ("machines", "resize"),
            ("machines", "rename"), ("machines", "create"), ("volumes",), ("volumes", "attach"),
            ("networks", "create"), ("zones",), ("zones", "records"), ("zones", "record-create"),
            ("zones", "record-delete"), ("sizes",), ("images",), ("locations",), ("tag",),
            ("tags",), ("costs",), ("jobs",), ("jobs", "show"), ("jobs", "wait")]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help(controller: Controller, cmd: tuple[str, ...]) -> None:
    r = controller.cli(*cmd, "--help")
    assert r.returncode == 0 and r.stderr == "", r
    assert r.stdout.startswith(f"usage: overcast {' '.join(cmd)}")


@pytest.mark.skipif(bool(no_moto), reason=no_moto)
def test_volumes_and_dns_records_through_the_cli(cli: Run, moto: MotoServer) -> None:
    moto.reset()
    kw: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": moto.url,
                          "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
    ec2, route53 = boto3.client("ec2", **kw), boto3.client("route53", **kw)
    route53.create_hosted_zone(Name="example.com", CallerReference="cli-test")
    vol = ec2.create_volume(Size=5, AvailabilityZone="us-east-1a")["VolumeId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType="t2.micro", MinCount=1, MaxCount=1)
    ok(cli("clouds", "add", "amazon", "--name", "aws2", "--cred", f"apikey={ACCESS_KEY}", "--cred",
           f"apisecret={SECRET_KEY}", "--cred", "region=us-east-1", "--cred", f"endpoint={moto.url}"))
    ok(cli("clouds", "poll", "aws2"))
    [zone] = json.loads(ok(cli("zones", "--cloud", "aws2", "--json")))
    assert zone["domain"] == "example.com"
    out = ok(cli("zones", "record-create", zone["id"], "--name", "www", "--type", "a", "--data",
                 "192.0.2.10", "--wait"))
    assert out.startswith("record.create www: succeeded")
    ok(cli("clouds", "poll", "aws2"))
    records = json.loads(ok(cli("zones", "records", zone["id"], "--json")))
    [www] = [r for r in records if r["name"] == "www"]
    assert www["type"] == "A" and www["rdata"] == ["192.0.2.10"]
    assert any(ln.split()[1:4] == ["www", "A", "192.0.2.10"]
               for ln in ok(cli("zones", "records", zone["id"])).splitlines())
    ok(cli("zones", "record-edit", zone["id"], www["id"], "--data", "192.0.2.11", "--ttl", "60",
           "--wait"))
    ok(cli("clouds", "poll", "aws2"))
    [www] = [r for r in json.loads(ok(cli("zones", "records", zone["id"], "--json")))
             if r["name"] == "www" and not r["missing_since"]]
    assert www["rdata"] == ["192.0.2.11"] and www["ttl"] == 60
    ok(cli("zones", "record-delete", zone["id"], www["id"], "--wait"))

    [volume] = [v for v in json.loads(ok(cli("volumes", "--cloud", "aws2", "--json")))
                if v["external_id"] == vol]
    [machine] = json.loads(ok(cli("machines", "--cloud", "aws2", "--json")))
    ok(cli("volumes", "attach", volume["id"], "--machine", machine["id"], "--device", "/dev/sdf",
           "--wait"))
    ok(cli("clouds", "poll", "aws2"))
    [attached] = json.loads(ok(cli("volumes", "--cloud", "aws2", "--json", "--search",
                                   f"external_id:{vol}")))
    assert attached["attached_to"] == [machine["id"]]
    ok(cli("volumes", "detach", volume["id"], "--machine", machine["id"], "--wait"))
    job = json.loads(ok(cli("volumes", "delete", volume["id"], "--wait", "--json")))
    assert job["action"] == "volume.delete" and job["status"] == "succeeded"

    # creating: machines, volumes, networks and zones, each a job the CLI waits for
    made = json.loads(ok(cli("machines", "create", "--cloud", "aws2", "--name", "cli-made",
                             "--size", "t2.micro", "--image", image, "--quantity", "2",
                             "--tag", "env=dev", "--wait", "--json")))
    made_job = made[0] if isinstance(made, list) else made
    assert made_job["status"] == "succeeded", made_job
    assert sorted(m["name"] for m in made_job["result"]) == ["cli-made-1", "cli-made-2"]
    ok(cli("volumes", "create", "--cloud", "aws2", "--name", "cli-vol", "--size", "3",
           "--location", "us-east-1a", "--wait"))
    ok(cli("networks", "create", "--cloud", "aws2", "--name", "cli-net", "--cidr", "10.77.0.0/16",
           "--wait"))
    ok(cli("zones", "create", "--cloud", "aws2", "--domain", "cli.example", "--wait"))
    ok(cli("clouds", "poll", "aws2"))
    names = {m["name"] for m in json.loads(ok(cli("machines", "--cloud", "aws2", "--json")))}
    assert {"cli-made-1", "cli-made-2"} <= names
    assert any(v["name"] == "cli-vol" for v in json.loads(ok(cli("volumes", "--cloud", "aws2", "--json"))))
    assert any(n["name"] == "cli-net" for n in json.loads(ok(cli("networks", "--cloud", "aws2", "--json"))))
    assert any(z["domain"] == "cli.example" for z in json.loads(ok(cli("zones", "--cloud", "aws2", "--json"))))
    ok(cli("clouds", "remove", "aws2", "--yes"))
