"""Wiring of the scheduler: one projection over cluster events that admits or rejects each create request."""

from __future__ import annotations

from pathlib import Path

from services.runtime.service import Service, ServiceConfig
from services.scheduler import admission
from services.scheduler.cloudquota import CloudQuota, CloudQuotaSettings
from services.scheduler.handlers import FILTER_SUBJECTS, Handlers

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(config: ServiceConfig, *, schema: str = "scheduler", durable: str = "scheduler") -> Service:
    """``COVE_DEFAULT_CLUSTER_QUOTA`` (default 20) and ``COVE_DEFAULT_{NODE,VCPU,RAM,VOLUMEGB}_QUOTA`` (default -1,
    unlimited) set the limits of projects without a quota row; ``COVE_MAX_BUILDS`` and ``COVE_MAX_BUILDS_PER_CLOUD``
    (``name=N,...``) bound the clusters built at once (unset: no bound); ``COVE_CLOUD_NAME`` (default ``default``)
    names the cloud new clusters are built in; with ``COVE_AUTH_URL`` (or ``COVE_CLOUD_AUTH_URL``) and the service
    user's ``COVE_SERVICE_USER`` / ``_PASSWORD``, creates, resizes that grow a nodegroup and new nodegroups are
    checked against the project's cloud quota through the cluster's trust (``COVE_CLOUD_QUOTA_TTL`` seconds of
    caching, default 10; ``COVE_CLOUD_QUOTA_CHECK=off`` disables it) (docs/adr/0008)."""
    max_builds, per_cloud = admission.build_limits_from_env(config.extra)
    cloud_settings = CloudQuotaSettings.from_env(config.extra)
    handlers = Handlers(
        admission.default_quota_from_env(config.extra),
        admission.limits_from_env(config.extra),
        max_builds=max_builds,
        max_builds_per_cloud=per_cloud,
        cloud=config.extra.get("COVE_CLOUD_NAME", "").strip() or "default",
        cloud_quota=CloudQuota(cloud_settings) if cloud_settings is not None else None,
    )
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    svc.add_projection(durable, handlers.handle, FILTER_SUBJECTS, batch_handler=handlers.handle_batch)
    if handlers.cloud_quota is not None:
        cloud_quota = handlers.cloud_quota

        async def close(_: Service) -> None:
            await cloud_quota.close()

        svc.on_cleanup(close)
    return svc
