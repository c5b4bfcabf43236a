"""The operators' commands against a NATS server and a PostgreSQL database of each test's own.

``cove(*argv)`` runs the command line in process (services/ops/cli.py's ``main``, in a thread: it runs its own
event loop) with COVE_NATS_URL / COVE_DATABASE_URL pointing at them, and returns (exit code, stdout, stderr).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
import structlog

from deploy.local.nats import NatsServer
from deploy.local.postgres import drop_database, fresh_database
from services.ops import cli
from services.runtime.bus import Bus

pytestmark = pytest.mark.integration


@dataclass
class Ops:
    nats_url: str
    database_url: str
    bus: Bus

    async def cove(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        # the command configures logging for a terminal (structlog at ERROR, cliff's root handlers): a process's
        # business, so it is put back afterwards for the tests that run next in this process and read log lines
        saved, root = structlog.get_config(), logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        try:
            code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
        finally:
            structlog.configure(**saved)
            root.setLevel(level)
            root.handlers[:] = handlers
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def private_nats(make_nats_server: Callable[..., NatsServer]) -> Iterator[NatsServer]:
    yield make_nats_server()


@pytest.fixture
async def ops(
    private_nats: NatsServer, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Ops]:
    url = await fresh_database(pg_admin_url, prefix="cove_ops")
    monkeypatch.setenv("COVE_NATS_URL", private_nats.url)
    monkeypatch.setenv("COVE_DATABASE_URL", url)
    monkeypatch.setenv("COVE_CERTS_MASTER_KEY", base64.urlsafe_b64encode(b"k" * 32).decode())
    bus = await Bus.connect(private_nats.url, name="tests-ops")
    await bus.ensure_streams()
    try:
        yield Ops(private_nats.url, url, bus)
    finally:
        await bus.close()
        await drop_database(pg_admin_url, url)

