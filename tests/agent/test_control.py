"""Reconnection backoff: exponential, capped, and jittered so a fleet spreads out."""

from __future__ import annotations

import itertools
import random
import statistics

from agent.control import BACKOFF_MAX, BACKOFF_MIN, backoff_delays


def test_backoff_grows_to_the_cap_and_never_exceeds_it() -> None:
    delays = list(itertools.islice(backoff_delays(random.Random(1)), 40))
    assert all(BACKOFF_MIN / 2 <= d <= BACKOFF_MAX for d in delays)
    assert max(delays[:3]) <= 4 * BACKOFF_MIN  # starts small
    assert max(delays[-10:]) > BACKOFF_MAX / 2  # and reaches the cap's range


def test_a_fleet_reconnecting_together_is_spread_out() -> None:
    # 10,000 agents losing the controller at the same moment: their 6th attempts are spread
    # over the whole window instead of landing together
    sixth = [next(itertools.islice(backoff_delays(random.Random(i)), 5, None)) for i in range(10_000)]
    assert statistics.pstdev(sixth) > 5
    buckets = [0] * 8
    for d in sixth:
        buckets[min(7, int(d / (max(sixth) / 8)))] += 1
    assert max(buckets) < 2 * min(buckets) + 200  # roughly uniform, no spike
