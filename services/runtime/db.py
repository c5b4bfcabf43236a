"""PostgreSQL access: one asyncpg pool per service, a schema per service, forward-only SQL migrations."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_MIGRATION = re.compile(r"^(\d{4})_[\w.-]+\.sql$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    pass


def ident(name: str) -> str:
    """Validate a schema/table name we interpolate into SQL (lower-case identifiers only)."""
    if not _IDENT.match(name):
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return name


class NoResetConnection(asyncpg.Connection):
    """A pooled connection released without asyncpg's reset query (``UNLISTEN *; RESET ALL; ...``: a round trip
    per release, a third of a short transaction's). Cove leaves no session state behind: settings are ``SET LOCAL``,
    advisory locks are transaction-scoped (the migration lock is released in a ``finally``), LISTEN registrations
    are removed by their owner. asyncpg still rolls back a transaction left open and drops listener callbacks."""

    def get_reset_query(self) -> str:
        return ""


COMMAND_TIMEOUT = 120.0
"""Seconds any one statement may take before it fails (asyncpg's ``command_timeout``): a statement caught by a
PostgreSQL restart must raise, so that its caller retries, rather than hold its task (and what the task holds, such
as a cluster's lease) for ever."""


IDLE_IN_TRANSACTION_TIMEOUT = "30s"
"""How long the server lets a connection sit idle inside a transaction (``idle_in_transaction_session_timeout``)
before it ends the session: a copy frozen mid-transaction (paused, swapped out, partitioned) must not hold the rows
and locks the other copies of its service need; its work is retried by whoever then holds it."""


ACQUIRE_TIMEOUT = 60.0
"""Seconds a caller waits for one of the pool's connections (and for it to connect, when the pool opens a new one)
before ``TimeoutError``: asyncpg's own default is for ever, including in ``pool.fetch`` and friends, so a pool whose
connections are all held, or a PostgreSQL that accepts no connection, would park the caller (a cluster's delete
task, and the lease it holds) with no error to retry on. Well above what any wait takes under load."""


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, every ``acquire`` bounded by ``ACQUIRE_TIMEOUT`` unless the caller gives a timeout."""

    __slots__ = ("acquire_timeout",)

    def __init__(self, *args: Any, acquire_timeout: float = ACQUIRE_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10,
                      command_timeout: float = COMMAND_TIMEOUT,
                      acquire_timeout: float = ACQUIRE_TIMEOUT) -> asyncpg.Pool:
    """A pool whose connections have ``search_path = <schema>, public``; a statement fails after
    ``command_timeout`` seconds, a wait for a connection after ``acquire_timeout``."""
    pool = BoundedPool(
        dsn,
        acquire_timeout=acquire_timeout,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,  # asyncpg.create_pool's defaults from here to record_class
        max_inactive_connection_lifetime=300.0,
        connect=None,
        setup=None,
        init=None,
        reset=None,
        loop=None,
        record_class=asyncpg.Record,
        command_timeout=command_timeout,
        connection_class=NoResetConnection,
        server_settings={"search_path": f"{ident(schema)}, public", "application_name": f"cove-{schema}",
                         "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT},
    )
    await pool
    return pool


def _migration_files(migrations_dir: Path) -> list[tuple[int, str, Path]]:
    found: list[tuple[int, str, Path]] = []
    for path in sorted(Path(migrations_dir).glob("*.sql")):
        m = _MIGRATION.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must look like NNNN_name.sql: {path.name}")
        found.append((int(m.group(1)), path.name, path))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {migrations_dir}")
    return found


async def migrate(pool: asyncpg.Pool, schema: str, migrations_dir: Path | str) -> list[str]:
    """Apply the not-yet-applied ``NNNN_*.sql`` files of ``migrations_dir`` into ``schema``, in order.

    Each file runs in its own transaction together with its ``<schema>.schema_migrations`` row. Concurrent
    callers serialise on an advisory lock. A recorded migration whose file changed is an error (forward only:
    write a new file instead). Returns the names applied now.
    """
    schema = ident(schema)
    files = _migration_files(Path(migrations_dir))
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"cove-migrate:{schema}")
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]: r
                for r in await conn.fetch(f"SELECT version, name, checksum FROM {schema}.schema_migrations")
            }
            for version, name, path in files:
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version]["checksum"] != checksum:
                        raise MigrationError(
                            f"{schema}: applied migration {name} was modified; add a new file"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path = {schema}, public")
                    await conn.execute(sql)
                    await conn.execute(
                        f"INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        version,
                        name,
                        checksum,
                    )
                applied_now.append(name)
                log.info("migration_applied", schema=schema, migration=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"cove-migrate:{schema}")
    return applied_now


async def drop_schema(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
    log.warning("schema_dropped", schema=schema)


async def reachable(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    try:
        async with pool.acquire(timeout=timeout) as conn:
            return bool(await conn.fetchval("SELECT 1", timeout=timeout) == 1)
    except Exception:  # noqa: BLE001 - a readiness probe answers, never raises
        return False
