"""The service pool's waits for a connection are bounded (services/runtime/db.py ``ACQUIRE_TIMEOUT``): a caller of a
pool whose connections are all held gets ``TimeoutError`` to retry on, where asyncpg's default waits for ever."""

from __future__ import annotations

import pytest

from services.runtime import db

pytestmark = pytest.mark.integration


async def test_a_wait_for_a_connection_of_an_exhausted_pool_ends(database_url: str) -> None:
    pool = await db.create_pool(database_url, "public", min_size=1, max_size=1, acquire_timeout=0.5)
    try:
        async with pool.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 2")  # asyncpg's helpers acquire without a timeout of their own
            with pytest.raises(TimeoutError):
                async with pool.acquire():
                    pass
        assert await pool.fetchval("SELECT 3") == 3  # released: served again
        async with pool.acquire(timeout=5.0) as conn:  # a caller's own timeout still wins
            assert await conn.fetchval("SHOW search_path") == "public, public"
    finally:
        await pool.close()
