"""The provisioner's tests get a NATS of their own: a fresh provisioner consumer would otherwise replay every
cluster other test modules left in the session's stream (with real trusts on the session devcloud) and build them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local.nats import NatsServer


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("provisioner-nats"), server_name="cove-provisioner-test")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
