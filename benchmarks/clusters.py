"""End-to-end cluster throughput: N clusters of 1 master + 2 workers created at once through Cove's Magnum API on the
whole local stack (`make run`'s configuration: its own NATS with sync_interval always, embedded PostgreSQL unless
COVE_DATABASE_URL is set, the devcloud with a zero boot time, the five services), then deleted at once.

Prints clusters/s to CREATE_COMPLETE and p50/p99 from POST to CREATE_COMPLETE, and the same for delete
(DELETE to gone from the list). Times are observed by polling the API's list every 50 ms.

    .venv/bin/python -m benchmarks clusters [--clusters 30] [--concurrency 16]
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

import aiohttp

from deploy.local.stack import LocalStack

HEADERS = {"OpenStack-API-Version": "container-infra latest"}


async def keystone_token(devcloud: str, user: str, password: str, project: str) -> str:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    async with aiohttp.ClientSession() as s, s.post(f"{devcloud}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


async def demo_with_unlimited_cloud_quotas(devcloud: str) -> tuple[str, str]:
    """A token of the devcloud's ``demo`` user and its project id, after lifting the project's compute and network
    quotas in the cloud (the cloud's quotas are not what a benchmark measures)."""
    demo = await keystone_token(devcloud, "demo", "demo-pass", "demo")
    admin = await keystone_token(devcloud, "admin", "admin-pass", "admin")
    async with aiohttp.ClientSession(headers={"X-Auth-Token": admin}) as a:
        async with a.get(f"{devcloud}/identity/v3/auth/tokens", headers={"X-Subject-Token": demo}) as r:
            pid = (await r.json())["token"]["project"]["id"]
        async with a.put(f"{devcloud}/compute/v2.1/os-quota-sets/{pid}",
                         json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}}) as r:
            assert r.status == 200, await r.text()
        async with a.put(f"{devcloud}/networking/v2.0/quotas/{pid}",
                         json={"quota": {"network": -1, "subnet": -1, "port": -1, "router": -1,
                                         "security_group": -1, "security_group_rule": -1,
                                         "floatingip": -1}}) as r:
            assert r.status == 200, await r.text()
    return demo, pid


def summary(durations: list[float], elapsed: float) -> dict[str, Any]:
    durations.sort()
    return {
        "clusters": len(durations),
        "seconds": round(elapsed, 2),
        "clusters_per_s": round(len(durations) / elapsed, 2),
        "p50_s": round(statistics.median(durations), 3),
        "p99_s": round(durations[max(0, int(len(durations) * 0.99) - 1)], 3),
    }


async def run(stack: LocalStack, count: int, concurrency: int) -> dict[str, Any]:
    demo, pid = await demo_with_unlimited_cloud_quotas(stack.devcloud_url)
    admin = await keystone_token(stack.devcloud_url, "admin", "admin-pass", "admin")
    api = stack.api_url
    async with aiohttp.ClientSession(headers={**HEADERS, "X-Auth-Token": demo}) as s:
        template = {"name": "bench-k8s", "coe": "kubernetes", "image_id": "fedora-coreos",
                    "external_network_id": "public", "flavor_id": "m1.tiny", "master_flavor_id": "m1.tiny",
                    "floating_ip_enabled": False}
        async with s.post(f"{api}/clustertemplates", json=template) as r:
            assert r.status == 201, await r.text()
            template_id = (await r.json())["uuid"]

        async def statuses() -> dict[str, str]:
            out: dict[str, str] = {}
            link: str | None = f"{api}/clusters?limit=1000"
            while link:
                async with s.get(link) as r:
                    body = await r.json()
                out.update({c["uuid"]: c["status"] for c in body["clusters"]})
                link = body.get("next")
            return out

        posted: dict[str, float] = {}
        done: dict[str, float] = {}
        failed: dict[str, str] = {}
        sem = asyncio.Semaphore(concurrency)

        async def create(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                body = {"name": f"bench-{i}", "cluster_template_id": template_id, "master_count": 1, "node_count": 2}
                async with s.post(f"{api}/clusters", json=body) as r:
                    assert r.status == 202, await r.text()
                    posted[(await r.json())["uuid"]] = t

        started = time.perf_counter()
        creates = asyncio.gather(*(create(i) for i in range(count)))
        while len(done) + len(failed) < count:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            for cid, status in (await statuses()).items():
                if cid in posted and cid not in done and cid not in failed:
                    if status == "CREATE_COMPLETE":
                        done[cid] = now
                    elif status.endswith("FAILED"):
                        failed[cid] = status
            if now - started > 600:
                raise RuntimeError(f"{len(done)} of {count} clusters complete after 600 s")
        await creates
        if failed:
            raise RuntimeError(f"{len(failed)} clusters failed: {list(failed.items())[:3]}")
        create_result = summary([done[c] - posted[c] for c in posted], max(done.values()) - started)

        deleted_at: dict[str, float] = {}
        gone: dict[str, float] = {}

        async def delete(cid: str) -> None:
            async with sem:
                t = time.perf_counter()
                async with s.delete(f"{api}/clusters/{cid}") as r:
                    assert r.status == 204, await r.text()
                    deleted_at[cid] = t

        started = time.perf_counter()
        deletes = asyncio.gather(*(delete(c) for c in posted))
        while len(gone) < count:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            present = await statuses()
            for cid in posted:
                if cid in deleted_at and cid not in gone and cid not in present:
                    gone[cid] = now
            if now - started > 600:
                raise RuntimeError(f"{len(gone)} of {count} clusters deleted after 600 s")
        await deletes
        delete_result = summary([gone[c] - deleted_at[c] for c in posted], max(gone.values()) - started)
        ledger = f"{stack.devcloud_url}/admin/ledger?live=true&kind=server&project_id={pid}"
        async with aiohttp.ClientSession(headers={"X-Auth-Token": admin}) as a, a.get(ledger) as r:
            live = (await r.json())["count"]
    return {"create": create_result, "delete": delete_result, "servers_left": live}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="clusters")
    p.add_argument("--clusters", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    os.environ.setdefault("COVE_DEFAULT_CLUSTER_QUOTA", str(max(1000, args.clusters * 2)))
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "state", time_factor=0.0, timeout=120.0)
        stack.start()
        try:
            result = asyncio.run(run(stack, args.clusters, args.concurrency))
        finally:
            stack.stop()
    for phase in ("create", "delete"):
        r = result[phase]
        print(f"{phase:7} {r['clusters']} clusters of 1 master + 2 workers: {r['clusters_per_s']} clusters/s, "
              f"p50 {r['p50_s']} s, p99 {r['p99_s']} s (all in {r['seconds']} s)")
    print(f"servers left in the devcloud's ledger after delete: {result['servers_left']}")
    return result


if __name__ == "__main__":
    main()
