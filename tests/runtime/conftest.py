"""Runtime test fixtures on top of tests/conftest.py (real nats-server and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.runtime.bus import Bus


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="test")
    await b.ensure_streams()
    yield b
    await b.close()
