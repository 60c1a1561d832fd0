"""Cost estimates: the provider's size price (libcloud's pricing data), zero while a machine
is stopped where the provider bills so, and ``cost_per_hour`` / ``cost_per_month`` tags
overriding both. A month is 730 hours, as the providers' calculators count."""

from __future__ import annotations

from typing import Any

HOURS_PER_MONTH = 730
_NOT_BILLED = ("stopped", "terminated")


def _tag_number(tags: dict[str, Any], name: str) -> float | None:
    try:
        v = float(str(tags.get(name, "")).strip().lstrip("$"))
    except ValueError:
        return None
    return v if v >= 0 else None


def machine_cost(doc: dict[str, Any], stopped_is_free: bool = True) -> dict[str, Any]:
    """``{"hourly", "monthly", "currency", "source"}`` for a machine document; ``source`` says
    where the figure comes from: tag, pricing, stopped, or unknown (hourly and monthly 0)."""
    tags = doc.get("tags") or {}
    per_hour, per_month = _tag_number(tags, "cost_per_hour"), _tag_number(tags, "cost_per_month")
    if per_hour is not None or per_month is not None:
        hourly = per_hour if per_hour is not None else (per_month or 0.0) / HOURS_PER_MONTH
        monthly = per_month if per_month is not None else hourly * HOURS_PER_MONTH
        return _cost(hourly, monthly, "tag")
    if stopped_is_free and doc.get("state") in _NOT_BILLED:
        return _cost(0.0, 0.0, "stopped")
    if doc.get("missing_since"):
        return _cost(0.0, 0.0, "missing")
    price = doc.get("price_per_hour")
    if isinstance(price, int | float) and price > 0:
        return _cost(float(price), float(price) * HOURS_PER_MONTH, "pricing")
    return _cost(0.0, 0.0, "unknown")


def _cost(hourly: float, monthly: float, source: str) -> dict[str, Any]:
    return {"hourly": round(hourly, 6), "monthly": round(monthly, 4), "currency": "USD",
            "source": source}


def totals(machines: list[dict[str, Any]], by: str) -> dict[str, dict[str, Any]]:
    """Sum hourly/monthly costs grouped by ``by``: "cloud", "org" or "tag:<key>"."""
    out: dict[str, dict[str, Any]] = {}
    for m in machines:
        c = m.get("cost") or {}
        if by.startswith("tag:"):
            keys = [str((m.get("tags") or {}).get(by[4:], ""))]
            if keys == [""]:
                keys = ["(untagged)"]
        else:
            keys = [str(m.get(by, ""))]
        for k in keys:
            t = out.setdefault(k, {"hourly": 0.0, "monthly": 0.0, "machines": 0, "unknown": 0,
                                   "currency": "USD"})
            t["hourly"] = round(t["hourly"] + float(c.get("hourly", 0.0)), 6)
            t["monthly"] = round(t["monthly"] + float(c.get("monthly", 0.0)), 4)
            t["machines"] += 1
            t["unknown"] += c.get("source") == "unknown"
    return out
