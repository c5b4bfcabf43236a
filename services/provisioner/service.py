"""Wiring of the provisioner: one projection (api + certs cluster events and its own) feeding the reconciler.

Environment (besides the runtime's COVE_NATS_URL, COVE_DATABASE_URL, COVE_HTTP_PORT):
    COVE_AUTH_URL                    identity root of the cloud (COVE_CLOUD_AUTH_URL also read)
    COVE_SERVICE_USER / _PASSWORD    the Cove service user (default cove / cove-pass), domain Default
    COVE_SERVICE_PROJECT             its own project (default service): trusts are deleted with that token
    COVE_PROVISIONER_CLOUD_THREADS   openstacksdk thread pool size (default 8)
    COVE_PROVISIONER_MAX_ACTIVE      clusters reconciled at the same time (default 16)
    COVE_PROVISIONER_POLL_INTERVAL   seconds between server list calls while building/deleting (default 0.25)
    COVE_PROVISIONER_DURABLE         the projection's durable consumer name (default provisioner)
    COVE_BOOTSTRAP_SECRET            secret the kubeadm bootstrap tokens are derived from
    COVE_PROVISIONER_TRUST_GRACE     seconds a rotated-away trust is kept before it is deleted (default 5)
    COVE_PROVISIONER_TRUST_HOLD      seconds an unused trust is kept after a cluster was last created with it
                                     (default: COVE_TRUST_REUSE_SECONDS + 60, or 0 when trusts are not shared)
"""

from __future__ import annotations

from pathlib import Path

import structlog

from proto import subjects, trusts
from proto.envelope import Envelope
from services.provisioner import handlers
from services.provisioner.cloud import Cloud, CloudSettings
from services.provisioner.reconciler import (
    AppliedTracker,
    ProvisionerProjection,
    Reconciler,
    ReconcilerSettings,
)
from services.provisioner.trusts import TrustReaper, TrustReaperSettings
from services.runtime.service import Service, ServiceConfig

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "provisioner"
FILTER_SUBJECTS = [
    subjects.producer_events("api", "cluster"),
    subjects.producer_events("certs", "cluster"),
    subjects.producer_events("provisioner", "cluster"),
]


def reconciler_settings(extra: dict[str, str]) -> ReconcilerSettings:
    secret = extra.get("COVE_BOOTSTRAP_SECRET")
    if not secret:
        log.warning("bootstrap_secret_default", hint="set COVE_BOOTSTRAP_SECRET in production")
    return ReconcilerSettings(
        max_active=int(extra.get("COVE_PROVISIONER_MAX_ACTIVE", "16")),
        poll_interval=float(extra.get("COVE_PROVISIONER_POLL_INTERVAL", "0.25")),
        bootstrap_secret=(secret or "cove-dev-bootstrap-secret").encode(),
    )


def build_service(config: ServiceConfig, *, durable: str | None = None) -> Service:
    """``COVE_PROVISIONER_DURABLE`` names the projection's durable consumer (default ``provisioner``)."""
    durable = durable or config.extra.get("COVE_PROVISIONER_DURABLE", "provisioner")
    svc = Service(config, schema=SCHEMA, migrations_dir=MIGRATIONS)
    cloud = Cloud(CloudSettings.from_env(config.extra))
    settings = reconciler_settings(config.extra)
    tracker = AppliedTracker()
    state: dict[str, Reconciler] = {}
    reapers: list[TrustReaper] = []

    async def startup(s: Service) -> None:
        # The runtime's add_projection builds a plain Projection; ours also reports stream sequences to the
        # reconciler, so it is created here and handed to the Service to stop and health-check like any other.
        assert s.pool is not None and s.bus is not None
        reconciler = Reconciler(pool=s.pool, bus=s.bus, cloud=cloud, tracker=tracker, settings=settings)
        state["reconciler"] = reconciler
        reaper = TrustReaper(
            pool=s.pool, bus=s.bus, cloud=cloud, tracker=tracker, in_use=reconciler.trust_in_use,
            settings=TrustReaperSettings(
                rotation_grace=float(config.extra.get("COVE_PROVISIONER_TRUST_GRACE", "5")),
                hold=float(config.extra.get("COVE_PROVISIONER_TRUST_HOLD", trusts.hold_seconds(config.extra))),
            ),
        )
        reapers.append(reaper)

        def on_applied(env: Envelope) -> None:
            reconciler.on_applied(env)
            reaper.on_applied(env)

        projection = ProvisionerProjection(
            name=durable, schema=SCHEMA, pool=s.pool, bus=s.bus, handler=handlers.project,
            filter_subjects=FILTER_SUBJECTS, migrations_dir=MIGRATIONS,
            tracker=tracker, on_applied=on_applied,
        )
        await projection.start()
        s.projections.append(projection)
        s.health.add_check("projection", lambda: projection.running)
        await reconciler.start()
        await reaper.start()
        s.health.add_check("trust_reaper", lambda: reaper.running)

    async def cleanup(s: Service) -> None:
        for reaper in reapers:
            await reaper.stop()
        reconciler = state.get("reconciler")
        if reconciler is not None:
            await reconciler.stop()
        cloud.close()

    svc.on_startup(startup)
    svc.on_cleanup(cleanup)
    return svc
