"""Usage totals as Prometheus counters on the accounting service's /metrics, per project.

A background task reads every project's totals up to now from the store (``store.project_totals``) every
``COVE_ACCOUNTING_METRICS_INTERVAL`` seconds (15) and advances the counters by what grew since the last read (a
counter never goes down: an end reported late, which shortens an interval already counted up to "now", is not
taken back; the usage API is the exact figure, these are for dashboards and alerts).

The label set is bounded: at most ``COVE_ACCOUNTING_METRICS_MAX_PROJECTS`` (500) project labels, given to projects
in the order they are first seen; usage of any later project is added under ``project="_other"``. So a cloud with
a million projects costs at most 501 series per counter.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from prometheus_client import Counter

from services.accounting import store
from services.runtime.service import Service

log = structlog.get_logger(__name__)

OTHER = "_other"

VCPU_SECONDS = Counter("cove_accounting_vcpu_seconds", "vCPU-seconds used by the project's clusters", ["project"])
RAM_MB_SECONDS = Counter(
    "cove_accounting_ram_mb_seconds", "RAM-MB-seconds used by the project's clusters", ["project"]
)
VOLUME_GB_SECONDS = Counter(
    "cove_accounting_volume_gb_seconds", "Volume-GB-seconds used by the project's clusters", ["project"]
)
COUNTERS = (("vcpu_seconds", VCPU_SECONDS), ("ram_mb_seconds", RAM_MB_SECONDS),
            ("volume_gb_seconds", VOLUME_GB_SECONDS))


class UsageMetrics:
    def __init__(self, max_projects: int = 500) -> None:
        self.max_projects = max_projects
        self.labels: dict[str, str] = {}
        self.seen: dict[tuple[str, str], float] = {}
        """(project, figure) -> the total already added to the counter."""

    def label(self, project_id: str) -> str:
        if project_id not in self.labels:
            self.labels[project_id] = project_id if len(self.labels) < self.max_projects else OTHER
        return self.labels[project_id]

    def update(self, totals: list[dict[str, float | str]]) -> None:
        for row in totals:
            project = str(row["project_id"])
            label = self.label(project)
            for figure, counter in COUNTERS:
                value = float(row[figure])
                grown = value - self.seen.get((project, figure), 0.0)
                if grown > 0:
                    counter.labels(project=label).inc(grown)
                    self.seen[(project, figure)] = value

    async def refresh(self, svc: Service) -> None:
        if svc.pool is None:
            return
        rows = await store.project_totals(svc.pool, datetime.now(UTC))
        self.update([dict(r) for r in rows])


def metrics_task(interval: float, max_projects: int):  # type: ignore[no-untyped-def]
    metrics = UsageMetrics(max_projects)

    async def run(svc: Service) -> None:
        while True:
            try:
                await metrics.refresh(svc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next refresh tries again
                log.warning("usage_metrics_refresh_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(interval)

    return run
