"""API test fixtures: the API service in-process against real NATS, PostgreSQL and the devcloud."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from services.api.service import ApiServer, build_service
from services.runtime.bus import Bus
from services.runtime.service import Service, ServiceConfig
from tests.conftest import Devcloud
from tests.scheduler.test_admission_run import Schemas


@dataclass
class RunningApi:
    service: Service
    server: ApiServer
    url: str
    devcloud: Devcloud
    bus: Bus


async def user_token(devcloud: Devcloud, user: str, password: str, project: str) -> str:
    body: dict[str, Any] = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }}
    async with aiohttp.ClientSession() as s, s.post(f"{devcloud.url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


@pytest.fixture(scope="session")
async def api(nats_url: str, database_url: str, devcloud: Devcloud) -> AsyncIterator[RunningApi]:
    config = ServiceConfig(
        service="api",
        nats_url=nats_url,
        database_url=database_url,
        http_port=0,
        heartbeat_interval=5.0,
        extra={
            "COVE_API_PORT": "0",
            "COVE_AUTH_URL": f"{devcloud.url}/identity",
            "COVE_TOKEN_CACHE_TTL": "1",
            "COVE_API_ADMISSION_TIMEOUT": "1.0",
        },
    )
    svc, server = build_service(config)
    await svc.start()
    assert svc.bus is not None
    try:
        yield RunningApi(svc, server, server.url, devcloud, svc.bus)
    finally:
        await svc.stop()


@pytest.fixture
async def schemas(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Schemas]:
    """Fresh API schemas for a test that applies streams to the read model itself (named after its module), dropped
    after it."""
    made = Schemas(database_url, f"api_{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}")
    yield made
    await made.close()
