"""Scripts and commands run on machines through the REST API, as a user would: one agent host
and one SSH-only host (a real sshd), each in its own network namespace, with a real
controller and a real agent. Output, exit codes, fan-out to both at once, secrets in env,
timeout and cancel killing the whole process group, live output events, key association
deployed through SSH and through the agent, and the ways a run is refused.

The namespaces share this machine's files and processes: what runs there runs here."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import sshd as sshd_support
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.clouds import audit, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.gitserver import GitServer
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


@dataclass
class World:
    c: Controller
    h: Http
    tmp: Path
    sshd: sshd_support.Sshd
    agent: AgentProc
    ssh_machine: dict[str, Any]
    agent_machine: dict[str, Any]
    user: str          # a login user made for these tests (deleted after)
    home: Path


def _machines(h: Http) -> dict[str, dict[str, Any]]:
    r = h.get("/api/v2/machines?limit=1000")
    assert r.status == 200, r.body
    return {m["id"]: m for m in r.body["data"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed (the key tests need a login user)")
    tmp: Path = tmp_path_factory.mktemp("runs")
    os.chmod(tmp, 0o755)
    user = f"ocrun{random.randint(1000, 9999)}"
    # outside pytest's tmp (0700 for root): sshd reads the file as the user
    outside = Path(tempfile.mkdtemp(prefix="ocrun-"))
    os.chmod(outside, 0o755)
    home = outside / "home"
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)  # no password, not locked
    key = asyncssh.generate_private_key("ssh-ed25519")
    try:
        with Lab(subnet=random.randint(150, 199)) as lab:
            ssh_host, agent_host = lab.add_host(), lab.add_host()
            port = free_port()
            c = Controller(tmp / "ctl", {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                                         "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                                         "OVERCAST_AGENT_GRACE": "5",
                                         "OVERCAST_CONTROLLER_ANSIBLE": "true"},
                           url=f"https://{lab.gateway}:{port}")
            c.http_port = port
            c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Runs")
            c.start()
            sshd = sshd_support.Sshd(ssh_host, tmp / "sshd", hostname="ocrun-ssh", user_keys=True)
            sshd.authorize(key.export_public_key().decode())
            agent = AgentProc(c, tmp / "agent", host=agent_host, hostname="ocrun-agent",
                              interval=5.0)
            try:
                with sshd:
                    h = c.session()
                    r = h.post("/api/v2/clouds", {"name": "Rack", "provider": "other", "credentials": {
                        "hosts": [{"host": ssh_host.address, "alias": "sshbox",
                                   "key": key.export_private_key().decode()}]}})
                    assert r.status == 201, r.body
                    poll(h, r.body["data"]["id"])
                    [sm] = [m for m in _machines(h).values() if m["name"] == "sshbox"]
                    e = agent.enrol(join_token(h, tags="role=worker")["token"])
                    assert e.returncode == 0, e.stderr
                    agent.start()
                    aid = agent.agent_id
                    wait_for(lambda: _machines(h).get(aid, {}).get("state") == "running", 30,
                             "the agent's machine running")
                    yield World(c, h, tmp, sshd, agent, sm, _machines(h)[aid], user, home)
            finally:
                agent.stop()
                if c.proc is not None and c.proc.poll() is None:
                    c.stop()
    finally:
        subprocess.run(["userdel", "-r", user], capture_output=True)
        shutil.rmtree(outside, ignore_errors=True)


def run(h: Http, body: dict[str, Any], path: str = "/api/v2/commands",
        timeout: float = 60) -> dict[str, Any]:
    r = h.post(path, body)
    assert r.status == 202, r.body
    return wait_job(h, r.body["job_id"], timeout)


def output(h: Http, job_id: str) -> dict[str, dict[str, str]]:
    """machine name -> {"stdout": ..., "stderr": ...}"""
    r = h.get(f"/api/v2/jobs/{job_id}/output")
    assert r.status == 200, r.body
    out: dict[str, dict[str, str]] = {}
    for o in r.body["data"]:
        streams = out.setdefault(o["name"], {"stdout": "", "stderr": ""})
        for stream, text in o["chunks"]:
            streams[stream] += text
    return out


def by_name(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in job["result"]["targets"]}


# ---- running -----------------------------------------------------------------------------
def test_a_command_runs_on_an_agent_host_and_an_ssh_host_in_one_job(world: World) -> None:
    h, sm, am = world.h, world.ssh_machine, world.agent_machine
    job = run(h, {"command": "echo out-$(hostname); echo err-$(hostname) >&2; "
                             "[ $(hostname) = ocrun-ssh ] && exit 3; exit 0",
                  "machines": [sm["id"], am["name"]]})
    assert job["status"] == "failed" and job["result"]["exit_code"] == 3, job
    t = by_name(job)
    assert t["sshbox"]["via"] == "ssh" and t["sshbox"]["exit_code"] == 3
    assert t[am["name"]]["via"] == "agent" and t[am["name"]]["exit_code"] == 0
    assert t[am["name"]]["status"] == "succeeded"
    out = output(h, job["id"])
    assert out["sshbox"] == {"stdout": "out-ocrun-ssh\n", "stderr": "err-ocrun-ssh\n"}
    # read on from where an earlier answer ended: nothing new once the job has ended
    r = h.get(f"/api/v2/jobs/{job['id']}/output")
    assert r.body["next"] >= 4 and h.get(
        f"/api/v2/jobs/{job['id']}/output?after={r.body['next']}").body == {"data": [], "next": r.body["next"]}
    assert h.get(f"/api/v2/jobs/{job['id']}/output?after=x").status == 400
    assert out[am["name"]] == {"stdout": "out-ocrun-agent\n", "stderr": "err-ocrun-agent\n"}
    [entry] = [e for e in audit(h, "command.run") if e["details"]["job"] == job["id"]]
    assert entry["outcome"] == "failed" and entry["details"]["machines"] == 2
    assert entry["actor"]["email"] == ADMIN_EMAIL
    # by tag: the agent's enrolment tags select it
    job = run(h, {"command": "true", "machines": ["tag:role=worker"]})
    assert job["status"] == "succeeded" and [t["name"] for t in job["result"]["targets"]] == [am["name"]]


def test_env_values_reach_the_run_but_never_the_job_or_the_audit(world: World) -> None:
    h = world.h
    secret = "s3cr3t-" + uuid.uuid4().hex
    job = run(h, {"command": 'printf "%s|%s|%s\\n" "$TOKEN" "$1" "$2"',
                  "machines": [world.ssh_machine["id"], world.agent_machine["id"]],
                  "env": f"TOKEN={secret}"})
    assert job["status"] == "succeeded", job
    for streams in output(h, job["id"]).values():
        assert streams["stdout"] == f"{secret}||\n"
    assert secret not in json.dumps(job) and job["params"]["env"] == ["TOKEN"]
    assert secret not in json.dumps(audit(h, "command.run"))
    assert secret not in world.c.log_path.read_text()


def test_a_run_as_another_user_on_an_agent_host_and_as_root_with_su(world: World) -> None:
    h, am, sm = world.h, world.agent_machine, world.ssh_machine
    job = run(h, {"command": "id -un; echo $HOME", "machine": am["id"], "user": world.user})
    assert job["status"] == "succeeded", job
    assert output(h, job["id"])[am["name"]]["stdout"] == f"{world.user}\n{world.home}\n"
    job = run(h, {"command": "id -un", "machines": [am["id"], sm["id"]], "su": "true"})
    assert {o["stdout"] for o in output(h, job["id"]).values()} == {"root\n"}
    # over SSH a run is the login user's: another one is refused before anything runs
    r = h.post("/api/v2/commands", {"command": "id", "machine": sm["id"], "user": world.user})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "user", r.body
    r = h.post("/api/v2/commands", {"command": "id", "machine": am["id"], "user": "no such"})
    assert r.status == 422, r.body
    job = run(h, {"command": "id", "machine": am["id"], "user": "nosuchuser"})
    assert job["status"] == "failed" and "no user" in job["result"]["targets"][0]["error"], job


def test_a_timeout_kills_the_whole_process_group_on_both_kinds_of_host(world: World) -> None:
    h = world.h
    d = world.tmp / f"pids-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    os.chmod(d, 0o777)
    started = time.monotonic()
    job = run(h, {"command": f"sleep 300 & echo $! > {d}/$(hostname); sleep 300",
                  "machines": [world.ssh_machine["id"], world.agent_machine["id"]],
                  "timeout": 2})
    assert time.monotonic() - started < 30
    assert job["status"] == "failed", job
    for t in job["result"]["targets"]:
        assert t["timed_out"] is True and t["status"] == "failed", t
    pids = [int(p.read_text()) for p in d.iterdir()]
    assert len(pids) == 2
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 10,
             "the background children killed with their group")


def test_cancel_kills_a_run_that_would_never_end(world: World) -> None:
    h = world.h
    r = h.post("/api/v2/commands", {"command": "echo started; sleep 600",
                                    "machines": [world.ssh_machine["id"], world.agent_machine["id"]]})
    assert r.status == 202, r.body
    jid = r.body["job_id"]
    wait_for(lambda: all("started" in o["stdout"] for o in output(h, jid).values())
             and len(output(h, jid)) == 2, 20, "both started")
    c = h.post(f"/api/v2/jobs/{jid}/cancel")
    assert c.status == 202, c.body
    job = wait_job(h, jid, 40)
    assert job["status"] == "failed" and job["error"]["code"] == "cancelled", job
    assert all(t["cancelled"] for t in job["result"]["targets"]), job["result"]
    assert h.post(f"/api/v2/jobs/{jid}/cancel").status == 409  # it has ended
    assert [e["outcome"] for e in audit(h, "job.cancel", jid)] == ["success"]


def test_output_is_published_live_while_the_run_goes_on(world: World) -> None:
    h, c = world.h, world.c
    token = c.token(name="runs live")

    async def watch() -> list[tuple[float, dict[str, Any]]]:
        import aiohttp

        seen: list[tuple[float, dict[str, Any]]] = []
        async with aiohttp.ClientSession() as s, s.ws_connect(
                c.url.replace("https://", "wss://") + "/api/v2/events?kinds=job",
                ssl=c.ssl_context(), headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.receive_json()  # ready
            r = await asyncio.to_thread(h.post, "/api/v2/commands", {
                "command": "for i in 1 2 3; do echo line-$i; sleep 0.5; done",
                "machine": world.agent_machine["id"]})
            jid = r.body["job_id"]
            t0 = time.monotonic()
            while True:
                ev = await asyncio.wait_for(ws.receive_json(), 20)
                if ev["id"] != jid:
                    continue
                seen.append((time.monotonic() - t0, ev))
                if ev["type"] == "changed" and ev["data"]["status"] in ("succeeded", "failed"):
                    return seen
    seen = asyncio.run(watch())
    lines = [(t, e["data"]["data"]) for t, e in seen if e["type"] == "output"]
    assert "".join(d for _, d in lines) == "line-1\nline-2\nline-3\n"
    assert lines[0][0] < seen[-1][0] - 0.7  # the first line came well before the end


# ---- keys --------------------------------------------------------------------------------
def _login(host: str, user: str, key: asyncssh.SSHKey) -> bool:
    async def go() -> bool:
        try:
            async with asyncssh.connect(host, username=user, client_keys=[key], known_hosts=None,
                                        agent_path=None, config=None) as conn:
                r = await conn.run("id -un", check=False)
                return bool(r.stdout and r.stdout.strip() == user)
        except asyncssh.PermissionDenied:
            return False
    return asyncio.run(go())


def test_a_key_associated_over_ssh_lets_its_user_in_until_disassociated(world: World) -> None:
    h, m = world.h, world.ssh_machine
    r = h.post("/api/v2/keys", {"name": f"deploy-{uuid.uuid4().hex[:6]}", "generate": True})
    kid = r.body["id"]
    private = asyncssh.import_private_key(h.get(f"/api/v2/keys/{kid}?private=true").body["data"]["private"])
    assert not _login(world.sshd.host.address, world.user, private)
    r = h.put(f"/api/v2/machines/{m['id']}/actions/associate-key", {"key": kid, "user": world.user})
    assert r.status == 200, r.body
    assert r.body["data"]["deployed_via"] == "ssh" and r.body["data"]["host_key"].startswith("ssh-")
    assert _login(world.sshd.host.address, world.user, private)
    ak = world.home / ".ssh" / "authorized_keys"
    assert oct(ak.stat().st_mode & 0o777) == "0o600" and ak.stat().st_uid == pwd.getpwnam(world.user).pw_uid
    shown = h.get(f"/api/v2/machines/{m['id']}").body["data"]["key_associations"]
    assert [a["key"] for a in shown] == [kid] and shown[0]["user"] == world.user
    # runs now go in with the associated key (before the cloud's), as its user; it is used
    before = shown[0]["last_used"]
    time.sleep(1.1)
    job = run(h, {"command": "id -un", "machine": m["id"]})
    assert output(h, job["id"])["sshbox"]["stdout"] == f"{world.user}\n", job
    [a] = h.get(f"/api/v2/machines/{m['id']}/keys").body["data"]
    assert a["key"] == kid and a["last_used"] > before
    # associating again does not add a second line
    assert h.put(f"/api/v2/machines/{m['id']}/actions/associate-key",
                 {"key": kid, "user": world.user}).status == 200
    assert ak.read_text().count(h.get(f"/api/v2/keys/{kid}").body["data"]["public"].split()[1]) == 1
    r = h.request("DELETE", f"/api/v2/machines/{m['id']}/actions/disassociate-key", {"key": kid})
    assert r.status == 200, r.body
    assert not _login(world.sshd.host.address, world.user, private)
    assert h.get(f"/api/v2/machines/{m['id']}").body["data"]["key_associations"] == []
    assert [e["outcome"] for e in audit(h, "key.associate", m["id"])][:1] == ["success"]
    assert audit(h, "key.disassociate", m["id"])


def test_a_key_associated_through_the_agent_lands_in_authorized_keys(world: World) -> None:
    h, m = world.h, world.agent_machine
    r = h.post("/api/v2/keys", {"name": f"agentdeploy-{uuid.uuid4().hex[:6]}", "generate": True})
    kid, public = r.body["id"], r.body["public"]
    r = h.put(f"/api/v2/machines/{m['id']}/actions/associate-key", {"key": kid, "user": world.user})
    assert r.status == 200 and r.body["data"]["deployed_via"] == "agent", r.body
    ak = world.home / ".ssh" / "authorized_keys"
    assert public.split()[1] in ak.read_text()
    r = h.request("DELETE", f"/api/v2/machines/{m['id']}/actions/disassociate-key", {"key": kid})
    assert r.status == 200, r.body
    assert public.split()[1] not in ak.read_text()


# ---- scripts from the library -------------------------------------------------------------
def test_a_git_hosted_script_runs_on_both_hosts_with_its_params(world: World) -> None:
    h = world.h
    with GitServer(world.tmp / f"git-{uuid.uuid4().hex[:6]}") as srv:
        url = srv.add_repo("tools", {
            "bin/hello.sh": '#!/bin/sh\n. ./lib.sh\necho "$(greet) $1+$2 on $(hostname)"\n',
            "lib.sh": "greet() { echo hello-from-git; }\n"}, executable=("bin/hello.sh",))
        r = h.post("/api/v2/scripts", {"name": f"hello-{uuid.uuid4().hex[:6]}", "exec_type": "executable",
                                       "location_type": "git", "script": url,
                                       "entrypoint": "bin/hello.sh"})
        assert r.status == 201, r.body
    sid = r.body["id"]  # fetched once, when added: the server is gone now
    job = run(h, {"machines": [world.ssh_machine["id"], world.agent_machine["id"]],
                  "params": "a 'b c'"}, path=f"/api/v2/scripts/{sid}")
    assert job["status"] == "succeeded", job
    out = output(h, job["id"])
    assert out["sshbox"]["stdout"] == "hello-from-git a+b c on ocrun-ssh\n"
    assert out[world.agent_machine["name"]]["stdout"] == "hello-from-git a+b c on ocrun-agent\n"
    [entry] = [e for e in audit(h, "script.run", sid) if e["details"]["job"] == job["id"]]
    assert entry["details"]["sha256"] == h.get(f"/api/v2/scripts/{sid}").body["data"]["sha256"]


def test_an_inline_library_script_runs_on_both_hosts_and_says_how_it_ended(world: World) -> None:
    h = world.h
    r = h.post("/api/v2/scripts", {"name": f"inline-{uuid.uuid4().hex[:6]}", "exec_type": "executable",
                                   "location_type": "inline",
                                   "script": '#!/bin/sh\necho "on $(hostname) as $(id -un): $*"\n'
                                             'echo warn >&2\nexit "$1"\n'})
    assert r.status == 201, r.body
    job = run(h, {"machines": [world.ssh_machine["name"], world.agent_machine["name"]],
                  "params": "0"}, path=f"/api/v2/scripts/{r.body['id']}")
    assert job["status"] == "succeeded" and job["result"]["exit_code"] == 0, job
    out = output(h, job["id"])
    assert out["sshbox"] == {"stdout": "on ocrun-ssh as root: 0\n", "stderr": "warn\n"}
    assert out[world.agent_machine["name"]]["stdout"] == "on ocrun-agent as root: 0\n"
    job = run(h, {"machine": world.agent_machine["id"], "params": ["7"]},
              path=f"/api/v2/scripts/{r.body['id']}")
    assert job["status"] == "failed" and job["result"]["exit_code"] == 7
    assert job["error"]["code"] == "run_failed" and "exit status 7" in job["error"]["message"]


@pytest.mark.skipif(shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
                    is None and shutil.which("ansible-playbook") is None,
                    reason="ansible-playbook is not installed (ansible-core, the controller extra)")
def test_an_ansible_playbook_changes_a_file_on_the_ssh_host(world: World) -> None:
    h = world.h
    target = world.tmp / f"ansible-{uuid.uuid4().hex[:6]}.txt"
    playbook = f"""- hosts: all
  gather_facts: false
  tasks:
    - name: write the file
      ansible.builtin.copy:
        dest: {target}
        content: "managed by overcast: {{{{ GREETING }}}}\\n"
"""
    r = h.post("/api/v2/scripts", {"name": f"play-{uuid.uuid4().hex[:6]}", "exec_type": "ansible",
                                   "location_type": "inline", "script": playbook})
    assert r.status == 201, r.body
    # env reaches the playbook as variables; this one also keeps Ansible off a Python
    # version manager's shims that a login shell here may put first on PATH
    env = "GREETING=hello\nansible_python_interpreter=/usr/bin/python3"
    job = run(h, {"machine": world.ssh_machine["id"], "env": env},
              path=f"/api/v2/scripts/{r.body['id']}", timeout=180)
    assert job["status"] == "succeeded", output(h, job["id"])["sshbox"]["stdout"][-3000:]
    assert target.read_text() == "managed by overcast: hello\n"
    assert "PLAY RECAP" in output(h, job["id"])["sshbox"]["stdout"]


def test_the_cli_runs_commands_and_scripts_and_prefixes_each_machine(world: World) -> None:
    c = world.c
    xdg = world.tmp / f"xdg-{uuid.uuid4().hex[:6]}"

    def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return c.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)}, timeout=120)

    r = cli("login", c.url, "--email", ADMIN_EMAIL, "--password-stdin",
            "--ca-fingerprint", c.ca_fingerprint, input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    agent_name = world.agent_machine["name"]
    r = cli("exec", "--on", "sshbox", "--on", agent_name, "--",
            "echo hi-$(hostname); [ $(hostname) = ocrun-ssh ] && exit 2; true")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert sorted(r.stdout.splitlines()) == sorted(["sshbox | hi-ocrun-ssh",
                                                    f"{agent_name} | hi-ocrun-agent"])
    assert "sshbox: exit status 2" in r.stderr
    # one machine: its output as it is
    r = cli("exec", "--on", "sshbox", "--", "echo", "two words", "$HOME")
    assert r.returncode == 0 and r.stdout == "two words $HOME\n", (r.stdout, r.stderr)
    r = cli("scripts", "add", f"cli-{uuid.uuid4().hex[:6]}", "--inline",
            '#!/bin/sh\necho "args: $*"; exit 4\n', "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    r = cli("scripts", "run", sid, "--on", "sshbox", "--params", "x y")
    assert r.returncode == 4 and r.stdout == "args: x y\n", (r.stdout, r.stderr)
    r = cli("scripts", "run", sid, "--on", "sshbox", "--json")
    job = json.loads(r.stdout)
    assert r.returncode == 4 and job["result"]["targets"][0]["exit_code"] == 4
    r = cli("jobs", "output", job["id"])
    assert r.returncode == 0 and r.stdout == "args: \n"
    r = cli("exec", "--on", "sshbox", "--timeout", "1", "--", "sleep 30")
    assert r.returncode == 255 and "timed out" in r.stderr, (r.returncode, r.stderr)
    r = cli("exec", "--on", "no-such-machine", "--", "true")
    assert r.returncode == 4 and "no such machine" in r.stderr, (r.returncode, r.stderr)
    r = cli("exec", "--", "true")
    assert r.returncode == 2 and "--on" in r.stderr
    # started and left, then cancelled from another command
    r = cli("exec", "--on", "sshbox", "--detach", "--json", "--", "sleep 60")
    started = json.loads(r.stdout)
    assert r.returncode == 0 and started["status"] in ("queued", "running"), r.stdout
    r = cli("jobs", "cancel", started["id"])
    assert r.returncode == 0 and "cancelling" in r.stdout, r.stderr
    assert wait_job(world.h, started["id"], 40)["error"]["code"] == "cancelled"
    r = cli("jobs", "cancel", started["id"])
    assert r.returncode == 1 and "already" in r.stderr, (r.returncode, r.stderr)
    # keys: associate (deployed over SSH with the cloud's key), then disassociate
    kid = json.loads(cli("keys", "generate", f"cli-{uuid.uuid4().hex[:6]}", "--json").stdout)["id"]
    r = cli("keys", "associate", kid, "sshbox", "--user", world.user, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["deployed_via"] == "ssh", r.stderr
    r = cli("keys", "disassociate", kid, "sshbox")
    assert r.returncode == 0 and "disassociated" in r.stdout, r.stderr
    r = cli("keys", "disassociate", kid, "sshbox")
    assert r.returncode == 4 and "not associated" in r.stderr, (r.returncode, r.stderr)


# ---- refusals ----------------------------------------------------------------------------
def test_runs_are_refused_for_machines_that_are_not_the_callers_or_cannot_be_reached(
        world: World) -> None:
    h, c = world.h, world.c
    r = h.post("/api/v2/commands", {"command": "true", "machine": "no-such-machine"})
    assert r.status == 404, r.body
    r = h.post("/api/v2/commands", {"command": "true", "machines": ["tag:nobody=here"]})
    assert r.status == 422 and "tag" in r.body["error"]["message"], r.body
    r = h.post("/api/v2/commands", {"command": "true"})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "machine"
    r = h.post("/api/v2/commands", {"command": "true", "machine": world.ssh_machine["id"],
                                    "env": "1BAD=x"})
    assert r.status == 422 and "env" in r.body["error"]["message"]
    r = h.post("/api/v2/commands", {"command": "true", "machine": world.ssh_machine["id"],
                                    "timeout": 0})
    assert r.status == 422, r.body
    email = f"other-{uuid.uuid4().hex[:6]}@example.com"
    c.adduser(email, ADMIN_PASSWORD, "--org", f"Other-{uuid.uuid4().hex[:6]}")
    other = c.session(email, ADMIN_PASSWORD)
    for mid in (world.ssh_machine["id"], world.agent_machine["id"]):
        r = other.post("/api/v2/commands", {"command": "id", "machine": mid})
        assert r.status == 404, r.body
        r = other.put(f"/api/v2/machines/{mid}/actions/associate-key", {"key": "x"})
        assert r.status == 404, r.body
    jid = run(h, {"command": "true", "machine": world.ssh_machine["id"]})["id"]
    assert other.get(f"/api/v2/jobs/{jid}").status == 404
    assert other.get(f"/api/v2/jobs/{jid}/output").status == 404
    assert other.post(f"/api/v2/jobs/{jid}/cancel").status == 404
    sid = h.post("/api/v2/scripts", {"name": f"mine-{uuid.uuid4().hex[:6]}", "exec_type": "executable",
                                     "location_type": "inline", "script": "#!/bin/sh\nid\n"}).body["id"]
    assert other.post(f"/api/v2/scripts/{sid}", {"machine": world.ssh_machine["id"]}).status == 404
    assert h.post(f"/api/v2/scripts/{sid}", {"machine": "nope"}).status == 404


def test_a_key_the_machine_refuses_fails_the_run_in_words(world: World) -> None:
    h, m = world.h, world.ssh_machine
    kid = h.post("/api/v2/keys", {"name": f"stale-{uuid.uuid4().hex[:6]}", "generate": True}).body["id"]
    # recorded only: the machine never got it, yet runs try it first (the most recent)
    r = h.put(f"/api/v2/machines/{m['id']}/actions/associate-key",
              {"key": kid, "user": "root", "deploy": False})
    assert r.status == 200 and r.body["data"]["deployed_via"] == "recorded", r.body
    try:
        job = run(h, {"command": "true", "machine": m["id"]})
        [t] = job["result"]["targets"]
        assert job["status"] == "failed" and t["exit_code"] is None and job["result"]["exit_code"] == 255
        assert "key refused" in t["error"], t
        assert "BEGIN" not in json.dumps(job)
    finally:
        h.request("DELETE", f"/api/v2/machines/{m['id']}/actions/disassociate-key",
                  {"key": kid, "deploy": False})


def test_a_machine_whose_agent_is_gone_and_has_no_key_cannot_be_run_on(world: World) -> None:
    """Last: it stops the agent."""
    h, m = world.h, world.agent_machine
    world.agent.stop()
    wait_for(lambda: _machines(h)[m["id"]].get("agent_state") != "connected"
             or _machines(h)[m["id"]]["state"] == "unreachable", 30, "the agent gone")
    r = h.post("/api/v2/commands", {"command": "true", "machine": m["id"]})
    assert r.status == 422, r.body
    assert "agent is not connected" in r.body["error"]["message"]
    assert r.body["error"]["details"]["machines"] == [m["id"]]
