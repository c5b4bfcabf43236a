"""Usage arithmetic: plain functions over node intervals (no bus, no database).

A node accrues usage from ``NodeBecameActive.occurred_at`` until ``NodeDeleted`` (or ``NodeFailed``, or its
cluster's ``ClusterDeleteCompleted``), with the vCPUs and RAM of its flavor from ``NodeCreated``. An open interval
counts up to "now". Sums are kept in integer microseconds so they are exact, then given in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class NodeInterval:
    cluster_id: str
    server_id: str
    vcpus: int
    ram_mb: int
    start: datetime
    end: datetime | None = None
    """None while the node is still running."""


@dataclass
class Totals:
    node_us: int = 0
    core_us: int = 0
    ram_mb_us: int = 0
    nodes: int = 0

    @property
    def node_seconds(self) -> float:
        return self.node_us / 1_000_000

    @property
    def core_seconds(self) -> float:
        return self.core_us / 1_000_000

    @property
    def ram_mb_seconds(self) -> float:
        return self.ram_mb_us / 1_000_000

    def add(self, interval: NodeInterval, us: int) -> None:
        self.node_us += us
        self.core_us += interval.vcpus * us
        self.ram_mb_us += interval.ram_mb * us
        self.nodes += 1


@dataclass
class Usage:
    total: Totals = field(default_factory=Totals)
    clusters: dict[str, Totals] = field(default_factory=dict)


def overlap_us(
    start: datetime, end: datetime | None, *, since: datetime | None, until: datetime, now: datetime
) -> int:
    """Microseconds of [start, end or now) that fall inside [since, until); never negative."""
    stop = min(end if end is not None else now, until)
    begin = max(start, since) if since is not None else start
    if stop <= begin:
        return 0
    return (stop - begin) // _US


def usage(
    intervals: Iterable[NodeInterval], *, since: datetime | None, until: datetime, now: datetime
) -> Usage:
    """Sum node-, core- and RAM-MB-microseconds of ``intervals`` inside the window, in total and per cluster."""
    result = Usage()
    for interval in intervals:
        us = overlap_us(interval.start, interval.end, since=since, until=until, now=now)
        if us <= 0:
            continue
        result.total.add(interval, us)
        result.clusters.setdefault(interval.cluster_id, Totals()).add(interval, us)
    return result
