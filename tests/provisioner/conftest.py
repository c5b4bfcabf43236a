"""The provisioner's tests get a NATS of their own: a fresh provisioner consumer would otherwise replay every
cluster other test modules left in the session's stream (with real trusts on the session devcloud) and build them.
They run the real certs service beside it (``certs``): it makes each admitted cluster's CA and answers the
provisioner's request for the CA key a master's user data carries (docs/adr/0006)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from deploy.local.nats import NatsServer
from services.certs.service import build_service as build_certs
from services.runtime.service import Service, ServiceConfig
from tests.conftest import drop_database, fresh_database


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("provisioner-nats"), server_name="cove-provisioner-test")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def certs(nats_url: str, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    db_url = await fresh_database(pg_admin_url)
    svc = build_certs(ServiceConfig(
        service="certs", nats_url=nats_url, database_url=db_url, http_port=0, heartbeat_interval=5.0,
        extra={"COVE_STATE_DIR": str(tmp_path_factory.mktemp("provisioner-certs"))},
    ))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        await drop_database(pg_admin_url, db_url)
