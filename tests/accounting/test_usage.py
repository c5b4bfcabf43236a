from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.accounting.usage import Interval, overlap_us, per_cluster, summarize

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_overlap_clips_to_window_and_now() -> None:
    assert overlap_us(at(0), at(10), since=None, until=at(100), now=at(100)) == 10_000_000
    assert overlap_us(at(0), at(10), since=at(5), until=at(100), now=at(100)) == 5_000_000
    assert overlap_us(at(0), at(10), since=None, until=at(3), now=at(100)) == 3_000_000
    assert overlap_us(at(0), None, since=None, until=at(100), now=at(42)) == 42_000_000
    assert overlap_us(at(0), at(10), since=at(10), until=at(20), now=at(100)) == 0
    assert overlap_us(at(10), at(5), since=None, until=at(20), now=at(100)) == 0  # end before start
    assert overlap_us(None, at(5), since=None, until=at(20), now=at(100)) == 0  # never started
    assert overlap_us(at(0), at(0.000001), since=None, until=at(20), now=at(100)) == 1  # exact to the microsecond


INTERVALS = [
    Interval("server", "s1", "c1", "p1", at(0), at(100), vcpus=2, ram_mb=4096),
    Interval("server", "s2", "c1", "p1", at(10), None, vcpus=4, ram_mb=8192),
    Interval("volume", "v1", "c1", "p1", at(5), at(50), size_gb=10),
    Interval("floating_ip", "f1", "c1", "p1", at(20), at(80)),
    Interval("load_balancer", "l1", "c1", "p1", at(0), at(60)),
    Interval("cluster", "c1", "c1", "p1", at(0), None),
    Interval("server", "s3", "c2", "p2", at(30), at(40), vcpus=1, ram_mb=1024),
]


def test_every_kind_accrues_its_own_unit() -> None:
    total, rows = summarize(INTERVALS, since=None, until=at(200), now=at(200), group_by="project")
    assert [r.project_id for r in rows] == ["p1", "p2"]
    p1 = rows[0].totals
    assert p1.server_us == (100 + 190) * 10**6
    assert p1.vcpu_us == (2 * 100 + 4 * 190) * 10**6
    assert p1.ram_mb_us == (4096 * 100 + 8192 * 190) * 10**6
    assert p1.volume_gb_us == 10 * 45 * 10**6
    assert (p1.floating_ip_us, p1.load_balancer_us, p1.cluster_us) == (60 * 10**6, 60 * 10**6, 200 * 10**6)
    assert total.vcpu_us == p1.vcpu_us + 10 * 10**6


def test_groups_by_cluster_and_resource_sum_to_the_project() -> None:
    window = {"since": at(15), "until": at(70), "now": at(200)}
    _, by_project = summarize(INTERVALS, group_by="project", **window)  # type: ignore[arg-type]
    _, by_cluster = summarize(INTERVALS, group_by="cluster", **window)  # type: ignore[arg-type]
    _, by_resource = summarize(INTERVALS, group_by="resource", **window)  # type: ignore[arg-type]
    assert [(r.project_id, r.cluster_id) for r in by_cluster] == [("p1", "c1"), ("p2", "c2")]
    for fig in ("vcpu_us", "ram_mb_us", "volume_gb_us", "floating_ip_us", "load_balancer_us", "cluster_us"):
        assert sum(getattr(r.totals, fig) for r in by_resource) == sum(getattr(r.totals, fig) for r in by_project)
    billed = {r.interval.resource_id: r.billed_us for r in by_resource if r.interval}
    assert billed == {"s1": 55e6, "s2": 55e6, "v1": 35e6, "f1": 50e6, "l1": 45e6, "c1": 55e6, "s3": 10e6}
    assert per_cluster(INTERVALS, **window)["c2"].servers == 1  # type: ignore[arg-type]


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError):
        summarize(INTERVALS, since=None, until=at(1), now=at(1), group_by="flavor")


def test_a_resource_lost_within_a_second_of_its_start_keeps_its_row_and_adds_nothing() -> None:
    # Nova's `updated` has whole seconds: a node that went to ERROR 0.4 s after its create call returned can be
    # reported lost "before" it started; asked by resource, it is still listed (billed 0), and no total counts it
    lost = Interval("server", "s9", "c9", "p9", at(10.6), at(10), vcpus=2, ram_mb=2048)
    total, rows = summarize([*INTERVALS, lost], since=None, until=at(200), now=at(200), group_by="resource")
    row = next(r for r in rows if r.interval is not None and r.interval.resource_id == "s9")
    assert row.billed_us == 0 and row.interval is lost
    assert total == summarize(INTERVALS, since=None, until=at(200), now=at(200), group_by="resource")[0]
    _, by_project = summarize([lost], since=None, until=at(200), now=at(200), group_by="project")
    assert by_project == []
