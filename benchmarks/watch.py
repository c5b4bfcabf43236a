"""The provisioner's watch (services/provisioner/watch.py) against a devcloud holding 10,000 Cove nodes: the time
from a cloud change (a server fault, timed by the devcloud's ledger) to the watch recording it and kicking the
cluster's task (p50, p99 over 1,000 injected changes), and the provisioner's CPU per watched node per minute while
the nodes are quiet (the watch's listing, its decoding and comparison; the devcloud runs in its own process): once
with the servers' listing alone, once with everything the watch does (a volume per node and a load balancer per
cluster listed every ``resource_interval``, a full volume sweep every ``volume_sweep``, the COE checks' kicks).

    .venv/bin/python -m benchmarks watch [--nodes 10000] [--changes 1000] [--cpu-seconds 30] [--interval 0.2]

Then, on the whole local stack (NATS, PostgreSQL, the devcloud, the five services; ``--full-changes`` 0 skips
it), the user-visible figure: one Kubernetes cluster of 1 master and ``--full-changes`` workers, each worker failed
in turn, timed from the ledger's ERROR to the first ``GET /v1/clusters/{uuid}`` whose ``health_status_reason`` says
that node is not Ready (polled every 10 ms): the watch, the cluster's task, its ClusterHealthChanged through NATS and
the API's projection.

    .venv/bin/python -m benchmarks watch --nodes 1000 --changes 200 --full-changes 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import openstack
import yaml

from deploy.devcloud.config import DEFAULT_CONFIG
from deploy.devcloud.process import start_devcloud, stop_devcloud
from services.provisioner.cloud import CloudSettings
from services.provisioner.health import Observed
from services.provisioner.watch import Watched, Watcher, WatchSettings

PER_CLUSTER = 10


async def _populate(url: str, token: str, nodes: int) -> list[str]:
    """``nodes`` servers in clusters of PER_CLUSTER (one multi-create each), every one a Cove node by metadata."""
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.96"}
    clusters = [str(uuid.uuid4()) for _ in range(max(1, nodes // PER_CLUSTER))]
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{url}/compute/v2.1/flavors/detail") as resp:
            flavor = next(f["id"] for f in (await resp.json())["flavors"] if f["name"] == "m1.tiny")
        async with session.get(f"{url}/image/v2/images?name=ubuntu-22.04") as resp:
            image = (await resp.json())["images"][0]["id"]
        queue = list(clusters)

        async def worker() -> None:
            while queue:
                cid = queue.pop()
                body = {"server": {"name": f"w-{cid[:8]}-node", "flavorRef": flavor, "imageRef": image,
                                   "networks": "none", "min_count": PER_CLUSTER, "max_count": PER_CLUSTER,
                                   "metadata": {"cove_cluster_id": cid, "cove_nodegroup": "default-worker",
                                                "cove_role": "worker"}}}
                async with session.post(f"{url}/compute/v2.1/servers", json=body) as resp:
                    assert resp.status == 202, await resp.text()

        await asyncio.gather(*(worker() for _ in range(8)))
    return clusters


async def _populate_resources(url: str, token: str, project_id: str, clusters: list[str]) -> tuple[int, int]:
    """What a real cluster has besides its servers: a volume per node (``cove_cluster_id`` metadata) and a load
    balancer per cluster (the cluster's tag), so that the watch's resource listings cost what they would."""
    from services.provisioner import model

    headers = {"X-Auth-Token": token}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{url}/networking/v2.0/networks", json={"network": {"name": "bench-lb"}}) as resp:
            network = (await resp.json())["network"]["id"]
        async with session.post(f"{url}/networking/v2.0/subnets", json={"subnet": {
                "name": "bench-lb", "network_id": network, "cidr": "10.77.0.0/16", "ip_version": 4}}) as resp:
            subnet = (await resp.json())["subnet"]["id"]
        jobs: list[tuple[str, dict[str, Any]]] = []
        for cid in clusters:
            jobs.append((f"{url}/load-balancer/v2.0/lbaas/loadbalancers", {"loadbalancer": {
                "name": f"w-{cid[:8]}-api-lb", "vip_subnet_id": subnet, "tags": [model.cluster_tag(cid)]}}))
            jobs += [(f"{url}/volume/v3/{project_id}/volumes", {"volume": {
                "name": f"w-{cid[:8]}-node-{i}-docker", "size": 1, "metadata": {"cove_cluster_id": cid}}})
                for i in range(PER_CLUSTER)]
        made = {"volume": 0, "loadbalancer": 0}

        async def worker() -> None:
            while jobs:
                where, body = jobs.pop()
                async with session.post(where, json=body) as resp:
                    assert resp.status in (201, 202), await resp.text()
                made[next(iter(body))] += 1

        await asyncio.gather(*(worker() for _ in range(8)))
    return made["volume"], made["loadbalancer"]


async def _quiet_cpu(watcher: Watcher, seconds: float) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, listings) of a quiet watch over ``seconds``, after its first listings."""
    while watcher.stats.listings < 3:  # the first listing (the lookback) takes every node in: not measured
        await asyncio.sleep(0.1)
    listings0, cpu0, wall0 = watcher.stats.listings, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return time.process_time() - cpu0, time.perf_counter() - wall0, watcher.stats.listings - listings0


async def _server_ids(url: str, token: str) -> list[str]:
    ids: list[str] = []
    link = f"{url}/compute/v2.1/servers?status=ACTIVE&limit=1000"
    async with aiohttp.ClientSession(headers={"X-Auth-Token": token}) as session:
        while link:
            async with session.get(link) as resp:
                body = await resp.json()
            ids += [s["id"] for s in body["servers"]]
            link = next((x["href"] for x in body.get("servers_links", []) if x["rel"] == "next"), "")
    return ids


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(url: str, demo: openstack.connection.Connection, admin: openstack.connection.Connection,
              args: argparse.Namespace) -> dict[str, Any]:
    demo_token, admin_token = str(demo.auth_token), str(admin.auth_token)
    clusters = await _populate(url, demo_token, args.nodes)
    deadline = time.monotonic() + 300
    while len(ids := await _server_ids(url, demo_token)) < args.nodes and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    volumes, lbs = await _populate_resources(url, demo_token, str(demo.current_project_id), clusters)
    watched = {cid: Watched("CREATE_COMPLETE") for cid in clusters}

    async def load() -> dict[str, Watched]:
        return watched

    seen_at: dict[str, datetime] = {}
    kicks = 0

    def kick(cluster_id: str) -> None:
        nonlocal kicks
        kicks += 1

    def on_change(obs: Observed) -> None:
        if obs.status == "ERROR":
            seen_at.setdefault(obs.server_id, datetime.now(UTC))

    # the servers alone first (no resource listing, no COE check kicks): the figure before issue 13's last part
    servers_only = Watcher(cloud_settings=CloudSettings(auth_url=f"{url}/identity"), load_watched=load, kick=kick,
                           settings=WatchSettings(interval=args.interval, resource_interval=0, api_interval=0))
    servers_only.start()
    try:
        cpu_servers, wall_servers, _ = await _quiet_cpu(servers_only, args.cpu_seconds)
    finally:
        await servers_only.stop()
    watcher = Watcher(cloud_settings=CloudSettings(auth_url=f"{url}/identity"), load_watched=load, kick=kick,
                      settings=WatchSettings(interval=args.interval))
    watcher.on_change = on_change
    watcher.start()
    try:
        cpu, wall, listings = await _quiet_cpu(watcher, args.cpu_seconds)
        quiet_listing_ms = watcher.stats.last_listing_seconds * 1000
        resource_listings, api_kicks = watcher.stats.resource_listings, watcher.stats.api_kicks

        victims = ids[: args.changes]
        async with aiohttp.ClientSession(headers={"X-Auth-Token": admin_token}) as session:
            for sid in victims:  # one fault every ~10 ms: changes arrive while listings run
                async with session.post(f"{url}/admin/faults/servers",
                                        json={"name": sid, "action": "error", "after_seconds": 0}) as resp:
                    assert resp.status == 201, await resp.text()
                await asyncio.sleep(0.01)
            end = time.monotonic() + 30
            while len(seen_at) < len(victims) and time.monotonic() < end:
                await asyncio.sleep(0.1)
            async with session.get(f"{url}/admin/ledger?kind=server") as resp:
                records = {r["id"]: r for r in (await resp.json())["records"]}
    finally:
        await watcher.stop()
    latencies = []
    for sid in victims:
        if sid not in seen_at:
            continue
        failed_at = next(datetime.fromisoformat(e["at"]) for e in records[sid]["events"] if e["status"] == "ERROR")
        latencies.append((seen_at[sid] - failed_at).total_seconds())
    return {
        "nodes": len(ids),
        "clusters": len(clusters),
        "interval_s": args.interval,
        "changes_injected": len(victims),
        "changes_seen": len(latencies),
        "change_to_kick_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "change_to_kick_p99_ms": round(_pct(latencies, 0.99) * 1000, 1) if latencies else None,
        "change_to_kick_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "quiet_listings_per_s": round(listings / wall, 2),
        "quiet_listing_ms": round(quiet_listing_ms, 2),
        "cpu_percent_of_a_core": round(100 * cpu / wall, 2),
        "cpu_ms_per_node_per_minute": round(cpu / wall * 60 / max(1, len(ids)) * 1000, 4),
        "volumes": volumes,
        "load_balancers": lbs,
        "resource_listings": resource_listings,
        "api_check_kicks": api_kicks,
        "servers_only_cpu_percent": round(100 * cpu_servers / wall_servers, 2),
        "servers_only_cpu_ms_per_node_per_minute": round(cpu_servers / wall_servers * 60 / max(1, len(ids)) * 1000,
                                                         4),
    }


async def full_phase(stack: Any, changes: int) -> dict[str, Any]:
    """The whole path on the local stack: a cloud change to the API's health_status_reason (see the docstring)."""
    from benchmarks.cluster_scale import SUBNET_CIDR
    from benchmarks.clusters import HEADERS, keystone_token
    from services.provisioner.model import cluster_prefix

    api, dc = stack.api_url, stack.devcloud_url
    demo = await keystone_token(dc, "demo", "demo-pass", "demo")
    admin = await keystone_token(dc, "admin", "admin-pass", "admin")
    async with (aiohttp.ClientSession(headers={**HEADERS, "X-Auth-Token": demo}) as s,
                aiohttp.ClientSession(headers={"X-Auth-Token": admin}) as a):
        async with s.post(f"{api}/clustertemplates", json={
                "name": "watch-bench", "coe": "kubernetes", "image_id": "ubuntu-22.04", "external_network_id": "public",
                "flavor_id": "m1.tiny", "master_flavor_id": "m1.tiny", "floating_ip_enabled": False,
                "master_lb_enabled": False, "labels": {"fixed_subnet_cidr": SUBNET_CIDR}}) as r:
            assert r.status == 201, await r.text()
            template = (await r.json())["uuid"]
        async with s.post(f"{api}/clusters", json={"name": "watch-bench", "cluster_template_id": template,
                                                   "master_count": 1, "node_count": changes}) as r:
            assert r.status == 202, await r.text()
            cid = (await r.json())["uuid"]
        show = f"{api}/clusters/{cid}"
        deadline = time.monotonic() + 600
        while True:
            async with s.get(show) as r:
                cluster = await r.json()
            if cluster["status"] == "CREATE_COMPLETE" and cluster.get("health_status") == "HEALTHY":
                break
            if cluster["status"].endswith("FAILED") or time.monotonic() > deadline:
                raise RuntimeError(f"cluster {cluster['status']}: {cluster.get('status_reason')}")
            await asyncio.sleep(0.5)
        prefix = cluster_prefix("watch-bench", cid)
        async with a.get(f"{dc}/admin/ledger", params={"kind": "server", "live": "true"}) as r:
            workers = [x for x in (await r.json())["records"] if x["name"].startswith(prefix + "-node-")]
        seen: dict[str, datetime] = {}
        for w in workers:
            async with a.post(f"{dc}/admin/faults/servers",
                              json={"name": w["id"], "action": "error", "after_seconds": 0}) as r:
                assert r.status == 201, await r.text()
            key, end = f"{w['name']}.Ready", time.monotonic() + 30
            while time.monotonic() < end:
                async with s.get(show) as r:
                    reason = (await r.json()).get("health_status_reason") or {}
                if reason.get(key) == "False":
                    seen[w["id"]] = datetime.now(UTC)
                    break
                await asyncio.sleep(0.01)
        async with a.get(f"{dc}/admin/ledger", params={"kind": "server"}) as r:
            records = {x["id"]: x for x in (await r.json())["records"]}
    latencies = [(at - datetime.fromisoformat(next(e["at"] for e in records[sid]["events"]
                                                   if e["status"] == "ERROR"))).total_seconds()
                 for sid, at in seen.items()]
    return {
        "cluster_nodes": len(workers) + 1,
        "changes_injected": len(workers),
        "changes_seen": len(latencies),
        "change_to_api_health_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "change_to_api_health_p99_ms": round(_pct(latencies, 0.99) * 1000, 1) if latencies else None,
        "change_to_api_health_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }


def run_full(changes: int, interval: float) -> dict[str, Any]:
    from benchmarks.cluster_scale import TimingModel, benchmark_config
    from deploy.local.stack import LocalStack

    os.environ["COVE_PROVISIONER_WATCH_INTERVAL"] = str(interval)
    os.environ.setdefault("COVE_DEFAULT_CLUSTER_QUOTA", "100")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cloud.yaml"
        config.write_text(yaml.safe_dump(benchmark_config(TimingModel(time_factor=0.05)), sort_keys=False))
        stack = LocalStack(Path(tmp) / "state", timeout=120.0, devcloud_config=config)
        stack.start()
        try:
            return asyncio.run(full_phase(stack, changes))
        finally:
            stack.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="watch")
    p.add_argument("--nodes", type=int, default=10000)
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--cpu-seconds", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--full-changes", type=int, default=200,
                   help="workers of the whole-stack cluster, each failed once (0 skips the phase)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        config["hypervisors"] = [{"az": "nova", "count": max(16, args.nodes // 50 + 1), "vcpus": 64,
                                  "ram_mb": 262144, "disk_gb": 4000}]
        config["quotas"]["default"]["volume"].update(volumes=-1, gigabytes=-1)
        config["quotas"]["default"]["load_balancer"].update(load_balancer=-1)
        config["quotas"]["default"]["network"].update(port=-1)
        big = Path(tmp) / "cloud.yaml"
        big.write_text(yaml.safe_dump(config))
        cloud = start_devcloud(Path(tmp), time_factor=0.0, config=big)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
        try:
            demo = openstack.connect(cloud="cove-demo")
            admin = openstack.connect(cloud="cove-admin")
            admin.session.put(f"{cloud.url}/compute/v2.1/os-quota-sets/{demo.current_project_id}",
                              endpoint_filter=None, json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}})
            result = asyncio.run(run(cloud.url, demo, admin, args))
        finally:
            stop_devcloud(cloud)
    print(f"provisioner watch, {result['nodes']} nodes in {result['clusters']} clusters, one all-tenants "
          f"changes-since listing every {args.interval} s:")
    for k, v in result.items():
        print(f"  {k:32} {v}")
    if args.full_changes:
        full = run_full(args.full_changes, args.interval)
        print("the whole stack: a worker's fault to the API's health_status_reason naming it:")
        for k, v in full.items():
            print(f"  {k:32} {v}")
        result["whole_stack"] = full
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
