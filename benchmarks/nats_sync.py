"""What `sync_interval: always` costs: JetStream publish throughput and latency with an fsync before every
acknowledgement, against the default two-minute flush. Cove ships `always` (the Jepsen analysis of NATS 2.12.1 showed
acknowledged writes lost under the default); this prints the price.

    .venv/bin/python -m benchmarks nats_sync [--messages 5000] [--inflight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from deploy.local.nats import NatsServer


async def publish_load(url: str, messages: int, inflight: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    payload = b"x" * 512
    latencies: list[float] = []
    sem = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await js.publish(f"bench.{i % 100}", payload, headers={"Nats-Msg-Id": f"m-{i}"})
            latencies.append(time.perf_counter() - t)

    # sequential publishes: the latency one writer sees
    serial = []
    for i in range(200):
        t = time.perf_counter()
        await js.publish("bench.serial", payload)
        serial.append(time.perf_counter() - t)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(messages)))
    elapsed = time.perf_counter() - started
    await nc.close()
    latencies.sort()
    serial.sort()
    return {
        "messages": messages,
        "inflight": inflight,
        "publishes_per_s": round(messages / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "serial_p50_ms": round(statistics.median(serial) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="nats_sync")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--inflight", type=int, default=64)
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    for mode in ("always", "2m"):
        with tempfile.TemporaryDirectory() as tmp:
            server = NatsServer(Path(tmp), sync_interval=mode)
            server.start()
            try:
                results[mode] = asyncio.run(publish_load(server.url, args.messages, args.inflight))
            finally:
                server.stop()
    print(f"{'sync_interval':14} {'publishes/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'serial p50 ms':>14}")
    for mode, r in results.items():
        print(f"{mode:14} {r['publishes_per_s']:>12} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['serial_p50_ms']:>14}")
    return results


if __name__ == "__main__":
    main()
