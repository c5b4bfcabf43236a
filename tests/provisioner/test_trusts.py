"""The trust reaper's decisions (which pending trust deletions are due, the retry backoff): pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.provisioner.store import PendingTrust
from services.provisioner.trusts import due, hold_left, retry_delay

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def pending(trust_id: str, reason: str, age: float) -> PendingTrust:
    return PendingTrust(trust_id, "c1", "p1", reason, NOW - timedelta(seconds=age))


def test_a_deleted_clusters_trust_is_due_at_once_a_rotated_one_after_the_grace() -> None:
    items = [pending("a", "cluster_deleted", 0), pending("b", "rotated", 1), pending("c", "rotated", 6)]
    ready = due(items, now=NOW, in_use=lambda t: False, not_before={}, monotonic=100.0, rotation_grace=5.0)
    assert [p.trust_id for p in ready] == ["a", "c"]


def test_a_trust_held_by_a_reconcile_pass_or_backing_off_waits() -> None:
    items = [pending("a", "cluster_deleted", 10), pending("b", "rotated", 10), pending("c", "cluster_deleted", 10)]
    ready = due(items, now=NOW, in_use=lambda t: t == "b", not_before={"a": 101.0, "c": 99.0}, monotonic=100.0,
                rotation_grace=5.0)
    assert [p.trust_id for p in ready] == ["c"]


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, base=0.5, cap=4.0) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_trust_waits_out_the_hold_since_a_cluster_was_last_created_with_it() -> None:
    def handed_out(trust_id: str, ago: float | None) -> PendingTrust:
        at = None if ago is None else NOW - timedelta(seconds=ago)
        return PendingTrust(trust_id, "c1", "p1", "cluster_deleted", NOW, handed_out_at=at)

    items = [handed_out("a", 4), handed_out("b", 15), handed_out("c", None)]
    ready = due(items, now=NOW, in_use=lambda t: False, not_before={}, monotonic=100.0, rotation_grace=5.0, hold=10.0)
    assert [p.trust_id for p in ready] == ["b", "c"]
    assert [hold_left(p, now=NOW, hold=10.0) for p in items] == [6.0, 0.0, 0.0]
    assert [p.trust_id for p in due(items, now=NOW, in_use=lambda t: False, not_before={}, monotonic=100.0,
                                    rotation_grace=5.0)] == ["a", "b", "c"]  # no hold: trusts are not shared

