from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.accounting.usage import NodeInterval, overlap_us, usage

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
    assert overlap_us(at(0), at(0.000001), since=None, until=at(1), now=at(1)) == 1


def test_usage_sums_per_project_and_cluster_exactly() -> None:
    nodes = [
        NodeInterval("c1", "s1", vcpus=2, ram_mb=4096, start=at(0), end=at(100)),
        NodeInterval("c1", "s2", vcpus=4, ram_mb=8192, start=at(50), end=None),
        NodeInterval("c2", "s3", vcpus=1, ram_mb=512, start=at(10), end=at(10.5)),
        NodeInterval("c2", "s4", vcpus=1, ram_mb=512, start=at(300), end=None),  # after the window
    ]
    result = usage(nodes, since=None, until=at(200), now=at(250))
    # s1: 100 s, s2: 150 s (until 200), s3: 0.5 s, s4: nothing
    assert result.total.node_seconds == 250.5
    assert result.total.core_seconds == 2 * 100 + 4 * 150 + 0.5
    assert result.total.ram_mb_seconds == 4096 * 100 + 8192 * 150 + 512 * 0.5
    assert result.total.nodes == 3
    assert result.clusters["c1"].node_seconds == 250
    assert result.clusters["c2"].core_seconds == 0.5
    assert "c2" in result.clusters and result.clusters["c2"].nodes == 1


def test_open_interval_grows_with_now() -> None:
    nodes = [NodeInterval("c", "s", vcpus=2, ram_mb=1024, start=at(0))]
    first = usage(nodes, since=None, until=at(10_000), now=at(10))
    later = usage(nodes, since=None, until=at(10_000), now=at(20))
    assert first.total.core_seconds == 20
    assert later.total.core_seconds == 40
