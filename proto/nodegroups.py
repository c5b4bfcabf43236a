"""Canonical nodegroup names: one definition, imported by every service (Magnum's default nodegroups)."""

from __future__ import annotations

DEFAULT_MASTER = "default-master"
DEFAULT_WORKER = "default-worker"


def default_group(role: str) -> str:
    """The default nodegroup of a role (a server created before nodegroups existed belongs to it)."""
    return DEFAULT_MASTER if role == "master" else DEFAULT_WORKER
