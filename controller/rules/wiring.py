"""How the rules' and notifications' parts are put together (one call from
:func:`controller.services.build_services`)."""

from __future__ import annotations

from controller.accounts.service import AccountService
from controller.clouds.actions import ActionService
from controller.events.writer import Writer
from controller.exec.service import ExecService
from controller.monitor.tsdb import TSDB
from controller.notify.service import NotifyService
from controller.notify.smtp import SmtpMailer, config_from
from controller.notify.webhook import HttpPoster
from controller.rules.actions import ActionRunner
from controller.rules.evaluator import Evaluator
from controller.rules.incidents import Incidents
from controller.rules.service import RuleService
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store


def build_rules(settings: Settings, store: Store, writer: Writer, secrets: SecretBox, tsdb: TSDB,
                accounts: AccountService, scripts: ScriptService, execs: ExecService,
                actions: ActionService) -> tuple[NotifyService, RuleService, Incidents, Evaluator]:
    notify = NotifyService(settings, store, writer, secrets, SmtpMailer(config_from(settings, secrets)),
                           HttpPoster(float(settings.webhook_timeout), settings.allow_local_clouds,
                                      settings.allow_private_webhooks))
    rules = RuleService(settings, store, writer, secrets, tsdb, accounts, scripts)
    incidents = Incidents(store, writer, min_interval=float(settings.notify_min_interval))
    evaluator = Evaluator(store, rules, incidents)
    evaluator.dispatch = ActionRunner(settings, store, secrets, notify, execs, scripts, actions,
                                      incidents, accounts, writer).run
    return notify, rules, incidents, evaluator
