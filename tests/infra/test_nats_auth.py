"""NATS users per service (deploy/local/natsauth.py) on a real nats-server: no credentials, no connection; a service
publishing on another's subject or listening on another's RPC is refused; a real service runs with its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from deploy.local import natsauth
from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import decode
from proto.events import ServiceHeartbeat
from proto.requests import GetUsage, UsageReport
from services.runtime import rpc
from services.runtime.bus import Bus
from services.runtime.service import ServiceConfig
from tests.conftest import drop_database, fresh_database, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> dict[str, natsauth.Credentials]:
    return natsauth.load_or_create(tmp_path_factory.mktemp("nats-users") / "users.json")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, users: dict[str, natsauth.Credentials]) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-auth"), server_name="cove-auth",
                        authorization=natsauth.render_authorization(users))
    server.start()
    yield server
    server.stop()


class Client:
    """A connection as one user, keeping the errors the server sent it (permission violations arrive async)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = NATS()

    async def connect(self, url: str, cred: natsauth.Credentials | None, service: str | None = None) -> None:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        kwargs: dict[str, object] = {"error_cb": on_error, "allow_reconnect": False, "connect_timeout": 2}
        if cred is not None:
            kwargs.update(user=cred.user, password=cred.password)
        if service is not None:
            kwargs["inbox_prefix"] = natsauth.inbox_prefix(service)
        await self.nc.connect(url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def ops(secured: NatsServer, users: dict[str, natsauth.Credentials]) -> AsyncIterator[Bus]:
    bus = await Bus.connect(users[natsauth.OPS_USER].url(secured.url), name="test-ops")
    await bus.ensure_streams()
    yield bus
    await bus.close()


async def test_a_connection_without_credentials_is_refused(secured: NatsServer,
                                                           users: dict[str, natsauth.Credentials]) -> None:
    client = Client()
    with pytest.raises((nats.errors.Error, OSError)):
        await client.connect(secured.url, None)
    assert any("authorization violation" in e.lower() for e in client.errors), client.errors
    wrong = Client()
    with pytest.raises((nats.errors.Error, OSError)):
        await wrong.connect(secured.url, natsauth.Credentials("scheduler", "not-its-password"))
    assert any("authorization violation" in e.lower() for e in wrong.errors), wrong.errors
    right = Client()
    await right.connect(secured.url, users["scheduler"], "scheduler")
    assert right.nc.is_connected
    await right.nc.close()


async def test_a_service_without_credentials_does_not_start(secured: NatsServer) -> None:
    """The runtime's own connection (reconnecting for ever) never gets in: the service cannot start."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Bus.connect(secured.url, name="no-credentials", connect_timeout=1), timeout=4)


async def test_publishing_on_another_services_subject_is_refused(
    secured: NatsServer, users: dict[str, natsauth.Credentials], ops: Bus
) -> None:
    client = Client()
    await client.connect(secured.url, users["scheduler"], "scheduler")
    js = client.nc.jetstream()
    try:
        stolen = subjects.cluster_events("api", "auth-test-forged")
        with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no stream ever sees it to ack
            await js.publish(stolen, b"{}", timeout=1.0)
        await wait_for(lambda: any("permissions violation for publish" in e.lower() and stolen in e.lower()
                                   for e in client.errors), timeout=5, message="a publish permission violation")
        with pytest.raises(nats.js.errors.NotFoundError):
            await ops.js.get_last_msg(subjects.EVENTS_STREAM, stolen)
        # its own subject is fine, through JetStream (the API, acks and inbox it needs are allowed)
        ack = await js.publish(subjects.cluster_events("scheduler", "auth-test-own"), b"{}", timeout=5.0)
        assert ack.stream == subjects.EVENTS_STREAM
    finally:
        await client.nc.close()


async def test_listening_on_another_services_rpc_or_inbox_is_refused(
    secured: NatsServer, users: dict[str, natsauth.Credentials]
) -> None:
    """The certs service's ca_key answers the provisioner only: the API may neither answer it (subscribe) nor ask
    it (publish), nor read the provisioner's replies."""
    client = Client()
    await client.connect(secured.url, users["api"], "api")
    try:
        await client.nc.subscribe(subjects.CERTS_CA_KEY)
        await client.nc.subscribe(f"{natsauth.inbox_prefix('provisioner')}.>")
        await client.nc.publish(subjects.CERTS_CA_KEY, b"{}")
        await client.nc.flush()
        for what in (f"subscription to \"{subjects.CERTS_CA_KEY}\"",
                     f"subscription to \"{natsauth.inbox_prefix('provisioner')}.>\"",
                     f"publish to \"{subjects.CERTS_CA_KEY}\""):
            await wait_for(lambda what=what: any(what.lower() in e.lower() for e in client.errors), timeout=5,
                           message=f"permission violation for {what}: {client.errors}")
    finally:
        await client.nc.close()


async def test_a_service_runs_on_its_own_credentials(
    secured: NatsServer, users: dict[str, natsauth.Credentials], ops: Bus, pg_admin_url: str
) -> None:
    """The accounting service, started by the runtime as its NATS user: streams, its projection's consumer, its
    heartbeat and its RPC all work within its permissions, and the API's user gets its answer."""
    from services.accounting.service import build_service

    db_url = await fresh_database(pg_admin_url)
    cred = users["accounting"]
    config = ServiceConfig.from_env("accounting", {
        "COVE_NATS_URL": secured.url, "COVE_DATABASE_URL": db_url, "COVE_HEARTBEAT_INTERVAL": "0.5",
        **cred.env(),
    })
    svc = build_service(config)
    api = Client()
    try:
        await svc.start()
        await api.connect(secured.url, users["api"], "api")
        reply = await rpc.request(api.nc, subjects.ACCOUNTING_USAGE, GetUsage(project_id="p-auth"), timeout=5)
        assert isinstance(reply, UsageReport)

        async def heartbeat() -> bool:
            msg = await ops.js.get_last_msg(subjects.HEARTBEATS_STREAM, subjects.heartbeat_subject("accounting"))
            return isinstance(decode(msg.data).payload, ServiceHeartbeat)

        await wait_for(heartbeat, timeout=10, ignore=(nats.js.errors.NotFoundError,), message="a heartbeat")
        assert svc.bus is not None and svc.bus.connected
    finally:
        await api.nc.close()
        await svc.stop()
        await drop_database(pg_admin_url, db_url)


def test_permissions_name_only_the_services_own_subjects() -> None:
    perms = natsauth.permissions("scheduler")
    published = perms["publish"]["allow"]
    assert "cove.evt.scheduler.>" in published and "cove.heartbeat.scheduler" in published
    assert not any(p.startswith(("cove.evt.api", "cove.evt.>", "cove.rpc.certs", ">")) for p in published)
    assert perms["subscribe"]["allow"][:2] == ["_INBOX_scheduler.>", "cove.rpc.scheduler.>"]
    assert "cove.scheduler.>" in published and "cove.scheduler.>" in perms["subscribe"]["allow"]
    for name in subjects.PROVISIONER_KICK, subjects.PROVISIONER_WATCH_CHANGES, subjects.PROVISIONER_WATCH_VIEWS:
        assert name.startswith("cove.provisioner.")  # the provisioner's copies talk there, within its namespace
    assert subjects.CERTS_CA_KEY in natsauth.permissions("provisioner")["publish"]["allow"]
    assert subjects.CERTS_CA_KEY not in natsauth.permissions("api")["publish"]["allow"]


def test_passwords_are_kept_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    first = natsauth.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert natsauth.load_or_create(path) == first
    assert len({c.password for c in first.values()}) == len(first)
    url = first["ops"].url("nats://127.0.0.1:1,nats://127.0.0.1:2")
    assert url.count(f"ops:{first['ops'].password}@") == 2


def test_the_shipped_users_file_is_generated_and_valid(tmp_path: Path) -> None:
    """deploy/nats/cove-users.conf is what natsauth renders (no drift from the permissions above), and nats-server
    accepts it with each password in its environment, and refuses it without one."""
    import subprocess

    from deploy.local.nats import find_nats_server
    from tests.conftest import REPO_ROOT

    shipped = REPO_ROOT / "deploy/nats/cove-users.conf"
    assert shipped.read_text() == natsauth.render_shipped(), "regenerate: python -m deploy.local.natsauth"
    conf = tmp_path / "server.conf"
    conf.write_text(f"listen: 127.0.0.1:4999\ninclude {shipped.name}\n")
    (tmp_path / shipped.name).write_text(shipped.read_text())
    env = {natsauth.password_variable(u): f"pw-{u}" for u in (*natsauth.SERVICE_NAMES, natsauth.OPS_USER)}
    ok = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], env=env, capture_output=True, text=True,
                        timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], env={}, capture_output=True, text=True,
                             timeout=30, check=False)
    assert missing.returncode != 0 and "COVE_NATS_API_PASSWORD" in missing.stderr
