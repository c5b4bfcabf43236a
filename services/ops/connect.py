"""Where the operators' tools find NATS and PostgreSQL, and one clear error when they cannot reach them.

The settings are the services' own (``COVE_NATS_URL``, ``COVE_DATABASE_URL``), so a shell configured for the
stack is configured for ``cove``. A failure to connect is an ``OpsError`` naming the URL and the setting: the
command line prints it on one line and exits 1, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats.errors
from nats.js.api import ConsumerInfo

from services.runtime.bus import Bus

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONNECT_TIMEOUT = 3.0


class OpsError(Exception):
    """A failure the operator can act on, said in one line (the command exits 1)."""


def nothing_to_read(info: ConsumerInfo, buffered: bool) -> bool:
    """Whether a new ordered consumer (``info``: its first answer) has nothing to deliver. Pending alone does not
    say it: the server may have pushed every message before it answered (pending 0 then), and those may still be on
    their way to the callback (``buffered``: some have arrived). Something delivered means: read until the message
    whose metadata says nothing is pending after it."""
    return info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq) and not buffered


@dataclass(frozen=True)
class Settings:
    nats_url: str = DEFAULT_NATS_URL
    database_url: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            nats_url=env.get("COVE_NATS_URL") or DEFAULT_NATS_URL,
            database_url=env.get("COVE_DATABASE_URL") or None,
        )


def redact(url: str) -> str:
    """``url`` without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def connect_bus(settings: Settings) -> Bus:
    """A NATS connection that fails fast: ``OpsError`` naming the URL and COVE_NATS_URL when it cannot be made.

    The servers (comma-separated, a cluster's nodes) are first reached over TCP (nats-py, told not to reconnect,
    retries a refused first connection for ever), then the NATS handshake with those that answered gets
    ``CONNECT_TIMEOUT`` seconds."""
    url = settings.nats_url

    async def quiet(_exc: Exception) -> None:
        return None

    def failure(reason: str) -> OpsError:
        return OpsError(f"cannot reach NATS at {redact(url)} (COVE_NATS_URL): {reason}")

    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster's nodes, as the services take them
    reachable: list[str] = []
    last: Exception | None = None
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), CONNECT_TIMEOUT
            )
            writer.close()
            reachable.append(server)
        except (OSError, TimeoutError, ValueError) as exc:
            last = exc
    if not reachable:
        raise failure(_reason(last) if last else "no server named")
    try:
        nc = await asyncio.wait_for(
            nats.connect(reachable, name="cove-cli", connect_timeout=CONNECT_TIMEOUT, allow_reconnect=False,
                         max_reconnect_attempts=0, error_cb=quiet),
            CONNECT_TIMEOUT * 2,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise failure(_reason(exc) if not isinstance(exc, TimeoutError) else "no NATS handshake") from exc
    return Bus(nc, nc.jetstream())


def require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise OpsError("no PostgreSQL configured: set COVE_DATABASE_URL (the services' own setting)")
    return settings.database_url


async def connect_db(settings: Settings) -> asyncpg.Connection:
    """One PostgreSQL connection: ``OpsError`` naming the URL and COVE_DATABASE_URL when it cannot be opened."""
    url = require_database(settings)
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise OpsError(
            f"cannot reach PostgreSQL at {redact(url)} (COVE_DATABASE_URL): {_reason(exc)}"
        ) from exc


async def check_db(settings: Settings) -> None:
    conn = await connect_db(settings)
    await conn.close()


@contextlib.asynccontextmanager
async def bus_session(settings: Settings) -> AsyncIterator[Bus]:
    bus = await connect_bus(settings)
    try:
        yield bus
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.close(), 5.0)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or not text:
        return type(exc).__name__ if not text else text
    if isinstance(exc, nats.errors.NoServersError):
        return "no server answered"
    return text.splitlines()[0]
