"""Magnum API throughput: requests/s and p50/p99 latency of Cove's API with real Keystone-style token validation
(the API validates the caller's token against the devcloud's Keystone once, caches it for its life and polls
revocation events), 16 concurrent connections, on the whole local stack (`make run`'s configuration, the devcloud
with a zero boot time).

Scenarios, in order:
  template create   (seed) 100 cluster templates, POST /v1/clustertemplates, 201s per second
  cluster create    1,000 clusters of 1 master + 1 worker, POST /v1/clusters: accepted creates (202s) per second
  template list     GET /v1/clustertemplates (the 100 templates in one page), for --duration seconds
  cluster list      GET /v1/clusters (the 1,000 clusters in one page)
  cluster show      GET /v1/clusters/<uuid>, cycling over the 1,000 clusters

By default the stack runs the two services a create goes through before its 202 (the scheduler, whose admission
decision a create waits for, and the API); the provisioner, certs and accounting services are left out so that
provisioning 1,000 clusters (many minutes of both cores) does not compete with the API being measured.
``--full-stack`` runs all five and waits (bounded by --settle) for provisioning to finish before the reads.

Load comes from a SEPARATE process (a minimal keep-alive HTTP/1.1 client, benchmarks/http1.py, with --concurrency
connections, each running requests back to back), so the client does not share the API's event loop or core.
Before the read scenarios the benchmark waits (bounded by --settle) until the provisioner has finished the seeded
clusters, so reads are measured on a quiet stack; it says so when it did not settle.

    .venv/bin/python -m benchmarks api [--templates 100] [--clusters 1000] [--concurrency 16] [--duration 5]
                                       [--full-stack] [--profile DIR]   # py-spy (test extra) the API process per scenario
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from benchmarks import counters, cpu, http1
from benchmarks.clusters import demo_with_unlimited_cloud_quotas
from deploy.local.stack import SERVICES, LocalStack

HEADERS = {"OpenStack-API-Version": "container-infra latest", "Accept": "application/json"}
TARGET_LIST_RPS = 2000
TARGET_LIST_P99_MS = 50
TARGET_CREATE_RPS = 500


# ----------------------------------------------------------------------------------------------- the load process


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario: ``concurrency`` workers issue requests back to back until ``count`` requests were sent
    or ``duration`` seconds passed (after ``warmup`` seconds not counted)."""
    urls: list[str] = spec["urls"]
    method: str = spec["method"]
    body: dict[str, Any] | None = spec.get("body")
    # The JSON text once; each request only substitutes its index (the load should cost the shared cores little).
    body_text = json.dumps(body) if body is not None else None
    expect: int = spec["expect"]
    count: int | None = spec.get("count")
    concurrency: int = spec["concurrency"]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    created: list[str] = []
    bytes_read = 0
    next_index = 0
    connections = [http1.Connection(urls[0], spec["headers"]) for _ in range(concurrency)]
    try:
        # Warm up: the connections, and the API's token cache (the first request validates the token).
        warm_until = time.perf_counter() + spec.get("warmup", 0.0)

        async def warm(conn: http1.Connection) -> None:
            while time.perf_counter() < warm_until:
                await conn.request("GET", spec.get("warm_url") or urls[0])

        if spec.get("warmup"):
            await asyncio.gather(*(warm(conn) for conn in connections))
        # CPU of every process of the machine under test, from here (after the warm-up) to the last answer.
        cpu_before = cpu.snapshot(spec["cpu_groups"])
        nats_before = counters.nats_messages(spec.get("nats_monitor"))
        started = time.perf_counter()
        deadline = started + spec["duration"]

        async def worker(conn: http1.Connection) -> None:
            nonlocal next_index, bytes_read
            while time.perf_counter() < deadline:
                i = next_index
                if count is not None and i >= count:
                    return
                next_index += 1
                url = urls[i % len(urls)]
                payload = body_text.replace("{i}", str(i)).encode() if body_text is not None else None
                t = time.perf_counter()
                try:
                    status, data = await conn.request(method, url, payload)
                except (OSError, asyncio.IncompleteReadError, http1.HttpError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t)
                bytes_read += len(data)
                if status != expect:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                elif spec.get("collect_uuid"):
                    created.append(json.loads(data)["uuid"])

        await asyncio.gather(*(worker(conn) for conn in connections))
        elapsed = time.perf_counter() - started
        cpu_after = cpu.snapshot(spec["cpu_groups"])
        nats_after = counters.nats_messages(spec.get("nats_monitor"))
    finally:
        for conn in connections:
            await conn.close()
    latencies.sort()
    ok = len(latencies) - sum(v for k, v in errors.items() if k.isdigit())
    return {
        "scenario": spec["name"],
        "requests": len(latencies),
        "ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(elapsed, 3),
        "rps": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "avg_kb": round(bytes_read / max(1, len(latencies)) / 1024, 1),
        "cpu_ms_per_request": cpu.per_request_ms(cpu_before, cpu_after, len(latencies)),
        "nats_msgs_per_request": (round((nats_after - nats_before) / len(latencies), 2)
                                  if nats_before is not None and nats_after is not None and latencies else None),
        "created": created,
    }


def run_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point in the load process."""
    return uvloop.run(_drive(spec))  # the load shares the 2 cores with the stack: spend as little as we can


# ----------------------------------------------------------------------------------------------- the stack side


async def _settle(api: str, token: str, expected: int, limit: float) -> tuple[bool, float, dict[str, int]]:
    """Wait until none of the clusters is still being created (bounded). Returns (settled, seconds, by status)."""
    started = time.perf_counter()
    counts: dict[str, int] = {}
    async with aiohttp.ClientSession(headers={**HEADERS, "X-Auth-Token": token}) as s:
        while True:
            counts = {}
            link: str | None = f"{api}/clusters?limit=1000"
            while link:
                async with s.get(link) as r:
                    body = await r.json()
                for c in body["clusters"]:
                    counts[c["status"]] = counts.get(c["status"], 0) + 1
                link = body.get("next")
            busy = counts.get("CREATE_IN_PROGRESS", 0)
            elapsed = time.perf_counter() - started
            if busy == 0 and sum(counts.values()) >= expected:
                return True, elapsed, counts
            if elapsed > limit:
                return False, elapsed, counts
            await asyncio.sleep(1.0)


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'scenario':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7} {'KB/resp':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scenario']:34} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                     f"{r['requests']:>9} {r['errors']:>7} {r['avg_kb']:>8.1f}")
    return "\n".join(lines)


def _profiler(stack: LocalStack, out_dir: str | None, name: str) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` of the API and scheduler processes (collapsed stacks in ``out_dir``), when asked for."""
    if not out_dir:
        return []
    spies = []
    for child in stack.children:
        if child.name not in ("api", "scheduler"):
            continue
        out = Path(out_dir) / f"{name.split(' (')[0].replace(' ', '_')}.{child.name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).parent / "py-spy"
        spies.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(child.proc.pid), "--format", "raw", "--rate", "250", "--nonblocking",
             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def _cpu_groups(stack: LocalStack, load_pid: int) -> dict[str, list[int]]:
    """The processes whose CPU each scenario reports: every service, the devcloud (its Keystone validates tokens
    and creates each cluster's trust), NATS, PostgreSQL (an embedded one; a server named by COVE_DATABASE_URL is not
    ours to measure) and the load process."""
    groups = {child.name: [child.proc.pid] for child in stack.children}
    if stack.nats is not None and stack.nats.pid is not None:
        groups["nats"] = [stack.nats.pid]
    if stack.postgres is not None and stack.postgres.pid is not None:
        groups["postgres"] = [stack.postgres.pid]
    groups["load"] = [load_pid]
    return groups


def run(stack: LocalStack, pool: concurrent.futures.Executor, args: argparse.Namespace) -> dict[str, Any]:
    demo, _ = asyncio.run(demo_with_unlimited_cloud_quotas(stack.devcloud_url))
    api = stack.api_url
    headers = {**HEADERS, "X-Auth-Token": demo}
    base = {"headers": headers, "concurrency": args.concurrency,
            "nats_monitor": stack.nats.monitor_url if stack.nats is not None else None}
    results: list[dict[str, Any]] = []

    groups = _cpu_groups(stack, pool.submit(os.getpid).result())

    def scenario(**spec: Any) -> dict[str, Any]:
        spies = _profiler(stack, args.profile, spec["name"])
        try:
            out = pool.submit(run_scenario, {**base, **spec, "cpu_groups": groups}).result()
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        results.append(out)
        print(f"   {out['scenario']}: {out['rps']} req/s, p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, "
              f"{out['requests']} requests, {out['errors']} errors {out['error_kinds'] or ''}", flush=True)
        print("      CPU ms per request: " + ", ".join(f"{k} {v}" for k, v in out["cpu_ms_per_request"].items())
              + (f"; NATS messages per request: {out['nats_msgs_per_request']}"
                 if out["nats_msgs_per_request"] is not None else ""), flush=True)
        return out

    template = {"name": "bench-k8s-{i}", "coe": "kubernetes", "image_id": "fedora-coreos",
                "external_network_id": "public", "flavor_id": "m1.tiny", "master_flavor_id": "m1.tiny",
                "labels": {"kube_tag": "v1.30.1", "bench": "{i}"}}
    seeded = scenario(name=f"template create ({args.templates}, seed)", method="POST",
                      urls=[f"{api}/clustertemplates"], body=template, expect=201, count=args.templates,
                      duration=300.0, collect_uuid=True)
    if seeded["ok"] < args.templates:
        raise RuntimeError(f"only {seeded['ok']} of {args.templates} templates created: {seeded['error_kinds']}")
    template_id = seeded["created"][0]
    cluster = {"name": "bench-{i}", "cluster_template_id": template_id, "master_count": 1, "node_count": 1}
    creates = scenario(name=f"cluster create ({args.clusters}, 202s)", method="POST", urls=[f"{api}/clusters"],
                       body=cluster, expect=202, count=args.clusters, duration=600.0, collect_uuid=True,
                       warmup=0.5, warm_url=f"{api}/clustertemplates?limit=1")
    if creates["ok"] < args.clusters:
        raise RuntimeError(f"only {creates['ok']} of {args.clusters} clusters accepted: {creates['error_kinds']}")
    settled, waited, counts = True, 0.0, dict[str, int]()
    if args.full_stack:
        settled, waited, counts = asyncio.run(_settle(api, demo, args.clusters, args.settle))
        print(f"   provisioning {'settled' if settled else 'NOT settled'} after {waited:.1f} s: {counts}",
              flush=True)
    reads = {"duration": args.duration, "warmup": 0.5, "expect": 200, "method": "GET"}
    scenario(name=f"template list ({args.templates} templates)", urls=[f"{api}/clustertemplates"], **reads)
    scenario(name=f"cluster list ({args.clusters} clusters)", urls=[f"{api}/clusters"], **reads)
    scenario(name="cluster show", urls=[f"{api}/clusters/{c}" for c in creates["created"]], **reads)
    for r in results:
        r.pop("created", None)
    return {"scenarios": results, "full_stack": args.full_stack, "settled": settled, "settle_seconds": round(waited, 1), "statuses": counts}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="api")
    p.add_argument("--templates", type=int, default=100)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per read scenario")
    p.add_argument("--profile", metavar="DIR", help="py-spy the API and scheduler per scenario into DIR (raw stacks)")
    p.add_argument("--full-stack", action="store_true", help="also run the provisioner, certs and accounting")
    p.add_argument("--settle", type=float, default=300.0,
                   help="with --full-stack: max seconds to wait for provisioning to finish before the reads")
    args = p.parse_args(argv)
    os.environ["COVE_DEFAULT_CLUSTER_QUOTA"] = str(max(100_000, args.clusters * 2))
    ctx = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as tmp,
        concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool,
    ):
        pool.submit(time.sleep, 0).result()  # start the load process before the stack
        services = SERVICES if args.full_stack else tuple(s for s in SERVICES if s.name in ("scheduler", "api"))
        stack = LocalStack(Path(tmp) / "state", services=services, time_factor=0.0, timeout=120.0)
        stack.start()
        try:
            result = run(stack, pool, args)
        finally:
            stack.stop()
    print()
    print(_table(result["scenarios"]))
    print(f"targets: lists >= {TARGET_LIST_RPS} req/s with p99 < {TARGET_LIST_P99_MS} ms; "
          f"cluster creates >= {TARGET_CREATE_RPS} accepted/s ({args.concurrency} connections)")
    cores = os.cpu_count() or 1
    print(f"CPU per request across every process on this machine, and the ceiling it sets on {cores} cores:")
    for r in result["scenarios"]:
        total = sum(r["cpu_ms_per_request"].values())
        r["cpu_ms_total"] = round(total, 3)
        ceiling = cores * 1000 / total if total else float("inf")
        print(f"   {r['scenario']:34} {total:6.2f} ms -> at most {ceiling:8.0f} req/s")
    return result


if __name__ == "__main__":
    main()
