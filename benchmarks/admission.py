"""Admission decisions per second at the quota limit: the real scheduler service (its projection, batch handler,
project locks and usage counters) against a private nats-server and an embedded PostgreSQL (or COVE_DATABASE_URL),
fed ``ClusterCreateRequested`` events straight onto the bus, as fast as JetStream takes them.

Scenarios (each on a fresh schema and consumer; every request is decided, refusals included):
* ``cluster-limit``: projects whose ``Cluster`` quota is already reached after a few creates: most are refused with
  Magnum's message (the hot path of a quota at its limit);
* ``vcpu-limit``: the same with a ``vCPU`` quota (demand summed from the spec's flavor sizes) as the binding limit;
* ``vcpu-limit-queued``: as ``vcpu-limit`` with ``COVE_MAX_BUILDS=8``: the admitted ones also go through the build
  queue (``ClusterQueued`` then the fair order).

    .venv/bin/python -m benchmarks admission [--requests 4000] [--projects 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCENARIOS: dict[str, dict[str, str]] = {
    "cluster-limit": {"COVE_DEFAULT_CLUSTER_QUOTA": "10"},
    "vcpu-limit": {"COVE_DEFAULT_CLUSTER_QUOTA": "1000", "COVE_DEFAULT_VCPU_QUOTA": "50"},
    "vcpu-limit-queued": {"COVE_DEFAULT_CLUSTER_QUOTA": "1000", "COVE_DEFAULT_VCPU_QUOTA": "50",
                          "COVE_MAX_BUILDS": "8"},
}


async def run(scenario: str, extra: dict[str, str], nats_url: str, db_url: str, requests: int,
              projects: int) -> tuple[float, int, int]:
    from proto import subjects
    from proto.clusterspec import resolve_cluster
    from proto.envelope import new_envelope
    from proto.events import ClusterCreateRequested, ClusterTemplate
    from services.runtime.bus import Bus
    from services.runtime.service import ServiceConfig
    from services.scheduler.service import build_service

    schema = f"sched_bench_{uuid.uuid4().hex[:6]}"
    svc = build_service(ServiceConfig(service="scheduler", nats_url=nats_url, database_url=db_url, extra=extra),
                        schema=schema, durable=schema)
    await svc.start()
    bus = await Bus.connect(nats_url, name="bench-admission")
    tag = uuid.uuid4().hex[:6]
    template = ClusterTemplate(uuid=str(uuid.uuid4()), project_id="p", user_id="u", image_id="img",
                               created_at=datetime.now(UTC))
    spec = resolve_cluster(template, node_count=2, flavor_sizes={"m1.small": (2, 2048)})
    verdicts: dict[str, bool] = {}
    """Cluster -> admitted (a cluster admitted from the build queue was decided when it was queued: counted once)."""
    done = asyncio.Event()

    async def on_decision(msg: Any) -> None:
        cid = msg.subject.rpartition(".")[2]
        if cid in verdicts:
            return
        if b"ClusterRejected" in msg.data:
            verdicts[cid] = False
        elif b"ClusterAdmitted" in msg.data or b"ClusterQueued" in msg.data:
            verdicts[cid] = True
        if len(verdicts) >= requests:
            done.set()

    sub = await bus.nc.subscribe(subjects.producer_events("scheduler", "cluster"), cb=on_decision)
    try:
        started = time.perf_counter()

        async def publish(i: int) -> None:
            cid = str(uuid.uuid4())
            project = f"{tag}-p{i % projects}"
            req = ClusterCreateRequested(uuid=cid, name=f"c{i}", project_id=project, user_id="u",
                                         template=template, node_count=2, spec=spec)
            await bus.publish(subjects.cluster_events("api", cid),
                              new_envelope(req, project_id=project, cluster_id=cid))

        for lo in range(0, requests, 200):
            await asyncio.gather(*(publish(i) for i in range(lo, min(lo + 200, requests))))
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - started
    finally:
        await sub.unsubscribe()
        await bus.close()
        await svc.stop()
    return requests / elapsed, len(verdicts), sum(verdicts.values())


async def run_all(requests: int, projects: int) -> dict[str, Any]:
    from deploy.local.nats import NatsServer
    from deploy.local.postgres import database_url

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cove-bench-admission-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats")
        nats_server.start()
        db_url, pg = database_url(Path(tmp) / "pg", durable=False)
        try:
            for name, extra in SCENARIOS.items():
                rate, decided, admitted = await run(name, extra, nats_server.url, db_url, requests, projects)
                result[f"{name}_decisions_per_s"] = round(rate)
                print(f"   {name:18} {decided} requests from {projects} projects decided, {admitted} admitted: "
                      f"{rate:7.0f} decisions/s", flush=True)
        finally:
            nats_server.stop()
            if pg is not None:
                pg.stop()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="admission")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--projects", type=int, default=20)
    args = p.parse_args(argv or [])
    return asyncio.run(run_all(args.requests, args.projects))
