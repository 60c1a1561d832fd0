"""The state store: one narrow interface, RocksDB (rocksdict) behind it by default.

Callers see :class:`Store` only, so another backend (PostgreSQL, for several controllers) can
be added without touching them. Keys are ``str`` made of ``/``-separated parts
(``machine/<org>/<id>``); values are ``bytes``. JSON documents with a schema version are
layered on top in :mod:`controller.store.docs`.
"""

from controller.store.base import Batch, Store, StoreLocked
from controller.store.rocks import RocksStore, open_store, set_memory

__all__ = ["Batch", "Store", "StoreLocked", "RocksStore", "open_store", "set_memory"]
