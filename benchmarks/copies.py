"""Copies and replication (issue 16): what 2 copies of every service and R3 streams cost or bring.

Two parts:

* **publish**: a JetStream stream on one nats-server (R1) and on a 3-node cluster (R3), both fsyncing before they
  acknowledge (``sync_interval: always``, as Cove ships them): the latency of one publish at a time (p50, p99) and
  the publishes per second of ``--concurrency`` publishes in flight, each a 1 KB message (about a Cove event).
* **creates**: ``benchmarks/clusters.py``'s run (``--clusters`` creates, ``--parallel`` at a time, the devcloud at
  time factor 0) on three LocalStacks: 1 copy of each service on 1 NATS node (R1, ``make run``), 1 copy on 3 nodes
  (R3), and 2 copies on 3 nodes (``make run-cluster``): creates per second and each cluster's build time (POST to
  CREATE_COMPLETE, p50 and p99). The first two compare R1 with R3, the last two 1 copy with 2.

    .venv/bin/python -m benchmarks copies [--clusters 40] [--parallel 16] [--publishes 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StorageType, StreamConfig

from benchmarks import clusters
from deploy.local.nats import NatsCluster, NatsServer
from deploy.local.stack import LocalStack

PAYLOAD = b"x" * 1024


async def publish_figures(url: str, replicas: int, publishes: int, concurrency: int) -> dict[str, Any]:
    nc = await nats.connect(url.split(","), name="bench-copies")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE,
                                     num_replicas=replicas))
    for i in range(50):  # warm up: the stream's leader elected, its files open
        await js.publish(f"bench.warm.{i}", PAYLOAD)
    latencies = []
    for i in range(publishes):
        t = time.perf_counter()
        await js.publish(f"bench.one.{i % 100}", PAYLOAD)
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await js.publish(f"bench.many.{i % 100}", PAYLOAD)

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(publishes)))
    elapsed = time.perf_counter() - t
    await nc.close()
    return {"replicas": replicas, "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
            "publishes_per_s": round(publishes / elapsed)}


def publish_part(publishes: int, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cove-bench-copies-") as tmp:
        single = NatsServer(Path(tmp) / "r1")
        single.start()
        try:
            out["R1"] = asyncio.run(publish_figures(single.url, 1, publishes, concurrency))
        finally:
            single.stop()
        cluster = NatsCluster(Path(tmp) / "r3", size=3, log_dir=Path(tmp))
        cluster.start()
        try:
            out["R3"] = asyncio.run(publish_figures(cluster.url, 3, publishes, concurrency))
        finally:
            cluster.stop()
    for name, r in out.items():
        print(f"   publish {name}: one at a time p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; "
              f"{concurrency} in flight {r['publishes_per_s']:,}/s", flush=True)
    return out


def creates_part(count: int, parallel: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    os.environ.setdefault("COVE_DEFAULT_CLUSTER_QUOTA", str(max(1000, count * 2)))
    for label, copies, nodes in (("1 copy, R1", 1, 1), ("1 copy, R3", 1, 3), ("2 copies, R3", 2, 3)):
        with tempfile.TemporaryDirectory(prefix="cove-bench-copies-") as tmp:
            stack = LocalStack(Path(tmp) / "state", time_factor=0.0, timeout=180.0, copies=copies, nats_nodes=nodes)
            try:
                stack.start()
                result = asyncio.run(clusters.run(stack, count, parallel))
            finally:
                stack.stop()
        c = result["create"]
        out[label] = {"copies": copies, "nats_nodes": nodes, "creates_per_s": c["clusters_per_s"],
                      "build_p50_s": c["p50_s"], "build_p99_s": c["p99_s"], "delete": result["delete"],
                      "servers_left": result["servers_left"]}
        print(f"   creates {label:13}: {c['clusters_per_s']} clusters/s, build p50 {c['p50_s']} s, "
              f"p99 {c['p99_s']} s ({count} clusters, {parallel} at a time)", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="copies")
    p.add_argument("--clusters", type=int, default=40)
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--publishes", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--part", choices=("all", "publish", "creates"), default="all")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    if args.part in ("all", "publish"):
        out["publish"] = publish_part(args.publishes, args.concurrency)
    if args.part in ("all", "creates"):
        out["creates"] = creates_part(args.clusters, args.parallel)
    return out


if __name__ == "__main__":
    main()
