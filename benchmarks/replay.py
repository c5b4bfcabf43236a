"""Replay speed: events per second each service's store is rebuilt at by `cove replay` (services/ops/replay.py).

A private nats-server (fsync before every acknowledgement, as Cove ships it) and a fresh PostgreSQL database get a
stream of cluster lifecycles (``lifecycles``: request with its resolved spec, admission, CA, create started, nodes created and active,
create completed; for half the clusters then delete requested, started, nodes deleted, delete completed, CA
deleted), published in batches of concurrent publishes. Each service's store is then built from it into a scratch
schema by the replayer, and timed: events applied per second (each service applies only the events its projection
subscribes to; "read" counts what the stream delivered it; "failed" the events that failed alone, which the live
service dead-lettered too: 0 for this stream; then how busy this process, nats-server and PostgreSQL were
meanwhile, 100 % being one core: the replay waits for PostgreSQL most of the time, one batch's statements after
another's, so neither core is full). The first row, "(no-op)", is a handler that does
nothing: what the replay machinery itself reaches, before any service's SQL. Last, the "live consumer" rows: a
running service's durable pull consumer with the scheduler's filter subjects over the same stream, given to the
server as they are, then as the one subject covering them that services/runtime/consumer.py gives it.

    .venv/bin/python -m benchmarks replay [--events 100000] [--services api,scheduler,...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
import uvloop

from benchmarks import cpu
from proto import subjects
from proto.clusterspec import resolve_cluster, with_flavor_sizes
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCACreated,
    ClusterCADeleted,
    ClusterCreateCompleted,
    ClusterCreateRequested,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterDeleteStarted,
    ClusterTemplate,
    ClusterTemplateCreated,
    Event,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
)
from services.runtime.bus import Bus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PUBLISH_BATCH = 1000
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBbench\n-----END CERTIFICATE-----\n"


def lifecycles(total: int, *, projects: int = 10, nodes: int = 2) -> Iterator[tuple[str, Envelope]]:
    """About ``total`` events (subject, envelope) in stream order: a template, then cluster lifecycles, each event
    caused by the one before it (one correlation id per cluster), one second apart."""
    clock = iter(range(10**9))

    def env(payload: Event, project: str, cluster: str | None, cause: Envelope | None) -> Envelope:
        return new_envelope(payload, project_id=project, cluster_id=cluster, causation=cause, trace={},
                            occurred_at=T0 + timedelta(seconds=next(clock)))

    template = ClusterTemplate(uuid=str(uuid.uuid4()), name="bench", project_id="p-0", user_id="u-0",
                               image_id="img", flavor_id="m1.small", public=True, created_at=T0)
    # Resolved once by the API and carried by the request, as services/api/resources/clusters.py does.
    spec = with_flavor_sizes(resolve_cluster(template, node_count=nodes - 1), {"m1.small": (1, 2048)})
    first = env(ClusterTemplateCreated(template=template), "p-0", None, None)
    yield subjects.cluster_template_events("api", template.uuid), first
    produced, i = 1, 0
    while produced < total:
        project, cid = f"p-{i % projects}", str(uuid.uuid4())
        steps: list[tuple[str, Event]] = [
            ("api", ClusterCreateRequested(uuid=cid, name=f"c{i}", project_id=project, user_id=f"u-{i % 7}",
                                           template=template, node_count=nodes - 1, spec=spec)),
            ("scheduler", ClusterAdmitted(uuid=cid, project_id=project, master_count=1, node_count=nodes - 1,
                                          name=f"c{i}")),
            ("certs", ClusterCACreated(uuid=cid, project_id=project, ca_cert_pem=CA_PEM,
                                       encrypted_ca_key=base64.b64encode(cid.encode()), key_id="bench")),
            ("provisioner", ClusterCreateStarted(uuid=cid, project_id=project)),
        ]
        names = [f"c{i}-{'master' if n == 0 else 'node'}-{n}" for n in range(nodes)]
        for n, name in enumerate(names):
            steps.append(("provisioner", NodeCreated(
                cluster_id=cid, project_id=project, node_name=name, role="master" if n == 0 else "worker",
                server_id=f"{cid}-{n}", flavor_id="f1", flavor_name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20)))
        for n, name in enumerate(names):
            steps.append(("provisioner", NodeBecameActive(
                cluster_id=cid, project_id=project, server_id=f"{cid}-{n}", node_name=name,
                addresses={"private": [f"10.0.{n}.{i % 250 + 2}"]})))
        steps.append(("provisioner", ClusterCreateCompleted(uuid=cid, project_id=project,
                                                            api_address=f"https://127.0.0.1:{6443 + i % 1000}")))
        if i % 2:
            steps.append(("api", ClusterDeleteRequested(uuid=cid, project_id=project, user_id=f"u-{i % 7}")))
            steps.append(("provisioner", ClusterDeleteStarted(uuid=cid, project_id=project)))
            for n, name in enumerate(names):
                steps.append(("provisioner", NodeDeleted(cluster_id=cid, project_id=project,
                                                         server_id=f"{cid}-{n}", node_name=name)))
            steps.append(("provisioner", ClusterDeleteCompleted(uuid=cid, project_id=project)))
            steps.append(("certs", ClusterCADeleted(uuid=cid, project_id=project)))
        cause: Envelope | None = None
        for producer, payload in steps:
            if produced >= total:
                return
            cause = env(payload, project, cid, cause)
            yield subjects.cluster_events(producer, cid), cause
            produced += 1
        i += 1


async def publish_all(bus: Bus, events: Iterator[tuple[str, Envelope]], batch: int = PUBLISH_BATCH) -> int:
    """Publish in batches of ``batch`` concurrent publishes (one connection: they reach the server in order).
    Returns the stream's last sequence."""
    last = 0
    chunk: list[tuple[str, Envelope]] = []

    async def flush() -> None:
        nonlocal last
        acks = await asyncio.gather(*(bus.publish(s, e) for s, e in chunk))
        last = max([last, *(a.seq for a in acks)])
        chunk.clear()

    for item in events:
        chunk.append(item)
        if len(chunk) >= batch:
            await flush()
    if chunk:
        await flush()
    return last


NOOP = "(no-op)"
"""A pseudo-service whose handler does nothing: the replay machinery alone (stream read, decode, inbox claim and
checkpoint per transaction of 1,000 events): the ceiling every service's handlers take their share from."""


def noop_target() -> Any:
    from services.ops.targets import ProjectionSpec, Target

    async def nothing(_env: Envelope, _tx: Any) -> None:
        return None

    migrations = Path(tempfile.mkdtemp(prefix="cove-bench-noop-"))
    (migrations / "0001_init.sql").write_text("SELECT 1;\n")
    return Target(service=NOOP, schema="noop", migrations_dir=migrations,
                  projections=[ProjectionSpec("noop", nothing, [subjects.EVENTS_ALL], None)])


LIVE_SECONDS = 10.0
"""How long each live consumer row reads the stream at most."""


async def live_consumer(bus: Bus, filters: list[str], *, widen: bool, seconds: float = LIVE_SECONDS) -> dict[str, Any]:
    """A live service's durable pull consumer (explicit acks, the default settings) with ``filters`` reading the
    stream from its start, with handlers that do nothing: the events per second the server delivers it and it
    acknowledges, with the filters given to the server as they are (``widen=False``: a consumer with several filter
    subjects is delivered slowly) or as one covering subject (``widen=True``, what services/runtime/consumer.py
    does: the messages none of the filters match are acknowledged unhandled), for at most ``seconds``."""
    from services.runtime.consumer import Consumer

    handled = 0

    async def one(_env: Envelope, _msg: Any) -> None:
        nonlocal handled
        handled += 1

    async def batch(items: list[tuple[Envelope, Any]]) -> None:
        nonlocal handled
        handled += len(items)

    durable = f"bench_live_{'wide' if widen else 'many'}_{uuid.uuid4().hex[:6]}"
    consumer = Consumer(bus, durable=durable, filter_subjects=filters, handler=one, batch_handler=batch, widen=widen)
    await consumer.ensure()
    started = time.perf_counter()
    await consumer.start(ensure=False)
    try:
        while time.perf_counter() - started < seconds:
            await asyncio.sleep(0.2)
            info = await consumer.info()
            if info is not None and info.num_pending == 0 and info.num_ack_pending == 0:
                break
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)
    return {"handled": handled, "skipped": consumer.skipped, "seconds": round(elapsed, 2),
            "events_per_s": round(handled / elapsed), "server_filters": consumer.server_filters}


async def measure(nats_url: str, database_url: str, events: int, services: list[str],
                  cpu_groups: dict[str, list[int]] | None = None) -> dict[str, Any]:
    from services.ops.connect import Settings
    from services.ops.replay import Replayer
    from services.ops.targets import target

    bus = await Bus.connect(nats_url, name="bench-replay")
    await bus.ensure_streams()
    started = time.perf_counter()
    last = await publish_all(bus, lifecycles(events))
    publish_s = time.perf_counter() - started
    print(f"   published {last} events in {publish_s:.1f} s ({last / publish_s:,.0f}/s)", flush=True)
    settings = Settings(nats_url=nats_url, database_url=database_url)
    results: dict[str, Any] = {"events": last, "publish_per_s": round(last / publish_s)}
    groups = {"replay": [os.getpid()], **(cpu_groups or {})}
    busy_heads = "".join(f" {name[:8] + ' %':>10}" for name in groups)
    print(f"   {'service':12} {'read':>8} {'applied':>8} {'seconds':>8} {'events/s':>9} {'failed':>7}{busy_heads}",
          flush=True)
    for service in services:
        replayer = Replayer(bus, settings, target(service) if service != NOOP else noop_target())
        await replayer.prepare()
        before = cpu.snapshot(groups)
        stats = await replayer.run(until=last)
        after = cpu.snapshot(groups)
        await replayer.close()
        # How busy each process was while the store was built (100 %: one core): the one at 100 is the limit.
        busy = {name: round(100 * (after[name] - before[name]) / max(stats.seconds, 1e-9)) for name in groups}
        busy["replay"] -= sum(busy[name] for name in groups if name != "replay")  # its tree holds the servers
        results[service] = {"read": stats.read, "applied": stats.applied, "seconds": round(stats.seconds, 2),
                            "events_per_s": round(stats.rate), "failed": len(stats.skipped), "cpu_percent": busy}
        print(f"   {service:12} {stats.read:>8} {stats.applied:>8} {stats.seconds:>8.2f} {stats.rate:>9,.0f}"
              f" {len(stats.skipped):>7}" + "".join(f" {busy[name]:>10}" for name in groups), flush=True)
    from services.scheduler.handlers import FILTER_SUBJECTS

    print(f"   live consumer with the scheduler's {len(FILTER_SUBJECTS)} filter subjects (no-op handlers, at most"
          f" {LIVE_SECONDS:g} s each):", flush=True)
    print(f"   {'server filter':22} {'handled':>8} {'skipped':>8} {'seconds':>8} {'events/s':>9}", flush=True)
    for widen in (False, True):
        row = await live_consumer(bus, FILTER_SUBJECTS, widen=widen)
        name = "one covering subject" if widen else "several subjects"
        results[f"live consumer, {name}"] = row
        print(f"   {name:22} {row['handled']:>8} {row['skipped']:>8} {row['seconds']:>8.2f}"
              f" {row['events_per_s']:>9,}", flush=True)
    await bus.close()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from deploy.local.nats import NatsServer
    from deploy.local.postgres import EmbeddedPostgres, drop_database, fresh_database
    from services.ops.targets import SERVICES

    p = argparse.ArgumentParser(prog="replay")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--services", default=",".join([NOOP, *SERVICES]))
    args = p.parse_args(argv)
    # As `cove replay` runs it: the handlers' per-event info lines are not written (services/ops/cli.py).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    os.environ.setdefault("COVE_CERTS_MASTER_KEY", base64.urlsafe_b64encode(b"b" * 32).decode())
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-replay-"))
    nats_server = NatsServer(tmp / "nats")
    nats_server.start()
    pg: EmbeddedPostgres | None = None
    try:
        admin = os.environ.get("COVE_BENCH_DATABASE_URL")
        if not admin:
            pg = EmbeddedPostgres(tmp / "pg", durable=False)
            pg.start()
            admin = pg.url

        async def go() -> dict[str, Any]:
            url = await fresh_database(admin, prefix="cove_bench")
            try:
                groups = {"nats": [nats_server.pid] if nats_server.pid else [],
                          "postgres": [pg.pid] if pg is not None and pg.pid else []}
                return await measure(nats_server.url, url, args.events, args.services.split(","),
                                     {name: pids for name, pids in groups.items() if pids})
            finally:
                await drop_database(admin, url)

        return uvloop.run(go())  # as the services and `cove` run (services/runtime/service.py)
    finally:
        nats_server.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
