"""Usage arithmetic: plain functions over resource intervals (no bus, no database).

Every billed resource of a cluster (a server, a volume, a floating IP, a load balancer) and the cluster itself is an
interval ``[start, end)`` timed by the cloud: a server from its creation at Nova (the create call's return, or Nova's
``created``) until the provisioner saw it gone; a volume, floating IP or load balancer likewise. An open interval
counts up to "now". Each interval accrues, per microsecond inside the window: a server its vCPUs and RAM MB (and one
server-microsecond), a volume its GB, a floating IP or load balancer one unit, a cluster one cluster-microsecond.
Sums are integers (exact); hours are derived at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_US = timedelta(microseconds=1)
US_PER_HOUR = 3_600_000_000

KINDS = ("server", "volume", "floating_ip", "load_balancer", "cluster")
GROUPS = ("project", "cluster", "resource")


@dataclass(frozen=True)
class Interval:
    kind: str
    resource_id: str
    cluster_id: str
    project_id: str
    start: datetime | None
    end: datetime | None = None
    """None while the resource still exists."""
    name: str | None = None
    vcpus: int = 0
    ram_mb: int = 0
    size_gb: int = 0


@dataclass
class Totals:
    vcpu_us: int = 0
    ram_mb_us: int = 0
    volume_gb_us: int = 0
    floating_ip_us: int = 0
    load_balancer_us: int = 0
    server_us: int = 0
    cluster_us: int = 0
    servers: int = 0
    """Servers with any time inside the window."""

    def add(self, i: Interval, us: int) -> None:
        if i.kind == "server":
            self.server_us += us
            self.vcpu_us += i.vcpus * us
            self.ram_mb_us += i.ram_mb * us
            self.servers += 1
        elif i.kind == "volume":
            self.volume_gb_us += i.size_gb * us
        elif i.kind == "floating_ip":
            self.floating_ip_us += us
        elif i.kind == "load_balancer":
            self.load_balancer_us += us
        elif i.kind == "cluster":
            self.cluster_us += us

    def merge(self, other: Totals) -> None:
        for name in ("vcpu_us", "ram_mb_us", "volume_gb_us", "floating_ip_us", "load_balancer_us", "server_us",
                     "cluster_us", "servers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Row:
    """One group's usage: a project, a (project, cluster), or one resource."""

    project_id: str
    cluster_id: str | None
    totals: Totals = field(default_factory=Totals)
    interval: Interval | None = None
    billed_us: int | None = None


def overlap_us(
    start: datetime | None, end: datetime | None, *, since: datetime | None, until: datetime, now: datetime
) -> int:
    """Microseconds of [start, end or now) that fall inside [since, until); never negative."""
    if start is None:
        return 0
    stop = min(end if end is not None else now, until)
    begin = max(start, since) if since is not None else start
    if stop <= begin:
        return 0
    return (stop - begin) // _US


def summarize(
    intervals: Iterable[Interval], *, since: datetime | None, until: datetime, now: datetime, group_by: str
) -> tuple[Totals, list[Row]]:
    """The window's grand total and its rows grouped by ``project``, ``cluster`` or ``resource``, in a stable order
    (project, cluster, then kind and resource id). Intervals with nothing inside the window make no row, except
    by resource: the intervals asked for all touch the window, and one may hold nothing, as a node the cloud lost
    within a second of its creation (Nova's times have whole seconds: its end can even precede its start)."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    total = Totals()
    rows: dict[tuple[str, ...], Row] = {}
    for i in intervals:
        us = overlap_us(i.start, i.end, since=since, until=until, now=now)
        if us <= 0:
            if group_by == "resource":  # a row of its own, adding nothing to any total
                rows.setdefault((i.project_id, i.cluster_id, i.kind, i.resource_id),
                                Row(i.project_id, i.cluster_id, interval=i, billed_us=0))
            continue
        total.add(i, us)
        if group_by == "project":
            key: tuple[str, ...] = (i.project_id,)
            row = rows.setdefault(key, Row(i.project_id, None))
        elif group_by == "cluster":
            key = (i.project_id, i.cluster_id)
            row = rows.setdefault(key, Row(i.project_id, i.cluster_id))
        else:
            key = (i.project_id, i.cluster_id, i.kind, i.resource_id)
            row = rows.setdefault(key, Row(i.project_id, i.cluster_id, interval=i, billed_us=0))
            row.billed_us = (row.billed_us or 0) + us
        row.totals.add(i, us)
    return total, [rows[k] for k in sorted(rows)]


def per_cluster(intervals: Iterable[Interval], *, since: datetime | None, until: datetime, now: datetime
                ) -> dict[str, Totals]:
    """Totals by cluster id (the older ``UsageReport.clusters``)."""
    _, rows = summarize(intervals, since=since, until=until, now=now, group_by="cluster")
    out: dict[str, Totals] = {}
    for row in rows:
        out.setdefault(row.cluster_id or "", Totals()).merge(row.totals)
    return out
