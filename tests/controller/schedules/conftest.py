"""Real services over a temporary store, a user owning an organisation, machines written as
the pollers write them, a clock the test moves, and a stand-in for the notification service
(the e-mails it was asked to send)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.events.model import SYSTEM, Actor
from controller.services import Services, build_services
from controller.settings import Settings
from controller.store import open_store
from controller.timeutil import iso

T0 = 1_900_000_000.0  # 2030-03-17T17:46:40Z: a fixed "now" the tests move


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Mailbox:
    """Stands in for NotifyService until the tests that need e-mail use the real one."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def email(self, org: str, to: list[str], subject: str, text: str, *,
              html: str | None = None, context: dict[str, Any] | None = None,
              actor: Actor | None = None) -> dict[str, Any]:
        self.sent.append({"org": org, "to": to, "subject": subject, "text": text,
                          "context": context or {}})
        return {"id": f"n{len(self.sent)}"}


@dataclass
class World:
    services: Services
    clock: Clock
    mail: Mailbox
    p: Principal
    actor: Actor
    tmp: Path

    @property
    def org(self) -> str:
        return self.p.org_id

    def machine(self, mid: str, name: str, tags: dict[str, str] | None = None,
                created: float | None = None, org: str | None = None) -> None:
        doc = {"id": mid, "name": name, "cloud": "c1", "state": "running",
               "tags": tags or {}, "created": iso(created or T0 - 86400), "_v": 1}
        self.services.store.put(f"machine/{org or self.org}/{mid}", json.dumps(doc).encode())

    def tag(self, mid: str, **tags: str) -> None:
        k = f"machine/{self.org}/{mid}"
        raw = self.services.store.get(k)
        assert raw is not None
        doc = json.loads(raw)
        doc["tags"].update(tags)
        self.services.store.put(k, json.dumps(doc).encode())

    def add(self, **body: Any) -> dict[str, Any]:
        return self.services.schedules.add(self.p, self.actor, body)

    def runs(self, sid: str) -> list[dict[str, Any]]:
        from controller.listing import parse_query

        data, _ = self.services.schedules.runs(self.p, sid, parse_query({}))
        return list(reversed(data))  # oldest first

    async def step(self, seconds: float) -> int:
        """Move the clock, let the scheduler handle what is due, wait for the runs."""
        self.clock.now += seconds
        n = self.services.scheduler.tick()
        await self.services.scheduler.drain()
        return n


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    import asyncio

    settings = Settings(data_dir=str(tmp_path), schedule_min_interval=1,
                        schedule_misfire_grace=5)
    store = open_store(tmp_path / "store")
    services = build_services(settings, store)
    clock = Clock()
    services.schedules.clock = clock
    services.scheduler.clock = clock
    mail = Mailbox()
    services.scheduler.runner.notifier = mail
    user, org = asyncio.run(services.accounts.create_user(
        SYSTEM, "owner@example.com", "a long enough password", org_name="Acme"))
    p = Principal(user, org, "owner", "session", "s1")
    try:
        yield World(services, clock, mail, p, p.actor("127.0.0.1", "rest"), tmp_path)
    finally:
        store.close()
