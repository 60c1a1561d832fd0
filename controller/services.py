"""The domain services of one controller, built once from the settings and the store and
shared by REST, WebSocket, gRPC and the offline admin commands."""

from __future__ import annotations

from dataclasses import dataclass

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
from controller.monitor.tsdb import TSDB
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
                                  SCRIPT, SHELL, *TUNNEL_KINDS)


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
    return Services(
        settings=settings,
        store=store,
        bus=bus,
        writer=writer,
        secrets=secrets,
        accounts=accounts,
        audit=AuditService(store),
        machines=MachineService(store),
        agents=AgentService(settings, store, writer),
        tsdb=tsdb,
        ingestor=Ingestor(store, tsdb),
        registry=registry,
        clouds=clouds,
        resources=ResourceService(store, writer),
        jobs=jobs,
        actions=actions,
        pollers=pollers,
        keys=keys,
        scripts=ScriptService(settings, store, writer, secrets),
        agentlink=link,
        targets=targets,
        associations=Associations(store, writer, keys, targets, link),
        exec=ExecService(settings, store, writer, bus, jobs, targets, link),
        shells=ShellService(settings, store, writer, targets, link, accounts),
        tunnels=tunnels,
    )
