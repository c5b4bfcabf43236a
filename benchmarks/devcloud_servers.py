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
import yaml

from deploy.devcloud.config import DEFAULT_CONFIG
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
    pid = setup.current_project_id
    # lift the project's quotas: the benchmark measures the cloud's speed, not its limits
    admin.session.put(f"{url}/compute/v2.1/os-quota-sets/{pid}", endpoint_filter=None,
                      json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}})
    admin.session.put(f"{url}/networking/v2.0/quotas/{pid}", endpoint_filter=None, json={"quota": {"port": -1}})
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


async def scale_phase(url: str, token: str, count: int, concurrency: int, pid: int) -> dict[str, Any]:
    """Create `count` servers over raw HTTP, wait until all are ACTIVE, then time a full detail list and read the
    devcloud's resident memory: the cloud must hold 10,000 servers with bounded memory."""
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.96"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{url}/networking/v2.0/networks?name=bench-net") as resp:
            net = (await resp.json())["networks"][0]["id"]
        async with session.get(f"{url}/compute/v2.1/flavors/detail") as resp:
            flavor = next(f["id"] for f in (await resp.json())["flavors"] if f["name"] == "m1.tiny")
        async with session.get(f"{url}/image/v2/images?name=ubuntu-22.04") as resp:
            image = (await resp.json())["images"][0]["id"]
        queue = list(range(count))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {"server": {"name": f"scale-{i}", "flavorRef": flavor, "imageRef": image,
                                   "networks": [{"uuid": net}]}}
                async with session.post(f"{url}/compute/v2.1/servers", json=body) as resp:
                    assert resp.status == 202, await resp.text()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        created = time.perf_counter() - started

        async def active_count() -> int:
            """Follow servers_links through every page of ACTIVE servers (Nova caps a page at 1,000)."""
            total, link = 0, f"{url}/compute/v2.1/servers?status=ACTIVE&limit=1000"
            while link:
                async with session.get(link) as resp:
                    body = await resp.json()
                total += len(body["servers"])
                link = next((x["href"] for x in body.get("servers_links", []) if x["rel"] == "next"), "")
            return total

        bail = time.perf_counter() + 300
        while (active := await active_count()) < count:
            if time.perf_counter() > bail:
                raise RuntimeError(f"only {active} of {count} servers ACTIVE after 300 s")
            await asyncio.sleep(0.2)
        all_active = time.perf_counter() - started
        t = time.perf_counter()
        async with session.get(f"{url}/compute/v2.1/servers/detail?limit=1000") as resp:
            await resp.read()
        list_ms = (time.perf_counter() - t) * 1000
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return {
        "servers": count,
        "create_requests_per_s": round(count / created, 1),
        "all_active_seconds": round(all_active, 2),
        "detail_list_1000_ms": round(list_ms, 1),
        "devcloud_rss_mb": round(rss_kb / 1024, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="devcloud_servers")
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--raw-seconds", type=float, default=5.0)
    p.add_argument("--scale", type=int, default=10000, help="servers held at once in the scale phase (0 skips)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # the default cloud holds about 1,000 small servers; give the scale phase room for 10,000 and more
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        config["hypervisors"] = [{"az": "nova", "count": max(16, args.scale // 50 + 1), "vcpus": 64,
                                  "ram_mb": 262144, "disk_gb": 4000}]
        big = Path(tmp) / "cloud.yaml"
        big.write_text(yaml.safe_dump(config))
        cloud = start_devcloud(Path(tmp), time_factor=0.0, config=big)
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
            admin.session.put(f"{cloud.url}/compute/v2.1/os-quota-sets/{demo.current_project_id}",
                              endpoint_filter=None, json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}})
            scale = (asyncio.run(scale_phase(cloud.url, demo.auth_token, args.scale, 16, cloud.process.pid))
                     if args.scale else {})
        finally:
            stop_devcloud(cloud)
    result = {"sdk_create_to_active": sdk, "raw_server_get": raw, "scale": scale}
    print("devcloud servers through openstacksdk (zero boot time):")
    for k, v in sdk.items():
        print(f"  {k:32} {v}")
    print("devcloud raw GET /servers/{id} (aiohttp client, 16 connections):")
    for k, v in raw.items():
        print(f"  {k:32} {v}")
    if scale:
        print(f"devcloud holding {args.scale} servers (raw HTTP creates, 16 connections):")
        for k, v in scale.items():
            print(f"  {k:32} {v}")
    return result


if __name__ == "__main__":
    main()
