"""Accounting events projected per second: a stream of provisioner events (clusters started, servers, volumes,
floating IPs and load balancers created and deleted, clusters deleted) is published first, then a fresh accounting
service replays it into its intervals, as after a dropped schema; the rate is events over the time its checkpoint
took to reach the stream's end. Then the time of one usage query over all of it, grouped by cluster. Real
nats-server (fsync always) and an embedded PostgreSQL (or COVE_DATABASE_URL).

    .venv/bin/python -m benchmarks accounting [--clusters 500] [--nodes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def workload(clusters: int, nodes: int) -> list[tuple[str, str, Any]]:
    """(cluster id, project id, event) in stream order: per cluster, start, a load balancer, per node a server,
    a volume and a floating IP, then every end and the cluster's delete: 3 + 6 * nodes + 2 events."""
    from proto.events import (
        ClusterCreateStarted,
        ClusterDeleteCompleted,
        FloatingIpAllocated,
        FloatingIpReleased,
        LoadBalancerCreated,
        LoadBalancerDeleted,
        NodeCreated,
        NodeDeleted,
        VolumeCreated,
        VolumeDeleted,
    )

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[tuple[str, str, Any]] = []
    for c in range(clusters):
        cid, project = str(uuid.uuid4()), f"bench-{c % 50}"
        at = t0 + timedelta(minutes=c)
        out.append((cid, project, ClusterCreateStarted(uuid=cid, project_id=project)))
        out.append((cid, project, LoadBalancerCreated(cluster_id=cid, project_id=project, load_balancer_id=f"lb-{cid}",
                                                      name="lb", created_at=at)))
        for n in range(nodes):
            sid = f"{cid}-{n}"
            out.append((cid, project, NodeCreated(
                cluster_id=cid, project_id=project, node_name=f"n{n}", role="worker", server_id=sid, flavor_id="f",
                flavor_name="m1.small", vcpus=2, ram_mb=4096, disk_gb=20, created_at=at)))
            out.append((cid, project, VolumeCreated(cluster_id=cid, project_id=project, volume_id=f"v-{sid}",
                                                    name="v", size_gb=10, created_at=at)))
            out.append((cid, project, FloatingIpAllocated(cluster_id=cid, project_id=project,
                                                          floating_ip_id=f"f-{sid}", address="127.24.4.9",
                                                          name="fip", created_at=at)))
        end = at + timedelta(hours=1)
        for n in range(nodes):
            sid = f"{cid}-{n}"
            out.append((cid, project, NodeDeleted(cluster_id=cid, project_id=project, server_id=sid,
                                                  deleted_at=end)))
            out.append((cid, project, VolumeDeleted(cluster_id=cid, project_id=project, volume_id=f"v-{sid}",
                                                    deleted_at=end)))
            out.append((cid, project, FloatingIpReleased(cluster_id=cid, project_id=project,
                                                         floating_ip_id=f"f-{sid}", released_at=end)))
        out.append((cid, project, LoadBalancerDeleted(cluster_id=cid, project_id=project,
                                                      load_balancer_id=f"lb-{cid}", deleted_at=end)))
        out.append((cid, project, ClusterDeleteCompleted(uuid=cid, project_id=project)))
    return out


async def run(clusters: int, nodes: int) -> dict[str, Any]:
    from deploy.local.nats import NatsServer
    from deploy.local.postgres import database_url
    from proto import subjects
    from proto.envelope import new_envelope
    from proto.requests import GetUsage, UsageReport
    from services.accounting.service import build_service
    from services.runtime import rpc
    from services.runtime.bus import Bus
    from services.runtime.service import ServiceConfig

    with tempfile.TemporaryDirectory(prefix="cove-bench-accounting-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats")
        nats_server.start()
        db_url, pg = database_url(Path(tmp) / "pg", durable=False)
        bus = await Bus.connect(nats_server.url, name="bench-accounting")
        svc = None
        try:
            await bus.ensure_streams()
            events = workload(clusters, nodes)
            started = time.perf_counter()
            last = 0
            for i in range(0, len(events), 256):
                acks = await asyncio.gather(*(
                    bus.publish(subjects.cluster_events("provisioner", cid),
                                new_envelope(e, project_id=project, cluster_id=cid))
                    for cid, project, e in events[i:i + 256]))
                last = max(last, *(a.seq for a in acks))
            published_s = time.perf_counter() - started
            schema = f"accounting_bench_{uuid.uuid4().hex[:6]}"
            svc = build_service(ServiceConfig(service="accounting", nats_url=nats_server.url, database_url=db_url),
                                schema=schema, durable=schema)
            started = time.perf_counter()
            await svc.start()
            projection = svc.projections[0]
            while await projection.checkpoint() < last:
                await asyncio.sleep(0.02)
            projected_s = time.perf_counter() - started
            started = time.perf_counter()
            # (one row per cluster: every resource's row, 6,500 of them, is more than one NATS message holds; the
            # service answers such a question 413, services/runtime/rpc.py)
            reply = await rpc.request(bus.nc, subjects.ACCOUNTING_USAGE, GetUsage(group_by="cluster"), timeout=120)
            query_s = time.perf_counter() - started
            assert isinstance(reply, UsageReport)
            expected = clusters * nodes * 2 * 3600
            assert round(reply.core_seconds) == expected, (reply.core_seconds, expected)
            return {"events": len(events), "published_per_s": len(events) / published_s,
                    "projected_per_s": len(events) / projected_s, "usage_query_s": query_s,
                    "rows": len(reply.rows)}
        finally:
            await bus.close()
            if svc is not None:
                await svc.stop()
            nats_server.stop()
            if pg is not None:
                pg.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="accounting")
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--nodes", type=int, default=4)
    args = p.parse_args(argv or [])
    r = asyncio.run(run(args.clusters, args.nodes))
    print(f"   {r['events']} provisioner events ({args.clusters} clusters x {args.nodes} nodes with a volume and a "
          f"floating IP, a load balancer each)", flush=True)
    print(f"   projected by a fresh accounting service (replay): {r['projected_per_s']:8.0f} events/s", flush=True)
    print(f"   usage over all of it, one row per cluster ({r['rows']} rows): {r['usage_query_s'] * 1000:6.0f} ms",
          flush=True)
    return {"events": r["events"], "projected_per_s": round(r["projected_per_s"]),
            "usage_query_ms": round(r["usage_query_s"] * 1000), "rows": r["rows"]}
