"""The devcloud as an instrument: how fast servers are created and reach ACTIVE through real openstacksdk with a
zero boot time, how many raw API requests/s one devcloud process serves, and its CPU per request.

    .venv/bin/python -m benchmarks devcloud_servers [--servers 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openstack

from deploy.devcloud.process import start_devcloud, stop_devcloud


def admin_get(conn: openstack.connection.Connection, url: str) -> dict[str, Any]:
    return conn.session.get(url, endpoint_filter=None).json()


def create_and_wait(conn: openstack.connection.Connection, name: str, flavor: str, image: str, net: str) -> float:
    start = time.perf_counter()
    server = conn.compute.create_server(name=name, flavor_id=flavor, image_id=image, networks=[{"uuid": net}])
    conn.compute.wait_for_server(server, interval=0.05, wait=120)
    return time.perf_counter() - start


def sdk_phase(url: str, servers: int, clients: int) -> dict[str, Any]:
    admin = openstack.connect(cloud="cove-admin")
    setup = openstack.connect(cloud="cove-demo")
    net = setup.network.create_network(name="bench-net")
    setup.network.create_subnet(network_id=net.id, cidr="10.20.0.0/16", ip_version=4, name="bench-subnet")
    flavor = setup.compute.find_flavor("m1.tiny", ignore_missing=False).id
    image = setup.image.find_image("ubuntu-22.04", ignore_missing=False).id
    conns = [openstack.connect(cloud="cove-demo") for _ in range(clients)]
    for c in conns:  # discovery and auth once per client, outside the measurement
        c.compute.get_endpoint()
        list(c.compute.flavors())
    before = admin_get(admin, f"{url}/admin/stats")
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(create_and_wait, conns[i % clients], f"bench-{i}", flavor, image, net.id)
                   for i in range(servers)]
        latencies = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    after = admin_get(admin, f"{url}/admin/stats")
    requests = after["requests"] - before["requests"]
    cpu = after["cpu_seconds"] - before["cpu_seconds"]
    latencies.sort()
    return {
        "servers": servers,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "servers_active_per_s": round(servers / elapsed, 1),
        "create_to_active_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "create_to_active_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "devcloud_requests": requests,
        "devcloud_cpu_ms_per_request": round(cpu * 1000 / requests, 3) if requests else None,
        "devcloud_cpu_share": round(cpu / elapsed, 2),
    }


async def raw_phase(url: str, token: str, server_id: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """Raw GETs of one server from an aiohttp client: what the devcloud serves when the SDK is not the limit."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.96"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                async with session.get(f"{url}/compute/v2.1/servers/{server_id}") as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - t)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": done,
        "requests_per_s": round(done / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="devcloud_servers")
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--raw-seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cloud = start_devcloud(Path(tmp), time_factor=0.0)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
        try:
            sdk = sdk_phase(cloud.url, args.servers, args.clients)
            demo = openstack.connect(cloud="cove-demo")
            server = next(demo.compute.servers())
            admin = openstack.connect(cloud="cove-admin")
            before = admin_get(admin, f"{cloud.url}/admin/stats")
            raw = asyncio.run(raw_phase(cloud.url, demo.auth_token, server.id, args.raw_seconds, 16))
            after = admin_get(admin, f"{cloud.url}/admin/stats")
            n = after["requests"] - before["requests"]
            raw["devcloud_cpu_ms_per_request"] = round((after["cpu_seconds"] - before["cpu_seconds"]) * 1000 / n, 3)
        finally:
            stop_devcloud(cloud)
    result = {"sdk_create_to_active": sdk, "raw_server_get": raw}
    print("devcloud servers through openstacksdk (zero boot time):")
    for k, v in sdk.items():
        print(f"  {k:32} {v}")
    print("devcloud raw GET /servers/{id} (aiohttp client, 16 connections):")
    for k, v in raw.items():
        print(f"  {k:32} {v}")
    return result


if __name__ == "__main__":
    main()
