"""Reading the audit log: per organisation, newest first, with filters and paging."""

from __future__ import annotations

import json
from typing import Any

from controller.accounts.model import Principal
from controller.audit.chain import VerifyResult, entry_key, verify
from controller.errors import Invalid
from controller.listing import Query, apply
from controller.store.base import Store
from controller.timeutil import parse_iso

# entries one query may read; `until` seeks (older entries are reached by giving it) and
# `since` stops the walk, so only a wide window over a huge log hits this (meta.truncated)
MAX_SCAN = 200_000
CLOCK_SLACK = 60.0  # entries are in sequence order; their wall-clock times may step back a little


class AuditService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def verify(self) -> VerifyResult:
        return verify(self.store)

    def entries(
        self,
        p: Principal,
        query: Query,
        *,
        since: str = "",
        until: str = "",
        user: str = "",
        action: str = "",
        outcome: str = "",
        after: int | None = None,
        allorgs: bool = False,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Entries of the caller's organisation (all, for a platform admin with ``allorgs``),
        newest first unless ``after`` asks for the entries following a sequence number (oldest
        first: what ``logs --follow`` reads).

        A caller without an organisation has no log: the entries of no organisation (failed
        logins, refused credentials of anyone) are the platform's, for platform admins asking
        with ``allorgs`` only."""
        t0 = _time(since, "since")
        t1 = _time(until, "until")
        if not (allorgs and p.is_admin) and not p.org_id:
            return apply(iter(()), query, text_fields=("action", "id"))
        newest_first = after is None
        # newest first, from `until` when given: found by bisecting the sequence numbers
        top = self._seq_at(t1 + CLOCK_SLACK) if (newest_first and t1 is not None) else None
        if allorgs and p.is_admin:
            start = entry_key(after + 1) if after is not None else (entry_key(top) if top else None)
            keys_iter = (k for k, _ in self.store.scan("audit/", reverse=newest_first,
                                                       start=start, keys_only=True))
        else:
            prefix = f"auditorg/{p.org_id}/"
            start = (f"{prefix}{after + 1:016d}" if after is not None
                     else f"{prefix}{top:016d}" if top else None)
            keys_iter = ("audit/" + k.rsplit("/", 1)[1]
                         for k, _ in self.store.scan(prefix, reverse=newest_first, start=start,
                                                     keys_only=True))
        truncated = False

        def loaded() -> Any:
            nonlocal truncated
            batch: list[str] = []
            n = 0
            for k in keys_iter:
                batch.append(k)
                n += 1
                if len(batch) >= 500:
                    for e in self._load(batch):
                        if newest_first and t0 is not None and e["time"] < t0 - CLOCK_SLACK:
                            return  # everything further is older than `since`
                        yield e
                    batch = []
                if n >= MAX_SCAN:
                    truncated = True
                    break
            yield from self._load(batch)

        def keep(e: dict[str, Any]) -> bool:
            if t0 is not None and e["time"] < t0:
                return False
            if t1 is not None and e["time"] > t1:
                return False
            if user and user not in (e["actor"].get("id"), e["actor"].get("email")):
                return False
            if action and not (e["action"] == action or e["action"].startswith(action + ".")):
                return False
            return not (outcome and e["outcome"] != outcome)

        data, meta = apply((e for e in loaded() if keep(e)), query, text_fields=("action", "id"))
        if truncated:
            meta["truncated"] = True  # only the newest MAX_SCAN entries were read: narrow the window
        return data, meta

    def _seq_at(self, t: float) -> int:
        """The highest sequence number whose entry is at or before ``t`` (0: none)."""
        raw = self.store.get("meta/audit/head")
        hi = int(json.loads(raw)["seq"]) if raw else 0
        lo, best = 1, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            e = self.store.get(entry_key(mid))
            if e is None:
                break
            if json.loads(e)["time"] <= t:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    def _load(self, keys: list[str]) -> list[dict[str, Any]]:
        out = []
        for raw in self.store.get_many(keys):
            if raw is not None:
                e = json.loads(raw)
                out.append(e)
        return out


def _time(value: str, name: str) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise Invalid(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z",
                      field=name) from None
