"""Quota admission: plain decisions over plain numbers (no bus, no database).

Which clusters count against a project's quota (Magnum counts every cluster row of the project, whatever its
status, until the row is gone):

* a cluster counts from its admission until ``ClusterDeleteCompleted``;
* a ``CREATE_FAILED`` (or ``DELETE_FAILED``) cluster still counts, as in Magnum: the user must delete it;
* a rejected cluster never counts (Magnum never creates its row: the POST answers 403).
"""

from __future__ import annotations

from dataclasses import dataclass

MAGNUM_DEFAULT_CLUSTER_QUOTA = 20
"""Magnum's ``[quotas] max_clusters_per_project`` default."""


@dataclass(frozen=True)
class Decision:
    admitted: bool
    limit: int
    in_use: int
    reason: str | None = None


def quota_exceeded_message(limit: int) -> str:
    """Magnum's exact text (``ResourceLimitExceeded`` wrapping the cluster controller's message)."""
    return (
        "Resource limit exceeded: You have reached the maximum clusters per project, "
        f"{limit}. You may delete a cluster to make room for a new one."
    )


def cluster_limit(default_limit: int, override: int | None) -> int:
    """A per-project quota row wins over the configured default."""
    return default_limit if override is None else override


def decide(in_use: int, limit: int) -> Decision:
    """Admit when the project has fewer counted clusters than its limit (Magnum: ``count >= limit`` refuses)."""
    if in_use >= limit:
        return Decision(admitted=False, limit=limit, in_use=in_use, reason=quota_exceeded_message(limit))
    return Decision(admitted=True, limit=limit, in_use=in_use)


def counts_against_quota(decision: str | None, delete_completed: bool) -> bool:
    """Whether a cluster in this state occupies one unit of its project's cluster quota."""
    return decision == "admitted" and not delete_completed


def default_quota_from_env(environ: dict[str, str]) -> int:
    """``COVE_DEFAULT_CLUSTER_QUOTA`` (a non-negative integer), else Magnum's default of 20."""
    raw = environ.get("COVE_DEFAULT_CLUSTER_QUOTA", "").strip()
    if not raw:
        return MAGNUM_DEFAULT_CLUSTER_QUOTA
    value = int(raw)
    if value < 0:
        raise ValueError(f"COVE_DEFAULT_CLUSTER_QUOTA must be >= 0, got {value}")
    return value
