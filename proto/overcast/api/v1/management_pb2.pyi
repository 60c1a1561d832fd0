import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WhoamiRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "email", "is_admin")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    IS_ADMIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    is_admin: bool
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., is_admin: _Optional[bool] = ...) -> None: ...

class Org(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class WhoamiResponse(_message.Message):
    __slots__ = ("user", "org", "auth_kind", "token_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    AUTH_KIND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    user: User
    org: Org
    auth_kind: str
    token_id: str
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., org: _Optional[_Union[Org, _Mapping]] = ..., auth_kind: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class ListMachinesRequest(_message.Message):
    __slots__ = ("search", "sort", "start", "limit")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    search: str
    sort: str
    start: str
    limit: int
    def __init__(self, search: _Optional[str] = ..., sort: _Optional[str] = ..., start: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMeta(_message.Message):
    __slots__ = ("total", "returned", "start", "sort")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    total: int
    returned: int
    start: str
    sort: str
    def __init__(self, total: _Optional[int] = ..., returned: _Optional[int] = ..., start: _Optional[str] = ..., sort: _Optional[str] = ...) -> None: ...

class ListMachinesResponse(_message.Message):
    __slots__ = ("machines", "meta")
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    machines: _containers.RepeatedCompositeFieldContainer[Machine]
    meta: ListMeta
    def __init__(self, machines: _Optional[_Iterable[_Union[Machine, _Mapping]]] = ..., meta: _Optional[_Union[ListMeta, _Mapping]] = ...) -> None: ...

class GetMachineRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Machine(_message.Message):
    __slots__ = ("id", "external_id", "name", "cloud", "state", "hostname", "public_ips", "private_ips", "tags", "created", "last_seen", "unreachable_since", "missing_since", "size", "image", "location", "os_type", "cores", "owned_by", "created_by", "extra")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_IPS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_IPS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    MISSING_SINCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    OS_TYPE_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    OWNED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    id: str
    external_id: str
    name: str
    cloud: str
    state: str
    hostname: str
    public_ips: _containers.RepeatedScalarFieldContainer[str]
    private_ips: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    unreachable_since: _timestamp_pb2.Timestamp
    missing_since: _timestamp_pb2.Timestamp
    size: str
    image: str
    location: str
    os_type: str
    cores: float
    owned_by: str
    created_by: str
    extra: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., external_id: _Optional[str] = ..., name: _Optional[str] = ..., cloud: _Optional[str] = ..., state: _Optional[str] = ..., hostname: _Optional[str] = ..., public_ips: _Optional[_Iterable[str]] = ..., private_ips: _Optional[_Iterable[str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unreachable_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., missing_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size: _Optional[str] = ..., image: _Optional[str] = ..., location: _Optional[str] = ..., os_type: _Optional[str] = ..., cores: _Optional[float] = ..., owned_by: _Optional[str] = ..., created_by: _Optional[str] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "kind", "id", "org", "time", "data")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: str
    kind: str
    id: str
    org: str
    time: _timestamp_pb2.Timestamp
    data: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., kind: _Optional[str] = ..., id: _Optional[str] = ..., org: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetDatapointsRequest(_message.Message):
    __slots__ = ("query", "start", "end", "step", "time")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    query: str
    start: str
    end: str
    step: str
    time: str
    def __init__(self, query: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., step: _Optional[str] = ..., time: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("time", "value")
    TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    time: float
    value: float
    def __init__(self, time: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class TimeSeries(_message.Message):
    __slots__ = ("labels", "points")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class GetDatapointsResponse(_message.Message):
    __slots__ = ("result_type", "series")
    RESULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    result_type: str
    series: _containers.RepeatedCompositeFieldContainer[TimeSeries]
    def __init__(self, result_type: _Optional[str] = ..., series: _Optional[_Iterable[_Union[TimeSeries, _Mapping]]] = ...) -> None: ...
