"""The domain services of one controller, built once from the settings and the store and
shared by REST, WebSocket, gRPC and the offline admin commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.accounts.model import KINDS as ACCOUNT_KINDS
from controller.accounts.service import AccountService
from controller.agents.ingest import Ingestor
from controller.agents.model import KINDS as AGENT_KINDS
from controller.agents.registry import Registry
from controller.agents.service import AgentService
from controller.audit.service import AuditService
from controller.clouds.actions import ActionService
from controller.clouds.model import KINDS as CLOUD_KINDS
from controller.clouds.poller import Pollers
from controller.clouds.resources import ResourceService
from controller.clouds.service import CloudService
from controller.events.bus import EventBus
from controller.events.writer import Writer
from controller.exec.agentlink import AgentLink
from controller.exec.service import ExecService
from controller.exec.targets import Targets
from controller.jobs.model import JOB
from controller.jobs.service import JobService
from controller.machines.model import MACHINE
from controller.machines.service import MachineService
from controller.monitor.selfmetrics import SelfMetrics
from controller.monitor.tsdb import TSDB
from controller.monitoring.model import KINDS as MONITORING_KINDS
from controller.monitoring.push import SourcePush
from controller.monitoring.service import MonitoringService
from controller.monitoring.sources import SourceService
from controller.notify.model import NOTIFICATION
from controller.notify.service import NotifyService
from controller.rules.evaluator import Evaluator
from controller.rules.incidents import Incidents
from controller.rules.model import INCIDENT, RULE
from controller.rules.service import RuleService
from controller.rules.wiring import build_rules
from controller.schedules.expiration import Expirations
from controller.schedules.model import KINDS as SCHEDULE_KINDS
from controller.schedules.runner import Runner
from controller.schedules.scheduler import Scheduler
from controller.schedules.service import ScheduleService
from controller.scripts.model import SCRIPT
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox, load_key
from controller.settings import Settings
from controller.shells.model import SHELL
from controller.shells.service import ShellService
from controller.sshkeys.assoc import Associations
from controller.sshkeys.model import KEY
from controller.sshkeys.service import KeyService
from controller.store.base import Store
from controller.store.docs import DocKind, migrate_store
from controller.tunnels.hub import Hub, local_networks
from controller.tunnels.model import KINDS as TUNNEL_KINDS
from controller.tunnels.service import TunnelService

# every stored document kind, for migrations on start
DOC_KINDS: tuple[DocKind, ...] = (*ACCOUNT_KINDS, *AGENT_KINDS, *CLOUD_KINDS, MACHINE, JOB, KEY,
                                  SCRIPT, SHELL, *TUNNEL_KINDS, *SCHEDULE_KINDS, RULE,
                                  INCIDENT, NOTIFICATION, *MONITORING_KINDS)


@dataclass
class Services:
    settings: Settings
    store: Store
    bus: EventBus
    writer: Writer
    secrets: SecretBox
    accounts: AccountService
    audit: AuditService
    machines: MachineService
    agents: AgentService
    tsdb: TSDB
    ingestor: Ingestor
    registry: Registry
    clouds: CloudService
    resources: ResourceService
    jobs: JobService
    actions: ActionService
    pollers: Pollers
    keys: KeyService
    scripts: ScriptService
    agentlink: AgentLink
    targets: Targets
    exec: ExecService
    associations: Associations
    shells: ShellService
    tunnels: TunnelService
    schedules: ScheduleService
    scheduler: Scheduler
    expirations: Expirations
    notify: NotifyService
    rules: RuleService
    incidents: Incidents
    evaluator: Evaluator
    monitoring: MonitoringService
    metric_sources: SourceService
    source_push: SourcePush
    # the controller's own metrics (/metrics): any module registers its own here
    selfmetrics: SelfMetrics = field(default_factory=SelfMetrics)


def build_services(settings: Settings, store: Store, migrate: bool = True) -> Services:
    if migrate and not store.read_only:
        migrate_store(store, DOC_KINDS)
    bus = EventBus()
    writer = Writer(store, bus)
    tsdb = TSDB(store)
    secrets = SecretBox(load_key(settings.data_dir, settings.secret_key))
    clouds = CloudService(settings, store, writer, secrets)
    jobs = JobService(store, bus)
    actions = ActionService(store, writer, clouds, jobs)
    pollers = Pollers(settings, clouds, bus)
    registry = Registry()
    link = AgentLink(registry)
    keys = KeyService(store, writer, secrets)
    targets = Targets(store, clouds, keys, link)
    accounts = AccountService(settings, store, writer)
    tunnels = TunnelService(settings, store, writer, secrets,
                            Hub(settings.tunnel_interface, settings.tunnel_port),
                            lambda: local_networks(settings.tunnel_interface))
    tunnels.commit_refusal = accounts.commit_unauthenticated
    tunnels.attach_agents(link)
    actions.poke = pollers.poke
    scripts = ScriptService(settings, store, writer, secrets)
    execs = ExecService(settings, store, writer, bus, jobs, targets, link)
    notify, rules, incidents, evaluator = build_rules(settings, store, writer, secrets, tsdb, accounts,
                                                      scripts, execs, actions)
    schedules = ScheduleService(settings, store, writer, accounts, scripts)
    runner = Runner(store, scripts, execs, targets, actions, settings.cloud_call_timeout)
    runner.member_email = schedules.member_email
    runner.notifier = notify
    agents = AgentService(settings, store, writer)
    ingestor = Ingestor(store, tsdb)
    metric_sources = SourceService(store, writer, scripts)
    return Services(
        settings=settings,
        store=store,
        bus=bus,
        writer=writer,
        secrets=secrets,
        accounts=accounts,
        audit=AuditService(store),
        machines=MachineService(store),
        agents=agents,
        tsdb=tsdb,
        ingestor=ingestor,
        registry=registry,
        clouds=clouds,
        resources=ResourceService(store, writer),
        jobs=jobs,
        actions=actions,
        pollers=pollers,
        keys=keys,
        scripts=scripts,
        agentlink=link,
        targets=targets,
        associations=Associations(store, writer, keys, targets, link),
        exec=execs,
        shells=ShellService(settings, store, writer, targets, link, accounts),
        tunnels=tunnels,
        schedules=schedules,
        scheduler=Scheduler(schedules, runner),
        expirations=Expirations(schedules, actions),
        notify=notify,
        rules=rules,
        incidents=incidents,
        evaluator=evaluator,
        monitoring=MonitoringService(settings, store, writer, bus, jobs, targets, agents, link,
                                     registry, ingestor),
        metric_sources=metric_sources,
        source_push=SourcePush(settings, metric_sources, registry, link, bus),
    )
