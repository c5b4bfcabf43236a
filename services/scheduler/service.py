"""Wiring of the scheduler: one projection over cluster events that admits or rejects each create request."""

from __future__ import annotations

from pathlib import Path

from services.runtime.service import Service, ServiceConfig
from services.scheduler import admission
from services.scheduler.handlers import FILTER_SUBJECTS, Handlers

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(config: ServiceConfig, *, schema: str = "scheduler", durable: str = "scheduler") -> Service:
    """``COVE_DEFAULT_CLUSTER_QUOTA`` (default 20) sets the limit of projects without a quota row."""
    handlers = Handlers(admission.default_quota_from_env(config.extra))
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    svc.add_projection(durable, handlers.handle, FILTER_SUBJECTS, batch_handler=handlers.handle_batch)
    return svc
