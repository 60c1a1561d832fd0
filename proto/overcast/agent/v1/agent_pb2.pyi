import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "csr_pem", "hostname", "protocol_version", "agent_version")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_pem: bytes
    hostname: str
    protocol_version: int
    agent_version: str
    def __init__(self, join_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., hostname: _Optional[str] = ..., protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "certificate_pem", "ca_pem", "not_after", "org")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_pem: bytes
    ca_pem: bytes
    not_after: _timestamp_pb2.Timestamp
    org: str
    def __init__(self, agent_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., org: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "inventory", "metrics", "command_output", "command_result", "shell_data", "shell_closed", "renew", "command_started", "tunnel_status", "upgrade_result", "metric_source_status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_RESULT_FIELD_NUMBER: _ClassVar[int]
    SHELL_DATA_FIELD_NUMBER: _ClassVar[int]
    SHELL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    COMMAND_STARTED_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_STATUS_FIELD_NUMBER: _ClassVar[int]
    UPGRADE_RESULT_FIELD_NUMBER: _ClassVar[int]
    METRIC_SOURCE_STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    inventory: Inventory
    metrics: MetricBatch
    command_output: CommandOutput
    command_result: CommandResult
    shell_data: ShellData
    shell_closed: ShellClosed
    renew: RenewRequest
    command_started: CommandStarted
    tunnel_status: TunnelStatus
    upgrade_result: UpgradeResult
    metric_source_status: MetricSourceStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., inventory: _Optional[_Union[Inventory, _Mapping]] = ..., metrics: _Optional[_Union[MetricBatch, _Mapping]] = ..., command_output: _Optional[_Union[CommandOutput, _Mapping]] = ..., command_result: _Optional[_Union[CommandResult, _Mapping]] = ..., shell_data: _Optional[_Union[ShellData, _Mapping]] = ..., shell_closed: _Optional[_Union[ShellClosed, _Mapping]] = ..., renew: _Optional[_Union[RenewRequest, _Mapping]] = ..., command_started: _Optional[_Union[CommandStarted, _Mapping]] = ..., tunnel_status: _Optional[_Union[TunnelStatus, _Mapping]] = ..., upgrade_result: _Optional[_Union[UpgradeResult, _Mapping]] = ..., metric_source_status: _Optional[_Union[MetricSourceStatus, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "protocol_version", "agent_version", "inventory", "spooled_batches", "dropped_batches")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    protocol_version: int
    agent_version: str
    inventory: Inventory
    spooled_batches: int
    dropped_batches: int
    def __init__(self, agent_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ..., inventory: _Optional[_Union[Inventory, _Mapping]] = ..., spooled_batches: _Optional[int] = ..., dropped_batches: _Optional[int] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("hostname", "os", "os_name", "os_version", "kernel", "arch", "cpus", "memory_bytes", "disks", "filesystems", "interfaces", "boot_time", "agent_version", "cpu_model", "swap_bytes", "system_uuid", "instance_id")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_NAME_FIELD_NUMBER: _ClassVar[int]
    OS_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEMS_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    BOOT_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    SWAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_UUID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    os_name: str
    os_version: str
    kernel: str
    arch: str
    cpus: int
    memory_bytes: int
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    filesystems: _containers.RepeatedCompositeFieldContainer[Filesystem]
    interfaces: _containers.RepeatedCompositeFieldContainer[NetInterface]
    boot_time: _timestamp_pb2.Timestamp
    agent_version: str
    cpu_model: str
    swap_bytes: int
    system_uuid: str
    instance_id: str
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., os_name: _Optional[str] = ..., os_version: _Optional[str] = ..., kernel: _Optional[str] = ..., arch: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., filesystems: _Optional[_Iterable[_Union[Filesystem, _Mapping]]] = ..., interfaces: _Optional[_Iterable[_Union[NetInterface, _Mapping]]] = ..., boot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., cpu_model: _Optional[str] = ..., swap_bytes: _Optional[int] = ..., system_uuid: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Filesystem(_message.Message):
    __slots__ = ("mountpoint", "device", "fstype", "total_bytes")
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    def __init__(self, mountpoint: _Optional[str] = ..., device: _Optional[str] = ..., fstype: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class NetInterface(_message.Message):
    __slots__ = ("name", "mac", "addresses", "up", "mtu")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    name: str
    mac: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    up: bool
    mtu: int
    def __init__(self, name: _Optional[str] = ..., mac: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., up: _Optional[bool] = ..., mtu: _Optional[int] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("seq", "samples", "dropped", "series", "refs", "values", "time_ms", "ack_now")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ACK_NOW_FIELD_NUMBER: _ClassVar[int]
    seq: int
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    dropped: int
    series: _containers.RepeatedCompositeFieldContainer[SeriesDef]
    refs: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    time_ms: int
    ack_now: bool
    def __init__(self, seq: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., dropped: _Optional[int] = ..., series: _Optional[_Iterable[_Union[SeriesDef, _Mapping]]] = ..., refs: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., time_ms: _Optional[int] = ..., ack_now: _Optional[bool] = ...) -> None: ...

class SeriesDef(_message.Message):
    __slots__ = ("ref", "metric", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ref: int
    metric: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, ref: _Optional[int] = ..., metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("metric", "labels", "value", "time_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    value: float
    time_ms: int
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., time_ms: _Optional[int] = ...) -> None: ...

class CommandOutput(_message.Message):
    __slots__ = ("command_id", "stream", "data")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STDOUT: _ClassVar[CommandOutput.Stream]
        STDERR: _ClassVar[CommandOutput.Stream]
    STDOUT: CommandOutput.Stream
    STDERR: CommandOutput.Stream
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    stream: CommandOutput.Stream
    data: bytes
    def __init__(self, command_id: _Optional[str] = ..., stream: _Optional[_Union[CommandOutput.Stream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CommandStarted(_message.Message):
    __slots__ = ("command_id", "pid")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    pid: int
    def __init__(self, command_id: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "exit_code", "error", "timed_out", "cancelled", "output_truncated")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    exit_code: int
    error: str
    timed_out: bool
    cancelled: bool
    output_truncated: bool
    def __init__(self, command_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., timed_out: _Optional[bool] = ..., cancelled: _Optional[bool] = ..., output_truncated: _Optional[bool] = ...) -> None: ...

class ShellData(_message.Message):
    __slots__ = ("session_id", "data")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    data: bytes
    def __init__(self, session_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ShellClosed(_message.Message):
    __slots__ = ("session_id", "exit_code", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    exit_code: int
    error: str
    def __init__(self, session_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("welcome", "config", "batch_ack", "command", "cancel", "shell_data", "shell_resize", "shell_close", "renew", "tunnel_up", "tunnel_down", "upgrade")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BATCH_ACK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SHELL_DATA_FIELD_NUMBER: _ClassVar[int]
    SHELL_RESIZE_FIELD_NUMBER: _ClassVar[int]
    SHELL_CLOSE_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_UP_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_DOWN_FIELD_NUMBER: _ClassVar[int]
    UPGRADE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    config: Config
    batch_ack: BatchAck
    command: Command
    cancel: CancelCommand
    shell_data: ShellData
    shell_resize: ShellResize
    shell_close: ShellClose
    renew: RenewResponse
    tunnel_up: TunnelUp
    tunnel_down: TunnelDown
    upgrade: Upgrade
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., config: _Optional[_Union[Config, _Mapping]] = ..., batch_ack: _Optional[_Union[BatchAck, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., cancel: _Optional[_Union[CancelCommand, _Mapping]] = ..., shell_data: _Optional[_Union[ShellData, _Mapping]] = ..., shell_resize: _Optional[_Union[ShellResize, _Mapping]] = ..., shell_close: _Optional[_Union[ShellClose, _Mapping]] = ..., renew: _Optional[_Union[RenewResponse, _Mapping]] = ..., tunnel_up: _Optional[_Union[TunnelUp, _Mapping]] = ..., tunnel_down: _Optional[_Union[TunnelDown, _Mapping]] = ..., upgrade: _Optional[_Union[Upgrade, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("agent_id", "protocol_version", "config", "acked_seq", "compact_metrics")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    COMPACT_METRICS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    protocol_version: int
    config: Config
    acked_seq: int
    compact_metrics: bool
    def __init__(self, agent_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., config: _Optional[_Union[Config, _Mapping]] = ..., acked_seq: _Optional[int] = ..., compact_metrics: _Optional[bool] = ...) -> None: ...

class Config(_message.Message):
    __slots__ = ("metric_interval_s", "labels", "metric_sources")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRIC_SOURCES_FIELD_NUMBER: _ClassVar[int]
    metric_interval_s: int
    labels: _containers.ScalarMap[str, str]
    metric_sources: _containers.RepeatedCompositeFieldContainer[MetricSource]
    def __init__(self, metric_interval_s: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., metric_sources: _Optional[_Iterable[_Union[MetricSource, _Mapping]]] = ...) -> None: ...

class MetricSource(_message.Message):
    __slots__ = ("id", "name", "content", "sha256", "interval_s", "timeout_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    content: bytes
    sha256: str
    interval_s: int
    timeout_s: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., content: _Optional[bytes] = ..., sha256: _Optional[str] = ..., interval_s: _Optional[int] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "timeout_s", "run", "shell")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    id: str
    timeout_s: int
    run: RunScript
    shell: OpenShell
    def __init__(self, id: _Optional[str] = ..., timeout_s: _Optional[int] = ..., run: _Optional[_Union[RunScript, _Mapping]] = ..., shell: _Optional[_Union[OpenShell, _Mapping]] = ...) -> None: ...

class RunScript(_message.Message):
    __slots__ = ("content", "interpreter", "args", "env", "user", "max_output_bytes", "sha256", "entrypoint", "ansible")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    INTERPRETER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ANSIBLE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    interpreter: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    user: str
    max_output_bytes: int
    sha256: str
    entrypoint: str
    ansible: bool
    def __init__(self, content: _Optional[bytes] = ..., interpreter: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., user: _Optional[str] = ..., max_output_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., entrypoint: _Optional[str] = ..., ansible: _Optional[bool] = ...) -> None: ...

class OpenShell(_message.Message):
    __slots__ = ("session_id", "term", "cols", "rows", "user", "command")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    term: str
    cols: int
    rows: int
    user: str
    command: str
    def __init__(self, session_id: _Optional[str] = ..., term: _Optional[str] = ..., cols: _Optional[int] = ..., rows: _Optional[int] = ..., user: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class CancelCommand(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class ShellResize(_message.Message):
    __slots__ = ("session_id", "cols", "rows")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cols: int
    rows: int
    def __init__(self, session_id: _Optional[str] = ..., cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ShellClose(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate_pem", "not_after")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, certificate_pem: _Optional[bytes] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TunnelUp(_message.Message):
    __slots__ = ("tunnel_id", "interface", "address", "hub_public_key", "hub_endpoint", "hub_address", "cidrs", "keepalive", "rotate")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HUB_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HUB_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    HUB_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    interface: str
    address: str
    hub_public_key: str
    hub_endpoint: str
    hub_address: str
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    keepalive: int
    rotate: bool
    def __init__(self, tunnel_id: _Optional[str] = ..., interface: _Optional[str] = ..., address: _Optional[str] = ..., hub_public_key: _Optional[str] = ..., hub_endpoint: _Optional[str] = ..., hub_address: _Optional[str] = ..., cidrs: _Optional[_Iterable[str]] = ..., keepalive: _Optional[int] = ..., rotate: _Optional[bool] = ...) -> None: ...

class TunnelDown(_message.Message):
    __slots__ = ("tunnel_id",)
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    def __init__(self, tunnel_id: _Optional[str] = ...) -> None: ...

class TunnelStatus(_message.Message):
    __slots__ = ("tunnel_id", "public_key", "error", "up")
    TUNNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    tunnel_id: str
    public_key: str
    error: str
    up: bool
    def __init__(self, tunnel_id: _Optional[str] = ..., public_key: _Optional[str] = ..., error: _Optional[str] = ..., up: _Optional[bool] = ...) -> None: ...

class Upgrade(_message.Message):
    __slots__ = ("request_id", "package_url", "version", "sha256", "find_links")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FIND_LINKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    package_url: str
    version: str
    sha256: str
    find_links: str
    def __init__(self, request_id: _Optional[str] = ..., package_url: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., find_links: _Optional[str] = ...) -> None: ...

class MetricSourceStatus(_message.Message):
    __slots__ = ("source_id", "time_ms", "samples", "error", "bad_lines", "bad_line_count", "timed_out", "exit_code", "duration_ms")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BAD_LINES_FIELD_NUMBER: _ClassVar[int]
    BAD_LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    time_ms: int
    samples: int
    error: str
    bad_lines: _containers.RepeatedScalarFieldContainer[str]
    bad_line_count: int
    timed_out: bool
    exit_code: int
    duration_ms: int
    def __init__(self, source_id: _Optional[str] = ..., time_ms: _Optional[int] = ..., samples: _Optional[int] = ..., error: _Optional[str] = ..., bad_lines: _Optional[_Iterable[str]] = ..., bad_line_count: _Optional[int] = ..., timed_out: _Optional[bool] = ..., exit_code: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class UpgradeResult(_message.Message):
    __slots__ = ("request_id", "ok", "error", "version", "output")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ok: bool
    error: str
    version: str
    output: str
    def __init__(self, request_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., version: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...
