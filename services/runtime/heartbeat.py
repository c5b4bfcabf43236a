"""Publish ``ServiceHeartbeat`` every few seconds to ``cove.heartbeat.<service>`` (Magnum's mservices)."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from typing import Literal

import structlog

from proto import subjects
from proto.envelope import new_envelope
from proto.events import ServiceHeartbeat
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)


class Heartbeat:
    def __init__(self, bus: Bus, service: str, *, interval: float = 10.0, host: str | None = None) -> None:
        self.bus = bus
        self.service = service
        self.interval = interval
        self.host = host or socket.gethostname()
        self.started_at = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None
        self.report_count = 0

    async def beat(self, state: Literal["up", "stopping"] = "up") -> None:
        self.report_count += 1
        payload = ServiceHeartbeat(
            service=self.service, host=self.host, pid=os.getpid(), started_at=self.started_at, state=state,
            report_count=self.report_count,
        )
        env = new_envelope(payload, project_id=None, cluster_id=None)
        await self.bus.publish(subjects.heartbeat_subject(self.service), env)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is logged, the next one retries
                log.warning("heartbeat_failed", service=self.service, error=repr(exc))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat:{self.service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.beat("stopping")
        except Exception as exc:  # noqa: BLE001
            log.warning("heartbeat_failed", service=self.service, error=repr(exc))
