"""Metric sources on the agents' stream: the protocol's Config and MetricSource messages are
made here (and in the agents' servicer), nowhere else in monitoring."""

from __future__ import annotations

from typing import Any

from controller.monitoring.sources import SourceSpec
from overcast.agent.v1 import agent_pb2 as pb


def metric_sources(specs: list[SourceSpec]) -> list[pb.MetricSource]:
    return [pb.MetricSource(id=s.id, name=s.name, content=s.content, sha256=s.sha256,
                            interval_s=s.interval, timeout_s=s.timeout) for s in specs]


def config(interval: int, agent: dict[str, Any], specs: list[SourceSpec]) -> pb.ControllerMessage:
    """The whole configuration an agent is sent again when its sources change: its metric
    interval and labels as in its Welcome, and the sources."""
    from controller.agents.servicer import metric_labels  # the servicer imports this module

    return pb.ControllerMessage(config=pb.Config(
        metric_interval_s=interval, labels=metric_labels(agent.get("tags") or {}),
        metric_sources=metric_sources(specs)))
