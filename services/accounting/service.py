"""Wiring of the accounting service: the resource-interval projection, the usage RPC (queue group accounting)
and the usage counters on /metrics."""

from __future__ import annotations

from pathlib import Path

from proto import subjects
from services.accounting.handlers import FILTER_SUBJECTS, UsageRpc, handle
from services.accounting.metrics import metrics_task
from services.runtime.service import Service, ServiceConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(
    config: ServiceConfig, *, schema: str = "accounting", durable: str = "accounting"
) -> Service:
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    svc.add_projection(durable, handle, FILTER_SUBJECTS)
    svc.add_rpc(subjects.ACCOUNTING_USAGE, UsageRpc(lambda: svc.pool), queue="accounting")
    svc.add_task(metrics_task(
        float(config.extra.get("COVE_ACCOUNTING_METRICS_INTERVAL", "15")),
        int(config.extra.get("COVE_ACCOUNTING_METRICS_MAX_PROJECTS", "500")),
    ))
    return svc
