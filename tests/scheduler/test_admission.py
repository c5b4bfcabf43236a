from __future__ import annotations

import pytest

from services.scheduler import admission


def test_admits_below_limit_and_rejects_at_limit() -> None:
    assert admission.decide(0, 1).admitted
    assert admission.decide(19, 20).admitted
    refused = admission.decide(20, 20)
    assert not refused.admitted
    assert refused.reason == (
        "Resource limit exceeded: You have reached the maximum clusters per project, 20. "
        "You may delete a cluster to make room for a new one."
    )
    assert not admission.decide(0, 0).admitted


def test_override_wins_over_default() -> None:
    assert admission.cluster_limit(20, None) == 20
    assert admission.cluster_limit(20, 3) == 3
    assert admission.cluster_limit(20, 0) == 0


def test_what_counts() -> None:
    assert admission.counts_against_quota("admitted", delete_completed=False)
    assert not admission.counts_against_quota("admitted", delete_completed=True)
    assert not admission.counts_against_quota("rejected", delete_completed=False)
    assert not admission.counts_against_quota(None, delete_completed=False)


def test_default_quota_from_env() -> None:
    assert admission.default_quota_from_env({}) == 20
    assert admission.default_quota_from_env({"COVE_DEFAULT_CLUSTER_QUOTA": "5"}) == 5
    with pytest.raises(ValueError):
        admission.default_quota_from_env({"COVE_DEFAULT_CLUSTER_QUOTA": "-1"})
