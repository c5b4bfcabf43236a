"""Resident memory of each service with 10,000 clusters in its store (issue 16; the aim: 150 MB or less each, where
Magnum's API and conductor take about 300 MB).

The stores are built fast, as benchmarks/replay.py builds them: a private nats-server and PostgreSQL get the
events of ``--clusters`` complete clusters published directly (template, request, admission, CA, create started,
2 nodes created and active, create completed: ``replay.lifecycles`` without its deletes), and each service's store
is built from them by ``cove replay``'s Replayer (``build_stores``). Then the local stack (the devcloud and one
copy of every service) starts on them; once every durable consumer of COVE_EVENTS has nothing pending nor
unacknowledged (and a few seconds more, for whatever a service does once started), each service's VmRSS and VmHWM
(its peak) are read from /proc/<pid>/status.

    .venv/bin/python -m benchmarks memory [--clusters 10000] [--settle 5]
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import structlog

from benchmarks.replay import lifecycles as replay_lifecycles
from benchmarks.replay import publish_all
from deploy.local.nats import NatsServer
from deploy.local.postgres import EmbeddedPostgres, drop_database, fresh_database
from deploy.local.stack import LocalStack
from proto import subjects
from proto.envelope import Envelope
from services.runtime.bus import Bus

DELETES = {"ClusterDeleteRequested", "ClusterDeleteStarted", "NodeDeleted", "ClusterDeleteCompleted",
           "ClusterCADeleted"}
AIM_MB = 150
STORES = {"api": "api.clusters", "scheduler": "scheduler.clusters", "provisioner": "provisioner.clusters",
          "certs": "certs.cluster_cas", "accounting": "accounting.clusters"}
"""A table per store whose rows are counted in the report (a missing one is reported as such)."""


def complete_clusters(count: int) -> Iterator[tuple[str, Envelope]]:
    """``replay.lifecycles`` without the deletes, until ``count`` clusters were requested."""
    requested = 0
    for subject, env in replay_lifecycles(10**9):
        if env.type in DELETES:
            continue
        if env.type == "ClusterCreateRequested":
            requested += 1
            if requested > count:
                return
        yield subject, env


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def build_stores(nats_url: str, database_url: str, until: int) -> dict[str, float]:
    """Every service's store built from the stream as ``cove replay`` builds it (the service's own projection code,
    into a scratch schema), then named as the live store with its checkpoint at ``until``: a service started
    afterwards finds its store complete and consumes from there on, as one restarted on a long-lived stream does
    (and the provisioner does not act on the stream's clusters, as it would if it consumed their events live)."""
    from services.ops.connect import Settings
    from services.ops.replay import Replayer
    from services.ops.targets import SERVICES, target

    bus = await Bus.connect(nats_url, name="bench-memory-replay")
    settings = Settings(nats_url=nats_url, database_url=database_url)
    seconds: dict[str, float] = {}
    try:
        for service in SERVICES:
            t = time.perf_counter()
            replayer = Replayer(bus, settings, target(service))
            await replayer.prepare()
            await replayer.run(until=until)
            conn = await asyncpg.connect(database_url)
            try:
                async with conn.transaction():
                    await conn.execute(f"ALTER SCHEMA {replayer.scratch} RENAME TO {replayer.target.schema}")
                    for p in replayer.projections:
                        await conn.execute(f"UPDATE {replayer.target.schema}.checkpoint SET consumer = $1 "
                                           "WHERE consumer = $2", p.name, p.checkpoint_name)
            finally:
                await conn.close()
            await replayer.close()
            seconds[service] = round(time.perf_counter() - t, 1)
    finally:
        await bus.close()
    return seconds


async def caught_up(url: str, timeout: float) -> tuple[float, dict[str, int]]:
    """Seconds until every durable consumer of the events stream has nothing pending nor unacknowledged, and the
    consumers still behind at ``timeout`` (name -> pending messages; empty when all caught up)."""
    nc = await nats.connect(url, name="bench-memory")
    js = nc.jetstream()
    started = time.monotonic()
    try:
        while True:
            infos = await js.consumers_info(subjects.EVENTS_STREAM)
            durable = [i for i in infos if i.config.durable_name]
            behind = {str(i.name): i.num_pending + i.num_ack_pending for i in durable
                      if i.num_pending or i.num_ack_pending}
            if (durable and not behind) or time.monotonic() - started > timeout:
                return time.monotonic() - started, behind
            await asyncio.sleep(1.0)
    finally:
        await nc.close()


async def store_rows(database_url: str) -> dict[str, int | str]:
    conn = await asyncpg.connect(database_url)
    out: dict[str, int | str] = {}
    try:
        for service, table in STORES.items():
            try:
                out[service] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            except asyncpg.PostgresError as exc:
                out[service] = f"({type(exc).__name__})"
    finally:
        await conn.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="memory")
    p.add_argument("--clusters", type=int, default=10_000)
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the catch-up before reading RSS")
    p.add_argument("--catch-up", type=float, default=600.0, help="seconds the services may take to catch up")
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # no per-publish lines
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-memory-"))
    nats_server = NatsServer(tmp / "nats")
    nats_server.start()
    pg = EmbeddedPostgres(tmp / "pg", durable=False)
    pg.start()
    saved = {k: os.environ.get(k) for k in ("COVE_NATS_URL", "COVE_DATABASE_URL", "COVE_CERTS_MASTER_KEY",
                                            "COVE_DEFAULT_CLUSTER_QUOTA")}
    stack: LocalStack | None = None
    database_url = ""
    try:
        async def publish() -> tuple[str, int, float]:
            url = await fresh_database(pg.url, prefix="cove_bench")
            bus = await Bus.connect(nats_server.url, name="bench-memory")
            await bus.ensure_streams()
            t = time.perf_counter()
            last = await publish_all(bus, complete_clusters(args.clusters))
            await bus.close()
            return url, last, time.perf_counter() - t

        database_url, events, seconds = asyncio.run(publish())
        print(f"   published {events:,} events of {args.clusters:,} clusters in {seconds:.1f} s", flush=True)
        os.environ.setdefault("COVE_CERTS_MASTER_KEY", base64.urlsafe_b64encode(b"m" * 32).decode())
        built = asyncio.run(build_stores(nats_server.url, database_url, events))
        print(f"   stores built (seconds): {built}", flush=True)
        os.environ.update({"COVE_NATS_URL": nats_server.url, "COVE_DATABASE_URL": database_url})
        # the stream's clusters are admitted already; the scheduler must not reject them again on the default quota
        os.environ["COVE_DEFAULT_CLUSTER_QUOTA"] = str(args.clusters * 2)
        stack = LocalStack(tmp / "state", time_factor=0.0, timeout=900.0)
        t = time.monotonic()
        stack.start()
        ready = time.monotonic() - t
        seconds, behind = asyncio.run(caught_up(nats_server.url, timeout=args.catch_up))
        print(f"   services ready in {ready:.1f} s, caught up {seconds:.1f} s later"
              + (f"; NOT caught up after {args.catch_up:g} s (pending: {behind}): their RSS is read anyway"
                 if behind else ""), flush=True)
        time.sleep(args.settle)
        rows = asyncio.run(store_rows(database_url))
        result: dict[str, Any] = {"clusters": args.clusters, "events": events, "aim_mb": AIM_MB, "build_s": built,
                                  "catch_up_s": round(ready + seconds, 1), "not_caught_up": behind,
                                  "services": {}}
        print(f"   {'service':12} {'RSS MB':>8} {'peak MB':>8} {'store rows':>11}", flush=True)
        for child in stack.children:
            if child.name == "devcloud":
                continue
            kb = status_kb(child.proc.pid)
            rss, peak = round(kb["VmRSS"] / 1024, 1), round(kb["VmHWM"] / 1024, 1)
            service = child.name.split("-")[0]
            result["services"][child.name] = {"rss_mb": rss, "peak_mb": peak, "store_rows": rows.get(service)}
            flag = "" if rss <= AIM_MB else f"  over the {AIM_MB} MB aim"
            print(f"   {child.name:12} {rss:>8} {peak:>8} {rows.get(service)!s:>11}{flag}", flush=True)
        return result
    finally:
        if stack is not None:
            stack.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if database_url:
            asyncio.run(drop_database(pg.url, database_url))
        nats_server.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
