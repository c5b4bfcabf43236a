"""The operators' commands against a NATS server and a PostgreSQL database of each test's own.

``cove(*argv)`` runs the command line in process (services/ops/cli.py's ``main``, in a thread: it runs its own
event loop) with COVE_NATS_URL / COVE_DATABASE_URL pointing at them, and returns (exit code, stdout, stderr).
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

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
        code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
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

