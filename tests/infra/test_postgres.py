"""PostgreSQL for tests and `cove run`: the fresh-database fixture, and the embedded server (works as root)."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from deploy.local.postgres import (
    EmbeddedPostgres,
    database_name,
    drop_database,
    fresh_database,
    with_database,
)
from deploy.local.postgres import (
    database_url as resolve_database_url,
)

pytestmark = pytest.mark.integration


def test_with_database_rewrites_only_the_path() -> None:
    assert with_database("postgresql://u@127.0.0.1:5/postgres", "x") == "postgresql://u@127.0.0.1:5/x"
    assert with_database("postgresql://u@/postgres?host=/s", "x") == "postgresql://u@/x?host=/s"
    assert database_name("postgresql://u@h:1/abc?sslmode=disable") == "abc"


async def test_database_fixture_is_fresh_and_usable(database_url: str) -> None:
    assert database_name(database_url).startswith("cove_test_")
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE infra_probe (id int PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO infra_probe VALUES (1, 'hello')")
        assert await conn.fetchval("SELECT note FROM infra_probe WHERE id = 1") == "hello"
    finally:
        await conn.close()


async def test_fresh_database_then_drop(pg_admin_url: str) -> None:
    url = await fresh_database(pg_admin_url, prefix="cove_extra")
    name = database_name(url)
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT current_database()") == name
    # drop must work even with a connection still open (WITH FORCE)
    await drop_database(pg_admin_url, url)
    await conn.close()
    admin = await asyncpg.connect(pg_admin_url)
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 0
    finally:
        await admin.close()


async def test_embedded_postgres_starts_answers_and_restarts(pg_scratch_dir: Path) -> None:
    # pg_scratch_dir is 0700 root-owned when running as root: the launcher must cope without manual steps.
    server = EmbeddedPostgres(pg_scratch_dir / "pg", durable=False)
    server.start()
    try:
        if os.geteuid() == 0:
            assert server.os_user is not None and server.os_user.pw_uid != 0
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 40 + 2") == 42
            version = await conn.fetchval("SHOW server_version")
            assert version.startswith("16"), version  # pgserver's bundled build, not the machine's server
            await conn.execute("CREATE TABLE kept (v text)")
            await conn.execute("INSERT INTO kept VALUES ('survives restart')")
        finally:
            await conn.close()
        server.stop()
        assert not server.is_running()
        server.start()
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "survives restart"
        finally:
            await conn.close()
        # Processes on this machine use the Unix socket (cheaper per round trip than TCP loopback).
        if server.socket_dir is not None:
            assert "host=" in server.local_url and str(server.socket_dir) in server.local_url
            conn = await asyncpg.connect(server.local_url)
            try:
                assert await conn.fetchval("SELECT v FROM kept") == "survives restart"
                assert await conn.fetchval("SELECT inet_server_addr()") is None  # not over TCP
            finally:
                await conn.close()
    finally:
        server.stop()


async def test_database_url_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVE_DATABASE_URL", "postgresql://someone@127.0.0.1:1/x")
    url, server = resolve_database_url(tmp_path / "never-created")
    assert url == "postgresql://someone@127.0.0.1:1/x" and server is None
    assert not (tmp_path / "never-created").exists()


async def test_database_url_starts_embedded_with_cove_database(
    monkeypatch: pytest.MonkeyPatch, pg_scratch_dir: Path
) -> None:
    monkeypatch.delenv("COVE_DATABASE_URL", raising=False)
    url, server = resolve_database_url(pg_scratch_dir / "pg", durable=False)
    assert server is not None
    try:
        assert database_name(url) == "cove"
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "cove"
        finally:
            await conn.close()
    finally:
        server.stop()
