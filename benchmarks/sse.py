"""SSE fan-out: ``GET /v1/events`` (services/api/resources/events.py: one shared COVE_EVENTS subscription, a frame
rendered once per event) to many subscribers. Events are published to a real JetStream (fsync on every ack) while
``--clients`` connections, in a separate process, read the stream over HTTP; the figures are the deliveries per
second and each delivery's delay from the event's ``occurred_at`` (set just before its publish) to its arrival.

The handler is the real one; authentication is replaced by a fixed member context (no Keystone, no PostgreSQL:
neither is on the fan-out path).

    .venv/bin/python -m benchmarks sse [--clients 1000] [--events 200] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from deploy.local.nats import NatsServer
from deploy.local.ports import free_port
from proto import streams, subjects
from proto.envelope import new_envelope
from proto.events import ClusterHealthUpdated
from services.api import policy
from services.api.keystone import AuthContext
from services.api.middleware import CONTEXT
from services.api.resources import events
from services.runtime.bus import Bus

PROJECT = "bench-project"


def _member() -> AuthContext:
    return AuthContext(token="bench", user_id="bench-user", user_name="bench", project_id=PROJECT,
                       project_name="bench", roles=frozenset({"member", "reader"}),
                       expires_at=datetime.now(UTC) + timedelta(days=1))


@web.middleware
async def _as_member(request: web.Request, handler: Any) -> web.StreamResponse:
    request[CONTEXT] = _member()
    policy.use(request.app)
    return await handler(request)  # type: ignore[no-any-return]


CLIENT = r'''
import asyncio, json, sys, time
from datetime import datetime
import aiohttp, msgspec

class Head(msgspec.Struct):
    occurred_at: datetime

async def main(url, clients, expected, deadline):
    decode = msgspec.json.Decoder(Head).decode
    delays, counts = [], [0] * clients
    connected = 0
    async def one(i, session):
        nonlocal connected
        async with session.get(url, headers={"X-Auth-Token": "bench"}) as resp:
            connected += 1
            async for line in resp.content:
                if line.startswith(b"data: "):
                    now = time.time()
                    delays.append(now - decode(line[6:]).occurred_at.timestamp())
                    counts[i] += 1
                    if counts[i] >= expected:
                        return
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(clients)]
        while connected < clients:
            await asyncio.sleep(0.05)
        print("connected", flush=True)
        started = time.time()
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        finished = time.time()
    json.dump({"delays": delays, "received": sum(counts), "complete_clients": sum(c >= expected for c in counts),
               "first_to_last": finished - started}, sys.stdout)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
'''


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(clients: int, n_events: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cove-bench-sse-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats", server_name="bench-sse")
        nats_server.start()
        try:
            bus = await Bus.connect(nats_server.url, name="bench-sse")
            await bus.ensure_streams([streams.events_stream()])
            app = web.Application(middlewares=[_as_member])
            app[policy.POLICY] = policy.load()
            hub = events.EventHub(bus, keepalive=3600.0, queue_size=4096)
            await hub.start()
            app[events.HUB] = hub
            app.add_routes(events.routes)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/v1/events", str(clients), str(n_events),
                str(60.0 + n_events / rate * 4), stdout=subprocess.PIPE)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line.strip() == b"connected", line
            cluster = str(uuid.uuid4())
            subject = subjects.cluster_events("api", cluster)
            started = time.time()
            for i in range(n_events):
                env = new_envelope(ClusterHealthUpdated(uuid=cluster, project_id=PROJECT, health_status="HEALTHY",
                                                        health_status_reason={"n": str(i)}),
                                   project_id=PROJECT, cluster_id=cluster)
                await bus.publish(subject, env)
                ahead = started + (i + 1) / rate - time.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            published = time.time() - started
            out, _ = await proc.communicate()
            result = json.loads(out)
            await runner.cleanup()
            await hub.stop()
            await bus.close()
        finally:
            nats_server.stop()
    delays = result["delays"]
    return {
        "clients": clients,
        "events": n_events,
        "publish_rate": round(n_events / published, 1),
        "deliveries": result["received"],
        "expected_deliveries": clients * n_events,
        "clients_with_every_event": result["complete_clients"],
        "delivered_per_s": round(result["received"] / result["first_to_last"], 1),
        "delay_p50_ms": round(_percentile(delays, 0.50) * 1000, 1),
        "delay_p99_ms": round(_percentile(delays, 0.99) * 1000, 1),
        "delay_max_ms": round(max(delays, default=float("nan")) * 1000, 1),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks sse")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="events published per second")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.clients, args.events, args.rate))
    for key, val in result.items():
        print(f"   {key}: {val}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
