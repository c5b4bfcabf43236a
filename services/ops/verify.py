"""``cove verify SERVICE``: replay the stream into a scratch schema and compare every table with the live store.

The scratch store is caught up to exactly the live checkpoint while the live projection's writes are held
(``Replayer.catch_up_frozen``: an EXCLUSIVE lock on the live inbox, which reads pass); a REPEATABLE READ snapshot
is taken in that moment and the lock released, and the tables are compared in the snapshot, so a service that
keeps running neither shows up as a difference nor waits for the comparison. Nothing is swapped: the scratch
schema is dropped.

Compared: every table of the live schema except the tracking tables (``inbox``, ``checkpoint``,
``schema_migrations``), every column except those the store stamps with the wall clock (a column whose default is
``now()``, e.g. the provisioner's ``updated_at``: a replay cannot reproduce when it ran). Rows are matched by
primary key (every column when a table has none).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.ops.connect import Settings, connect_db
from services.ops.replay import Progress, Replayer, drop_scratch, require_live_store
from services.ops.targets import Target
from services.runtime import db
from services.runtime.bus import Bus

TRACKING_TABLES = frozenset({"inbox", "checkpoint", "schema_migrations"})
WALL_CLOCK_DEFAULTS = ("now()", "CURRENT_TIMESTAMP", "clock_timestamp()", "statement_timestamp()",
                       "transaction_timestamp()")


@dataclass(frozen=True)
class Difference:
    table: str
    key: str
    column: str
    live: str
    replayed: str


@dataclass
class VerifyResult:
    service: str
    checkpoints: dict[str, int]
    tables: int
    rows: int
    differences: list[Difference]
    skipped: list[tuple[int, str]]


async def _tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)
    return [r["tablename"] for r in rows if r["tablename"] not in TRACKING_TABLES]


async def _primary_key(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        f"{schema}.{table}",
    )
    return [r["attname"] for r in rows]


async def _wall_clock_columns(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name, column_default FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2",
        schema, table,
    )
    return [
        r["column_name"] for r in rows
        if r["column_default"] and any(d.lower() in r["column_default"].lower() for d in WALL_CLOCK_DEFAULTS)
    ]


async def _rows(
    conn: asyncpg.Connection, schema: str, table: str, key: list[str], ignore: list[str]
) -> dict[str, dict[str, Any]]:
    records = await conn.fetch(f"SELECT to_jsonb(t) - $1::text[] AS row FROM {schema}.{table} t", ignore)
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        row = json.loads(rec["row"])
        if key:
            ident = ", ".join(f"{k}={_show(row.get(k))}" for k in key)
        else:
            ident = json.dumps(row, sort_keys=True, default=str)
        out[ident] = row
    return out


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


async def compare(conn: asyncpg.Connection, live: str, replayed: str) -> tuple[int, int, list[Difference]]:
    """Every difference between the tables of schema ``live`` and ``replayed``: (tables, rows compared, list)."""
    diffs: list[Difference] = []
    live_tables, replayed_tables = await _tables(conn, live), await _tables(conn, replayed)
    for name in sorted(set(live_tables) ^ set(replayed_tables)):
        where = "live" if name in live_tables else "replayed"
        diffs.append(Difference(name, "", "(table)", "present" if where == "live" else "missing",
                                "present" if where == "replayed" else "missing"))
    rows_compared = 0
    common = [t for t in live_tables if t in set(replayed_tables)]
    for table in common:
        key = await _primary_key(conn, live, table)
        ignore = await _wall_clock_columns(conn, live, table)
        a = await _rows(conn, live, table, key, ignore)
        b = await _rows(conn, replayed, table, key, ignore)
        rows_compared += max(len(a), len(b))
        for ident in sorted(a.keys() | b.keys()):
            left, right = a.get(ident), b.get(ident)
            if left is None or right is None:
                diffs.append(Difference(table, ident, "(row)", "missing" if left is None else "present",
                                        "missing" if right is None else "present"))
                continue
            for column in sorted(left.keys() | right.keys()):
                if left.get(column) != right.get(column):
                    diffs.append(Difference(table, ident, column, _show(left.get(column)),
                                            _show(right.get(column))))
    return len(common), rows_compared, diffs


async def verify(bus: Bus, settings: Settings, target: Target, *, progress: Progress | None = None) -> VerifyResult:
    await require_live_store(settings, target)
    scratch = db.ident(f"{target.schema}_verify")
    replayer = Replayer(bus, settings, target, scratch=scratch, progress=progress)
    try:
        await replayer.prepare()
        await replayer.run()  # most of the way, without holding anything
        conn, snap = await connect_db(settings), await connect_db(settings)
        try:
            tx = conn.transaction()
            await tx.start()
            try:
                checkpoints = await replayer.catch_up_frozen(conn)
                # A snapshot of both stores at this instant; then the live projection may go on.
                await snap.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                await snap.fetchval("SELECT 1")
            finally:
                await tx.rollback()  # releases the live projection
            try:
                tables, rows, diffs = await compare(snap, target.schema, scratch)
            finally:
                await snap.execute("ROLLBACK")
        finally:
            await conn.close()
            await snap.close()
        skipped = [s for p in replayer.projections for s in p.skipped]
    finally:
        if replayer._guard is not None:  # the scratch schema is ours to drop (another verify's is not)
            with contextlib.suppress(Exception):
                await drop_scratch(settings, scratch)
        await replayer.close()
    return VerifyResult(target.service, checkpoints, tables, rows, diffs, skipped)
