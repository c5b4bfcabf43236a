"""A tiny service built with the runtime, run as a subprocess by test_service.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg

from proto.envelope import Envelope
from proto.events import ClusterRejected
from proto.requests import ClusterCA, GetClusterCA, Message
from services.runtime.projection import Outgoing
from services.runtime.rpc import RpcError
from services.runtime.service import Service, ServiceConfig, run

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(config: ServiceConfig) -> Service:
    svc = Service(config, schema=config.extra["COVE_TEST_SCHEMA"], migrations_dir=MIGRATIONS)
    producer = config.extra["COVE_TEST_PRODUCER"]

    async def project(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        if isinstance(p, ClusterRejected):
            await tx.execute(
                "INSERT INTO rejections (cluster_id, project_id, times, reasons) VALUES ($1, $2, 1, $3)"
                " ON CONFLICT (cluster_id) DO UPDATE SET times = rejections.times + 1",
                p.uuid,
                p.project_id,
                p.reason,
            )
        return []

    async def get_ca(req: Message) -> Message:
        if not isinstance(req, GetClusterCA):
            raise RpcError(400, "expected GetClusterCA")
        assert svc.pool is not None
        async with svc.pool.acquire() as conn:
            reasons = await conn.fetchval(
                "SELECT reasons FROM rejections WHERE cluster_id = $1", req.cluster_id
            )
        if reasons is None:
            raise RpcError(404, f"cluster {req.cluster_id} not found")
        return ClusterCA(pem=reasons, cluster_id=req.cluster_id)

    svc.add_projection(f"{config.service}_proj", project, [f"cove.evt.{producer}.>"])
    svc.add_rpc(f"cove.rpc.{config.service}.get_ca", get_ca)
    return svc


def main() -> None:
    run(build_service, name="sample")


if __name__ == "__main__":
    main()
