"""A projection's events applied as the runtime applies them (``Projection._handle_fresh``), in batches whose
boundaries a seeded random draw decides, or one at a time: what the batch-boundary tests compare, table by table."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from proto.envelope import Envelope
from services.runtime.projection import _BATCH_SEQUENCES, _SEQUENCE

BATCH_SIZES = (1, 2, 3, 7, 16, 50, 250, 1000)

Handle = Callable[[Envelope, asyncpg.Connection], Awaitable[Sequence[Any] | None]]
HandleBatch = Callable[[list[Envelope], asyncpg.Connection], Awaitable[list[Sequence[Any]]]]


async def apply_in_batches(pool: asyncpg.Pool, envs: list[Envelope], handle: Handle, handle_batch: HandleBatch,
                           rng: random.Random | None) -> list[list[Any]]:
    """Apply ``envs`` (stream sequences 1, 2, ...) one transaction per batch: batches of sizes drawn from
    ``BATCH_SIZES`` by ``rng`` (None: one event at a time), more than one event through ``handle_batch``, one
    through ``handle``. Returns each event's outgoing events."""
    out: list[list[Any]] = []
    start = 0
    while start < len(envs):
        batch = envs[start:start + (rng.choice(BATCH_SIZES) if rng is not None else 1)]
        async with pool.acquire() as conn, conn.transaction():
            if len(batch) > 1:
                token = _BATCH_SEQUENCES.set(list(range(start + 1, start + 1 + len(batch))))
                try:
                    out.extend(list(o) for o in await handle_batch(batch, conn))
                finally:
                    _BATCH_SEQUENCES.reset(token)
            else:
                one = _SEQUENCE.set(start + 1)
                try:
                    out.append(list(await handle(batch[0], conn) or ()))
                finally:
                    _SEQUENCE.reset(one)
        start += len(batch)
    return out
