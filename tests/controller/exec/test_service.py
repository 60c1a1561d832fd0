"""The run service's own rules: env and params parsing, the worst exit status, and where an
Ansible playbook may run."""

from __future__ import annotations

import pytest

from controller.errors import Invalid
from controller.exec.model import Payload, SshTarget, sha256_hex
from controller.exec.service import ExecService, parse_args, parse_env, worst_exit
from controller.exec.targets import Route
from controller.settings import Settings


def test_env_takes_mist_lines_or_an_object_and_refuses_bad_names() -> None:
    assert parse_env("A=1\nB=two words\n\nC=x=y") == {"A": "1", "B": "two words", "C": "x=y"}
    assert parse_env({"TOKEN": "s", "N": 3}) == {"TOKEN": "s", "N": "3"}
    assert parse_env(None) == {} and parse_env("") == {}
    for bad in ("1A=x", "NOEQUALS", "A-B=1", {"A": {"nested": 1}}, {"A": "nul\0"}, 42):
        with pytest.raises(Invalid) as e:
            parse_env(bad)
        assert e.value.details["field"] == "env"
        assert "s3cr3t" not in e.value.message
    with pytest.raises(Invalid):
        parse_env({f"V{i}": "x" for i in range(65)})


def test_params_split_like_a_shell_or_come_as_a_list() -> None:
    assert parse_args("a 'b c' \"d\"") == ("a", "b c", "d")
    assert parse_args(["x y", "z"]) == ("x y", "z")
    assert parse_args(None) == ()
    with pytest.raises(Invalid):
        parse_args("unterminated 'quote")
    with pytest.raises(Invalid):
        parse_args([1, 2])


def test_the_worst_exit_status_stands_for_the_run() -> None:
    ok = {"status": "succeeded", "exit_code": 0}
    assert worst_exit([ok, ok]) == 0
    assert worst_exit([ok, {"status": "failed", "exit_code": 3}]) == 3
    assert worst_exit([{"status": "failed", "exit_code": None, "error": "refused"}]) == 255
    assert worst_exit([{"status": "failed", "exit_code": -9}]) == 137  # killed: 128 + signal
    assert worst_exit([{"status": "running"}]) == 0


def _routes() -> list[Route]:
    ssh = Route({"id": "m1", "name": "web", "org": "o"}, ssh=SshTarget(host="10.0.0.1"))
    agent = Route({"id": "m2", "name": "db", "org": "o"}, agent_id="a2")
    return [ssh, agent]


def test_a_playbook_for_a_machine_without_agent_runs_on_the_controller_only_when_allowed() -> None:
    content = b"- hosts: all\n"
    play = Payload(content=content, sha256=sha256_hex(content), ansible=True)
    off = ExecService(Settings(), None, None, None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(Invalid) as e:
        off.check(play, _routes())
    assert "controller_ansible" in e.value.message and e.value.details["machines"] == ["m1"]
    off.check(play, _routes()[1:])  # through the agent: on the machine itself
    off.check(Payload(content=content, sha256=sha256_hex(content)), _routes())  # not a playbook
    on = ExecService(Settings(controller_ansible=True), None, None, None, None, None,  # type: ignore[arg-type]
                     None)
    on.check(play, _routes())
