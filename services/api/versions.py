"""The stream sequence of the last event applied to a template, a quota or a nodegroup's settings, so that an older one
applied late changes nothing.

The API's copies share its durable consumer: a copy killed holding a batch gets it back after the ack wait, and a
failed batch is retried after its back-off, while later events are applied (ADR 0002). For a cluster's events,
``services/api/parking.py`` restores the stream order; the other things the read model keeps are each written
whole by one event type (a template's update, a quota's, a nodegroup's settings), so the last one in the stream is
the one to keep: an update applied after the template's delete would bring it back, one applied after a newer
update would hide it. ``entity_versions`` (migration 0014) keeps, per thing, the sequence of the last event applied
(a delete's too: an update older than it then changes nothing); ``newer`` both asks and records, in one statement.
"""

from __future__ import annotations

import asyncpg

from services.runtime.projection import current_sequence


async def newer(tx: asyncpg.Connection, kind: str, key: str) -> bool:
    """Whether the event being applied (``current_sequence``) is newer than the last one applied to ``kind``/``key``;
    if so it is recorded as the last. Without a sequence (0: applied outside a projection) always True, and nothing
    recorded."""
    seq = current_sequence()
    if not seq:
        return True
    row = await tx.fetchval(
        "INSERT INTO entity_versions (kind, key, seq) VALUES ($1, $2, $3)"
        " ON CONFLICT (kind, key) DO UPDATE SET seq = EXCLUDED.seq WHERE entity_versions.seq < EXCLUDED.seq"
        " RETURNING seq",
        kind, key, seq)
    return row is not None
