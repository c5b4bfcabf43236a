"""Magnum's cluster status machine as a pure function of (current status, event type).

The read model never moves a cluster backwards: a late ``ClusterCreateCompleted`` after a delete was
requested leaves ``DELETE_IN_PROGRESS`` alone; ``ClusterDeleteCompleted`` removes the cluster (``GONE``).
"""

from __future__ import annotations

from proto.statuses import (  # noqa: F401 - re-exported: the read model's statuses are the contract's
    CREATE_COMPLETE,
    CREATE_FAILED,
    CREATE_IN_PROGRESS,
    DELETE_FAILED,
    DELETE_IN_PROGRESS,
    FAILED,
    STABLE,
    UPDATE_COMPLETE,
    UPDATE_FAILED,
    UPDATE_IN_PROGRESS,
)

GONE = "GONE"
"""Not a Magnum status: the cluster row is removed (Magnum's list never shows DELETE_COMPLETE)."""

DELETING = frozenset({DELETE_IN_PROGRESS, DELETE_FAILED})

# event type -> (statuses it applies from (None = any), status it leads to)
_RULES: dict[str, tuple[frozenset[str] | None, str]] = {
    "ClusterCreateRequested": (frozenset(), CREATE_IN_PROGRESS),  # only creates; see transition()
    "ClusterRejected": (frozenset({CREATE_IN_PROGRESS}), CREATE_FAILED),
    "ClusterCreateCompleted": (frozenset({CREATE_IN_PROGRESS}), CREATE_COMPLETE),
    "ClusterCreateFailed": (frozenset({CREATE_IN_PROGRESS}), CREATE_FAILED),
    "ClusterUpdateRequested": (STABLE | {UPDATE_FAILED}, UPDATE_IN_PROGRESS),
    "ClusterUpdateStarted": (STABLE | {UPDATE_FAILED, UPDATE_IN_PROGRESS}, UPDATE_IN_PROGRESS),
    "ClusterUpdateCompleted": (frozenset({UPDATE_IN_PROGRESS}), UPDATE_COMPLETE),
    "ClusterUpdateFailed": (frozenset({UPDATE_IN_PROGRESS}), UPDATE_FAILED),
    "ClusterDeleteRequested": (None, DELETE_IN_PROGRESS),
    "ClusterDeleteStarted": (None, DELETE_IN_PROGRESS),
    "ClusterDeleteFailed": (frozenset({DELETE_IN_PROGRESS}), DELETE_FAILED),
    "ClusterDeleteCompleted": (None, GONE),
    "ClusterWithdrawn": (frozenset({CREATE_IN_PROGRESS, CREATE_FAILED}), GONE),
}


def transition(current: str | None, event_type: str) -> str | None:
    """The status after ``event_type`` given ``current`` (None = no such cluster yet).

    Returns ``current`` unchanged when the event does not move the status from there.
    """
    if event_type == "ClusterCreateRequested":
        return CREATE_IN_PROGRESS if current is None else current
    rule = _RULES.get(event_type)
    if rule is None or current is None:
        return current
    sources, target = rule
    if sources is None or current in sources:
        return target
    return current


def is_deletable(status: str) -> bool:
    """Magnum puts no precondition on delete; a cluster already being deleted is answered without a new event."""
    return status != DELETE_IN_PROGRESS


def rule(event_type: str) -> tuple[frozenset[str] | None, str]:
    """The statuses ``event_type`` moves a cluster from (None: any) and the status it moves it to (a statement
    applying the transition itself: services/api/store.py ``move_write``)."""
    return _RULES[event_type]
