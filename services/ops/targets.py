"""What a service's store is made of, for replay and verify: its schema, migrations and projections.

Read from the service's own wiring (``build_service``), never re-declared here, so a projection added to a
service is replayed without touching this module. Building a service opens nothing (no connection, no thread):
connections are made in ``Service.start``, which the tools never call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.ops.connect import OpsError
from services.runtime.projection import BatchProjectionHandler, ProjectionHandler
from services.runtime.service import Service, ServiceConfig


@dataclass(frozen=True)
class ProjectionSpec:
    name: str
    handler: ProjectionHandler
    filter_subjects: list[str]
    batch_handler: BatchProjectionHandler | None


@dataclass(frozen=True)
class Target:
    service: str
    schema: str
    migrations_dir: Path
    projections: list[ProjectionSpec]


def _api(config: ServiceConfig) -> Service:
    from services.api.service import build_service

    return build_service(config)[0]


def _scheduler(config: ServiceConfig) -> Service:
    from services.scheduler.service import build_service

    return build_service(config)


def _certs(config: ServiceConfig) -> Service:
    from services.certs.service import build_service

    return build_service(config)


def _provisioner(config: ServiceConfig) -> Service:
    from services.provisioner.service import build_service

    return build_service(config)


def _accounting(config: ServiceConfig) -> Service:
    from services.accounting.service import build_service

    return build_service(config)


BUILDERS: dict[str, Callable[[ServiceConfig], Service]] = {
    "api": _api,
    "scheduler": _scheduler,
    "certs": _certs,
    "provisioner": _provisioner,
    "accounting": _accounting,
}
SERVICES = tuple(BUILDERS)


def target(service: str, environ: dict[str, str] | None = None) -> Target:
    """The store of ``service`` as its running process would build it from the same ``COVE_*`` environment."""
    build = BUILDERS.get(service)
    if build is None:
        raise OpsError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    config = ServiceConfig.from_env(service, dict(os.environ if environ is None else environ))
    try:
        svc = build(config)
    except ValueError as exc:  # e.g. a malformed COVE_CERTS_MASTER_KEY
        raise OpsError(f"cannot configure {service}: {exc}") from exc
    if svc.schema is None or svc.migrations_dir is None:
        raise OpsError(f"{service} owns no store to replay")
    specs = [
        ProjectionSpec(name=name, handler=handler, filter_subjects=list(filters), batch_handler=batch)
        # Service keeps its registrations until start(); this is the one place outside it that reads them.
        for name, handler, filters, _settings, batch, _on_applied in svc._projection_specs
    ]
    return Target(service=service, schema=svc.schema, migrations_dir=svc.migrations_dir, projections=specs)
