"""The contract between the API, which hands Keystone trusts to new clusters, and the provisioner, which deletes
them: how long a trust may be handed out after its creation, and how long the provisioner keeps it after that.

The API gives a new cluster the trust it created for the same user, project and roles less than
``reuse_seconds`` ago (one trust for a burst of creates instead of one per cluster). The provisioner's trust reaper
deletes a trust once no cluster in its store uses it AND ``hold_seconds`` have passed since the newest cluster using
it was requested: a create the API accepted with that trust but the provisioner has not seen yet was requested at
most ``reuse_seconds`` after the trust's first cluster, so the hold covers it with ``HOLD_MARGIN`` to spare for
the event's way through the stream and for clocks that disagree. ``reuse_seconds`` 0 gives every cluster a trust
of its own (Magnum's behaviour) and needs no hold. Both services read the same setting (docs/adr/0005).
"""

from __future__ import annotations

from collections.abc import Mapping

REUSE_ENV = "COVE_TRUST_REUSE_SECONDS"
DEFAULT_REUSE_SECONDS = 30.0
HOLD_MARGIN = 60.0
"""Seconds the provisioner keeps an unused trust beyond the reuse window."""


def reuse_seconds(env: Mapping[str, str]) -> float:
    """The reuse window from a service's ``COVE_*`` settings (negative values mean 0)."""
    return max(0.0, float(env.get(REUSE_ENV, DEFAULT_REUSE_SECONDS)))


def hold_seconds(env: Mapping[str, str]) -> float:
    """How long after the newest cluster using a trust was requested the provisioner keeps the trust."""
    window = reuse_seconds(env)
    return window + HOLD_MARGIN if window > 0 else 0.0
