"""The whole local stack for a test module: `make run`'s LocalStack on a NATS of the module's own and a fresh
database, with the module's extra environment for the services, torn down with its database."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from deploy.local.stack import LocalStack
from tests.conftest import drop_database, fresh_database


@contextlib.asynccontextmanager
async def running_stack(nats_url: str | None, pg_admin_url: str, state_dir: Path, *,
                        env: Mapping[str, str] | None = None, **options: Any) -> AsyncIterator[LocalStack]:
    """A started LocalStack (``options``: its keyword arguments, e.g. ``time_factor``) on ``nats_url``, or on NATS
    servers of its own when None; ``env`` is set only while the services start (they take their environment then),
    and the process's own is restored at once."""
    db_url = await fresh_database(pg_admin_url)
    wanted = {"COVE_DATABASE_URL": db_url, **(env or {})}
    if nats_url is not None:
        wanted["COVE_NATS_URL"] = nats_url
    saved = {k: os.environ.get(k) for k in (*wanted, "COVE_NATS_URL")}
    os.environ.update(wanted)
    if nats_url is None:
        os.environ.pop("COVE_NATS_URL", None)
    local = LocalStack(state_dir, **{"timeout": 90.0, **options})
    try:
        await asyncio.to_thread(local.start)
    except BaseException:
        await asyncio.to_thread(local.stop)
        await drop_database(pg_admin_url, db_url)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield local
    finally:
        await asyncio.to_thread(local.stop)
        await drop_database(pg_admin_url, db_url)


def module_stack(name: str, env: Mapping[str, str] | None = None, **options: Any) -> Any:
    """A module-scoped ``stack`` fixture: the whole stack on NATS servers of its own (``running_stack`` with no
    URL), ``env`` and ``options`` as there; in a test module, ``stack = module_stack("health", ENV, ...)``."""

    @pytest.fixture(scope="module")
    async def stack(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
        async with running_stack(None, pg_admin_url, tmp_path_factory.mktemp(f"{name}-stack"), env=env,
                                 **options) as local:
            yield local

    return stack
