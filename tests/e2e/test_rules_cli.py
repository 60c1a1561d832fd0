"""``overcast rules``, ``overcast incidents`` and ``overcast notifications`` against a real
controller: add with flags and from a JSON file, list, show, edit, rename, disable, enable,
delete; an incident and its notification listed (--json and tables); bad input in one line
with the documented exit codes; the SMTP password sealed for the settings."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.notify.smtp import PASSWORD_AAD
from controller.secrets import SecretBox, load_key
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def cli(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> Run:
    xdg = tmp_path_factory.mktemp("xdg-rules")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return controller.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})

    r = run("login", controller.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def test_rules_through_the_cli(cli: Run, tmp_path: Path) -> None:
    made = json.loads(ok(cli("rules", "add", "cpu", "--metric", 'cpu_usage_active{cpu="cpu-total"}',
                             "--op", "gt", "--threshold", "90", "--window", "2m", "--every", "30s",
                             "--after", "1m", "--tag", "env=prod", "--email", "ops@example.com",
                             "--webhook", "https://hooks.example.com/x", "--secret-header",
                             "Authorization=Bearer s3cret-tok", "--action", "reboot", "--on-resolve", "--json")))
    c = made["conditions"][0]
    assert c["query"] == {"target": 'cpu_usage_active{cpu="cpu-total"}', "operator": "gt",
                          "threshold": 90.0, "aggregation": "avg"}
    assert c["window"] == {"start": 2, "stop": 0, "period": "minutes"}
    assert made["when"] == {"schedule_type": "interval", "every": 30, "period": "seconds"}
    assert made["trigger_after"] == {"offset": 1, "period": "minutes"}
    assert made["selectors"] == [{"type": "tags", "include": ["env=prod"]}]
    assert [a["action_type"] for a in made["actions"]] == ["notify", "webhook", "reboot"]
    assert made["actions"][1]["headers"] == {"Authorization": "***"} and made["actions"][1]["on_resolve"]
    table = ok(cli("rules"))
    assert "cpu" in table and "avg(cpu_usage_active" in table and "notify,webhook,reboot" in table
    assert "s3cret-tok" not in ok(cli("rules", "show", "cpu"))  # not hex: ids cannot hold it
    edited = json.loads(ok(cli("rules", "edit", "cpu", "--threshold", "75", "--json")))
    assert edited["conditions"][0]["query"]["threshold"] == 75.0
    assert edited["conditions"][0]["window"]["start"] == 2 and len(edited["actions"]) == 3
    edited = json.loads(ok(cli("rules", "edit", "cpu", "--no-actions", "--json")))
    assert edited["actions"] == []
    ok(cli("rules", "rename", "cpu", "cpu-high"))
    assert "disabled cpu-high" in ok(cli("rules", "disable", "cpu-high"))
    assert json.loads(ok(cli("rules", "show", "cpu-high", "--json")))["enabled"] is False
    ok(cli("rules", "enable", "cpu-high"))
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"name": "from-file", "conditions": [{"data_type": "logs",
        "query": {"target": "action:script.add", "operator": "ge", "threshold": 1},
        "window": {"start": 1, "period": "minutes"}}],
        "when": {"schedule_type": "interval", "every": 1, "period": "seconds"},
        "actions": [{"action_type": "notify", "emails": ["ops@example.com"]}]}))
    ok(cli("rules", "add", "from-file", "--file", str(rule)))
    names = [r["name"] for r in json.loads(ok(cli("rules", "list", "--json")))]
    assert {"cpu-high", "from-file"} <= set(names)
    # an incident (and a notification that cannot go: no SMTP server is set)
    ok(cli("scripts", "add", "hello", "--inline", "#!/bin/sh\ntrue\n"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        incidents = json.loads(ok(cli("incidents", "--state", "firing", "--json")))
        if incidents:
            break
        time.sleep(0.3)
    [inc] = incidents
    assert inc["rule_name"] == "from-file"
    assert "from-file" in ok(cli("incidents"))
    shown = ok(cli("incidents", inc["id"]))
    assert "from-file" in shown
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        notes = json.loads(ok(cli("notifications", "--json")))
        if notes and notes[0]["last_error"]:
            break
        time.sleep(0.3)
    assert "no SMTP server is set" in notes[0]["last_error"]
    assert "no SMTP server is set" in ok(cli("notifications", "show", notes[0]["id"]))
    ok(cli("rules", "delete", "cpu-high", "from-file"))
    assert json.loads(ok(cli("rules", "list", "--json"))) == []


def test_bad_input_in_one_line(cli: Run) -> None:
    r = cli("rules", "add", "x", "--metric", "cpu_usage_activ", "--threshold", "9")
    assert r.returncode == 1 and "unknown metric 'cpu_usage_activ'" in r.stderr
    assert "did you mean cpu_usage_active" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("rules", "add", "x", "--metric", "system_load1")
    assert r.returncode == 2 and "--threshold is required" in r.stderr
    r = cli("rules", "add", "x", "--metric", "system_load1", "--threshold", "1", "--window", "5 minutes")
    assert r.returncode == 2 and "not a duration" in r.stderr
    r = cli("rules", "show", "no-such-rule")
    assert r.returncode == 4 and "no such rule" in r.stderr
    r = cli("incidents", "nope")
    assert r.returncode == 4


def test_seal_password(controller: Controller) -> None:
    r = controller.cli("notifications", "seal-password", input="smtp pass word\n")
    assert r.returncode == 0, r.stderr
    sealed = r.stdout.strip()
    assert sealed.startswith("enc1:") and "smtp pass" not in sealed
    box = SecretBox(load_key(str(controller.data_dir)))
    assert box.open(sealed, aad=PASSWORD_AAD) == b"smtp pass word"
