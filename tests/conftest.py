"""Shared fixtures: real nats-server (JetStream), real PostgreSQL, the devcloud emulator, and waiting helpers.

Fixtures (async tests, pytest-asyncio auto mode, one session event loop):
    nats_server      NatsServer shared by the session, on a free port in a tmp dir. A test may stop/kill/restart
                     it; if a test leaves it down it is started again (same port, same data) before the next one.
                     Streams persist across tests: use unique stream names or delete what you create.
    nats_url         its URL, "nats://127.0.0.1:<port>".
    make_nats_server factory: `make_nats_server()` -> a fresh, started NatsServer of the test's own, stopped after.
    pg_admin_url     URL of a database on the session's PostgreSQL server with rights to CREATE DATABASE.
    database_url     URL of a FRESH database `cove_test_<random>` for the session, dropped at the end.
    devcloud         the OpenStack emulator as a subprocess: `.url`, `.clouds_yaml`, `.log_file`; sets
                     OS_CLIENT_CONFIG_FILE for the session.

Helpers (import them: `from tests.conftest import wait_for, free_port, fresh_database`):
    free_port() -> int
    await wait_for(predicate, timeout=10.0, interval=0.05, message="...") -> the predicate's truthy value
    await fresh_database(admin_url) -> url    (drop with `await drop_database(admin_url, url)`)

Where PostgreSQL comes from: COVE_TEST_DATABASE_URL if set (an admin URL), else the machine's server at
127.0.0.1:5432 if it accepts user postgres without a password, else an embedded PostgreSQL (pgserver's binaries)
in a temp dir. COVE_TEST_DATABASE_URL=embedded forces the embedded server (what a fresh machine gets).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import nats.errors
import pytest
import pytest_asyncio

from deploy.devcloud.process import Devcloud, start_devcloud, stop_process
from deploy.local.nats import NatsServer
from deploy.local.ports import free_port, tcp_reachable
from deploy.local.postgres import (
    EmbeddedPostgres,
    drop_database,
    fresh_database,
    server_answers,
)
from proto.envelope import Envelope, decode
from services.runtime.bus import Bus

__all__ = ["Devcloud", "drop_database", "free_port", "fresh_database", "wait_for"]

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("COVE_LOCAL_ANY_PORT", "1")  # stacks of parallel workers never race for make run's ports
MACHINE_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------------------------


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ..., message: str | None = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T], timeout: float = ..., interval: float = ..., message: str | None = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that value.

    Raises TimeoutError naming `message` (or the predicate) when `timeout` seconds pass first. Exceptions of the
    types in `ignore` count as "not yet" (e.g. `ignore=(OSError,)` while a server comes up); others propagate.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except ignore as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"condition not met within {timeout}s: {what}{detail}")
        await asyncio.sleep(interval)


# -- NATS ------------------------------------------------------------------------------------------------------


async def stream_events(bus: Bus, subject_filter: str) -> list[Envelope]:
    """Every event on ``subject_filter`` in the stream, in stream order (read until 0.3 s pass with nothing new)."""
    sub = await bus.js.subscribe(subject_filter, ordered_consumer=True)
    found: list[Envelope] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except (nats.errors.TimeoutError, TimeoutError):
                return found
            found.append(decode(msg.data))
    finally:
        await sub.unsubscribe()



@pytest.fixture(scope="session")
def _session_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"), server_name="cove-test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_server(_session_nats: NatsServer) -> Iterator[NatsServer]:
    """The session's NatsServer; restarted after a test that left it stopped or killed."""
    if not _session_nats.is_running():
        _session_nats.start()
    yield _session_nats
    if not _session_nats.is_running():
        _session_nats.start()


@pytest.fixture(scope="session")
def nats_url(_session_nats: NatsServer) -> str:
    return _session_nats.url


@pytest.fixture
def make_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NatsServer]]:
    """Factory for private servers: `make_nats_server(port=None)` returns a started NatsServer."""
    servers: list[NatsServer] = []

    def make(**kwargs: Any) -> NatsServer:
        server = NatsServer(tmp_path_factory.mktemp("nats-private"), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# -- PostgreSQL ------------------------------------------------------------------------------------------------


@pytest.fixture
def pg_scratch_dir() -> Iterator[Path]:
    """A temp dir for an embedded PostgreSQL's data, OUTSIDE pytest's basetemp.

    As root, PostgreSQL runs as an unprivileged user that must traverse the parent folders; pytest resets
    /tmp/pytest-of-<user> to mode 0700 whenever any pytest session starts (another engineer's run, say), which
    would cut the server off from its data mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="cove-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)



@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_admin_url() -> AsyncIterator[str]:
    configured = os.environ.get("COVE_TEST_DATABASE_URL")
    if configured and configured != "embedded":
        yield configured
        return
    if not configured and tcp_reachable("127.0.0.1", 5432) and await server_answers(MACHINE_PG_URL):
        yield MACHINE_PG_URL
        return
    scratch = Path(tempfile.mkdtemp(prefix="cove-pg-"))  # not under basetemp: see pg_scratch_dir
    server = EmbeddedPostgres(scratch / "data", durable=False)
    await asyncio.to_thread(server.start)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for this test session, dropped at the end."""
    url = await fresh_database(pg_admin_url)
    try:
        yield url
    finally:
        await drop_database(pg_admin_url, url)


# -- devcloud --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def devcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devcloud]:
    if not (REPO_ROOT / "deploy" / "devcloud" / "__main__.py").exists():
        pytest.skip("devcloud not written yet: deploy/devcloud/__main__.py does not exist")
    cloud = start_devcloud(tmp_path_factory.mktemp("devcloud"))
    previous = os.environ.get("OS_CLIENT_CONFIG_FILE")
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
    try:
        yield cloud
    finally:
        if previous is None:
            os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
        else:
            os.environ["OS_CLIENT_CONFIG_FILE"] = previous
        stop_process(cloud.process)
