"""Throttling failed logins, per e-mail and per address."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from controller.errors import RateLimited


class LoginThrottle:
    """Failed logins per e-mail and per address within ``window`` seconds; past ``limit``,
    further attempts are refused until the oldest failure leaves the window.

    An attempt is counted when it starts (:meth:`attempt`, before the password check is
    awaited), so parallel guesses cannot all pass the check before any of them has failed; an
    attempt that proves right is given back (:meth:`release`, :meth:`succeed`)."""

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = defaultdict(deque)

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            q = self._fails.get(key)
            if not q:
                continue
            while q and now - q[0] > self.window:
                q.popleft()
            if len(q) >= self.limit:
                retry = int(self.window - (now - q[0])) + 1
                raise RateLimited(f"too many failed logins; try again in {retry} s", retry)

    def attempt(self, *keys: str) -> float:
        """Check, then count an attempt under each key (nothing awaited in between: the
        check and the count are one step on the event loop). Raises RateLimited; returns the
        attempt's stamp for :meth:`release`."""
        self.check(*keys)
        now = time.monotonic()
        for key in keys:
            self._fails[key].append(now)
        if len(self._fails) > 100_000:  # bound memory under a spray of addresses
            for k in [k for k, q in self._fails.items() if not q or now - q[-1] > self.window]:
                del self._fails[k]
        return now

    def release(self, stamp: float, *keys: str) -> None:
        """Take back the attempt ``stamp`` (it was no failure)."""
        for key in keys:
            q = self._fails.get(key)
            if q is None:
                continue
            try:
                q.remove(stamp)
            except ValueError:
                pass
            if not q:
                del self._fails[key]

    def succeed(self, key: str) -> None:
        """Forget every failure under ``key`` (the right password for an e-mail)."""
        self._fails.pop(key, None)
