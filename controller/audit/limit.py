"""A bound on the audit entries that unauthenticated callers can cause at will (refused
credentials, throttled logins): at most ``limit`` entries per key (action, organisation,
source address) in each ``window``-second window; past that the entries are only counted,
and the next entry written for the key (in a later window) carries how many were left out.
Kept in memory, and bounded: past ``max_keys`` keys, new keys share one overflow key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Key = tuple[str, ...]
OVERFLOW = "*"  # the address of the shared key once the table is full


class AuditLimiter:
    def __init__(self, limit: int = 20, window: float = 60.0, max_keys: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window number, entries written in it, entries suppressed not yet reported]
        self._state: dict[Key, list[int]] = {}

    def admit(self, key: Key) -> int | None:
        """None: do not write this entry (it is counted). Otherwise write it, and say in it
        that this many earlier entries for the key were not written (0: none)."""
        with self._lock:
            wid = int(self._clock() // self.window)
            key = self._slot(key, wid)
            st = self._state.get(key)
            if st is None:
                self._state[key] = [wid, 1, 0]
                return 0
            if st[0] != wid:  # a new window: this entry reports what the last ones left out
                carried = st[2]
                st[:] = [wid, 1, 0]
                return carried
            if st[1] < self.limit:
                st[1] += 1
                return 0
            st[2] += 1
            return None

    def flush(self) -> list[tuple[Key, int]]:
        """Keys whose window has ended with suppressed entries not yet reported, and how many
        (for one summary entry each); forgets every key whose window has ended."""
        with self._lock:
            wid = int(self._clock() // self.window)
            out = [(k, st[2]) for k, st in self._state.items() if st[0] != wid and st[2]]
            for k in [k for k, st in self._state.items() if st[0] != wid]:
                del self._state[k]
            return out

    def _slot(self, key: Key, wid: int) -> Key:
        if key in self._state or len(self._state) < self.max_keys:
            return key
        # full: forget keys of ended windows with nothing to report, then share one key
        for k in [k for k, st in self._state.items() if st[0] != wid and not st[2]]:
            del self._state[k]
        if len(self._state) < self.max_keys:
            return key
        shared = (*key[:-1], OVERFLOW)
        if shared not in self._state and len(self._state) >= self.max_keys + 16:
            # even the overflow keys do not fit (many actions and orgs): drop an old key
            self._state.pop(next(iter(self._state)))
        return shared

    def __len__(self) -> int:
        return len(self._state)
