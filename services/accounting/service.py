"""Wiring of the accounting service: the node-interval projection and the usage RPC (queue group accounting)."""

from __future__ import annotations

from pathlib import Path

from proto import subjects
from services.accounting.handlers import FILTER_SUBJECTS, UsageRpc, handle
from services.runtime.service import Service, ServiceConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(
    config: ServiceConfig, *, schema: str = "accounting", durable: str = "accounting"
) -> Service:
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    svc.add_projection(durable, handle, FILTER_SUBJECTS)
    svc.add_rpc(subjects.ACCOUNTING_USAGE, UsageRpc(lambda: svc.pool), queue="accounting")
    return svc
