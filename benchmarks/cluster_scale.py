"""Time to CREATE_COMPLETE of one cluster of 2, 16, 128, 512 and 1,000 nodes against the cloud's own lower bound.

For each size N, on the whole local stack (`make run`'s configuration: NATS fsyncing, embedded PostgreSQL unless
COVE_DATABASE_URL is set, the devcloud, the five services), one cluster of 1 master and N-1 workers is created
through Cove's Magnum API with a real Keystone token of the devcloud's ``demo`` user. Its time runs from the
create's 202 to the first ``GET /v1/clusters/{uuid}`` that shows CREATE_COMPLETE (a cached show, polled every
50 ms), and is divided by ``lower_bound``: the shortest wall time the devcloud's timing model allows for the
resources the cluster got (read from the devcloud's ledger once it is complete). Then the cluster is deleted and
the next size waits until it is gone. The target is a ratio of 1.1 or less (Magnum at CERN needed 23 minutes for
1,000 nodes).

The timing model (``TimingModel``): every delay fixed (``{dist: fixed}``), so the bound is exact rather than a
mean. In model seconds: a server boots in 60 s once it has a build slot, is deleted in 10 s; a volume takes 10 s
(attach or detach 5 s); a load balancer 60 s and each of its children 5 s; 100 build slots (not scaled by the
time factor). At time factor 1 that is a plausible cloud (1,000 nodes: ten waves of boots, 10 minutes). The time
factor trades the run's length against what is measured: Cove's own overhead (events through NATS and
PostgreSQL, cloud API calls, the provisioner's polling) costs wall seconds that the factor does not scale, so the
measured ratio is ``1 + overhead / (bound x factor)``: a small factor makes the run short but lets that overhead
loom large, a large one makes the run long and drowns it. 0.05 (a boot is 3 s of wall time; the bound for 1,000
nodes is 30 s, the whole default run under two minutes on this 2-core machine) keeps a boot far above a
cloud API call (milliseconds) and the provisioner's poll (0.25 s), so what the ratio shows is Cove's and scales
with the cluster, while a real cloud's 60 s boots would show it twenty times smaller. The table also prints the
overhead in seconds (measured - bound), which does not depend on the factor.

The cloud gets room for 1,000 servers: 32 hypervisors of 64 vCPUs (the flavor is m1.tiny) and no compute,
network, volume or load balancer quota for the ``demo`` project, in a copy of deploy/devcloud/cloud.yaml written
to a temporary directory and handed to the devcloud that LocalStack starts. The template's ``fixed_subnet_cidr``
label is 127.96.0.0/20 (loopback, as everything the local stack hands out): a /24 has addresses for 253 servers.

    .venv/bin/python -m benchmarks cluster_scale [--sizes 2,16] [--coes kubernetes,swarm-mode,mesos]
        [--time-factor 0.05] [--state-dir DIR]
    .venv/bin/python -m benchmarks.cluster_scale --sizes 2,16,128

A create that ends in CREATE_FAILED (or does not complete in time) is reported with its status_reason, and the
benchmark then exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.clusters import HEADERS, keystone_token
from deploy.local.stack import REPO_ROOT, LocalStack

DEFAULT_SIZES = (2, 16, 128, 512, 1000)
COES = ("kubernetes", "swarm-mode", "mesos")
OTHER_COE_SIZES = (16, 512)
"""The sizes Swarm and Mesos clusters are measured at unless --sizes is given (Kubernetes takes DEFAULT_SIZES): what
differs between drivers (a Swarm node's own port and certificate) shows by 512 nodes, and the run stays short."""
POLL_SECONDS = 0.05
TARGET_RATIO = 1.1
SUBNET_CIDR = "127.96.0.0/20"
LEDGER_KINDS = ("server", "volume", "load_balancer", "listener", "pool", "member", "health_monitor")


@dataclass(frozen=True)
class TimingModel:
    """The devcloud's timing model for this benchmark: fixed delays in model seconds, scaled by ``time_factor``
    on the wall clock; ``max_concurrent_builds`` is a count of build slots and is not scaled."""

    time_factor: float = 0.05
    boot_seconds: float = 60.0
    delete_seconds: float = 10.0
    volume_seconds: float = 10.0
    load_balancer_seconds: float = 60.0
    load_balancer_child_seconds: float = 5.0
    max_concurrent_builds: int = 100

    def timing_config(self) -> dict[str, Any]:
        """The devcloud configuration's ``timing`` section."""

        def fixed(value: float) -> dict[str, Any]:
            return {"dist": "fixed", "value": value}

        return {
            "time_factor": self.time_factor,
            "boot_seconds": fixed(self.boot_seconds),
            "delete_seconds": fixed(self.delete_seconds),
            "max_concurrent_builds": self.max_concurrent_builds,
            "volume_seconds": fixed(self.volume_seconds),
            "load_balancer_seconds": fixed(self.load_balancer_seconds),
            "load_balancer_child_seconds": fixed(self.load_balancer_child_seconds),
            "api_rate_limit": 0,
            "token_lifetime_seconds": 86400,
            "seed": 42,
        }

    def describe(self) -> str:
        f = self.time_factor

        def both(model: float) -> str:
            return f"{model:g} s ({model * f:g} s)"

        return (f"devcloud timing model, every delay fixed, model seconds x time factor {f:g} (wall seconds): "
                f"boot {both(self.boot_seconds)}, delete {both(self.delete_seconds)}, "
                f"volume {both(self.volume_seconds)} (attach/detach half), "
                f"load balancer {both(self.load_balancer_seconds)}, "
                f"load balancer child {both(self.load_balancer_child_seconds)}; "
                f"{self.max_concurrent_builds} build slots (not scaled)")


@dataclass(frozen=True)
class Resources:
    """What a cluster holds in the cloud, as far as the timing model delays it."""

    servers: int
    boot_volumes: int = 0
    """Servers booted from a volume: the volume must be ``available`` before the server is created."""
    data_volumes: int = 0
    """Servers that get a volume attached once ACTIVE (at most one each), as Magnum's docker volume."""
    load_balancers: int = 0
    load_balancer_children: int = 0
    """Listeners, pools, members and health monitors over all the load balancers."""


def lower_bound(model: TimingModel, r: Resources) -> float:
    """The shortest wall time, in seconds, in which the devcloud's timing model lets a client that sends every
    request at once (and spends no time of its own) bring up ``r``.

    With S build slots, b = boot, v = volume, L = load balancer, c = load balancer child (model seconds), f the
    time factor, W(n) = ceil(n / S), N servers of which B boot from a volume and D get a data volume, and K
    children over M load balancers::

        servers  = max(W(N) b,  v + W(B) b  if B)      the last server ACTIVE
        volumes  = max(1.5 v  if B,                    a boot volume: created (v), attached (v/2) from the create
                       max(W(D) b, v) + v/2  if D)     a data volume: attached (v/2) once it and its server are ready
        lbs      = L + ceil(K / M) c  if M              a load balancer, then its children one after another
        bound    = f max(servers, volumes, lbs)

    Why: a server boots only in a build slot, for b, so the slots boot at most S servers per b and the N-th
    cannot be ACTIVE before W(N) b even when every server is created at t = 0 (and it is exactly then, as the
    devcloud fills freed slots at once). A server booted from a volume cannot be created before its volume is
    ``available`` (v), so the last of the B such servers is not ACTIVE before v + W(B) b. The devcloud attaches
    a boot volume while the server builds (Nova would before spawning; the devcloud does not make the build
    wait), so that attach only bounds the end by v + v/2. A data volume is attached through Nova, which wants
    the server ACTIVE and the volume ``available``: the earliest the D-th attach ends is max(W(D) b, v) + v/2.
    A load balancer is PENDING_CREATE for L and every child makes it PENDING_UPDATE (immutable: the next write
    is a 409) for c, so one load balancer's children are sequential, after it; the busiest of M holds at least
    ceil(K / M) children. Load balancers, volumes and servers proceed in parallel (a member needs only the
    server's address, which its port has from the create), and networks, subnets, routers, ports and security
    groups are synchronous in the devcloud, so they add nothing. The cluster is complete when all are, hence the
    max. Exact when B and D are 0 or N and there is at most one load balancer; a lower bound otherwise.
    """
    s = max(1, model.max_concurrent_builds)

    def waves(n: int) -> int:
        return math.ceil(n / s)

    b, v = model.boot_seconds, model.volume_seconds
    parts = [waves(r.servers) * b]
    if r.boot_volumes:
        parts += [v + waves(r.boot_volumes) * b, 1.5 * v]
    if r.data_volumes:
        parts.append(max(waves(r.data_volumes) * b, v) + v / 2)
    if r.load_balancers:
        parts.append(model.load_balancer_seconds
                     + math.ceil(r.load_balancer_children / r.load_balancers) * model.load_balancer_child_seconds)
    return max(parts) * model.time_factor


def resources_from_ledger(records: dict[str, list[dict[str, Any]]]) -> Resources:
    """A cluster's live resources, from the devcloud ledger's records by kind (a server booted from a volume has
    ``disk_gb`` 0; every other volume counts as one server's data volume)."""
    servers = records.get("server", [])
    boot = sum(1 for s in servers if not s.get("disk_gb"))
    volumes = len(records.get("volume", []))
    children = sum(len(records.get(k, [])) for k in ("listener", "pool", "member", "health_monitor"))
    return Resources(
        servers=len(servers), boot_volumes=boot, data_volumes=min(len(servers), max(0, volumes - boot)),
        load_balancers=len(records.get("load_balancer", [])), load_balancer_children=children,
    )


def benchmark_config(model: TimingModel, base: Path = REPO_ROOT / "deploy" / "devcloud" / "cloud.yaml",
                     project: str = "demo") -> dict[str, Any]:
    """The default cloud with this timing model, room for 1,000 m1.tiny servers (2,048 vCPUs) and no cloud quota
    for ``project``."""
    raw: dict[str, Any] = yaml.safe_load(base.read_text())
    raw["timing"] = model.timing_config()
    raw["hypervisors"] = [{"az": "nova", "count": 32, "vcpus": 64, "ram_mb": 262144, "disk_gb": 4000}]
    unlimited = {service: {key: -1 for key in values} for service, values in raw["quotas"]["default"].items()}
    raw["quotas"].setdefault("projects", {})[project] = unlimited
    return raw


@dataclass
class SizeResult:
    size: int
    coe: str = "kubernetes"
    status: str = ""
    status_reason: str | None = None
    seconds: float | None = None
    """From the create's 202 to the first GET showing CREATE_COMPLETE."""
    post_seconds: float = 0.0
    resources: Resources | None = None
    bound_seconds: float | None = None
    ratio: float | None = None
    timeline: dict[str, float] = field(default_factory=dict)
    """Seconds after the 202, from the ledger: first and last server created, last server ACTIVE."""
    delete_seconds: float | None = None
    servers_left: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "CREATE_COMPLETE"


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()  # Python 3.11 reads the "Z"


def server_timeline(servers: list[dict[str, Any]], origin: float) -> dict[str, float]:
    """When the cluster's servers were created and became ACTIVE, in seconds after ``origin`` (a Unix time)."""
    if not servers:
        return {}
    created = [_at(s["created_at"]) for s in servers]
    active = [_at(e["at"]) for s in servers for e in s.get("events", []) if e["status"] == "ACTIVE"]
    out = {"first_created": min(created) - origin, "last_created": max(created) - origin}
    if active:
        out["last_active"] = max(active) - origin
    return {k: round(v, 3) for k, v in out.items()}


class Bench:
    def __init__(self, stack: LocalStack, model: TimingModel) -> None:
        self.stack = stack
        self.model = model
        self.api = stack.api_url
        self.cloud = stack.devcloud_url

    async def run(self, plan: list[tuple[str, int]]) -> list[SizeResult]:
        demo = await keystone_token(self.cloud, "demo", "demo-pass", "demo")
        admin = await keystone_token(self.cloud, "admin", "admin-pass", "admin")
        async with (
            aiohttp.ClientSession(headers={**HEADERS, "X-Auth-Token": demo}) as self.s,
            aiohttp.ClientSession(headers={"X-Auth-Token": admin}) as self.admin,
        ):
            async with self.admin.get(f"{self.cloud}/identity/v3/auth/tokens", headers={"X-Subject-Token": demo}) as r:
                self.project_id = (await r.json())["token"]["project"]["id"]
            # A /24, the default subnet's size, holds 253 servers: give the cluster room for 4,093.
            self.templates: dict[str, str] = {}
            for coe in dict.fromkeys(coe for coe, _ in plan):
                template = {"name": f"scale-{coe}", "coe": coe, "image_id": "ubuntu-22.04",
                            "external_network_id": "public", "flavor_id": "m1.tiny", "master_flavor_id": "m1.tiny",
                            "network_driver": "flannel" if coe == "kubernetes" else "docker",
                            # servers only: no floating IP per node (the devcloud's pool holds 250; the bound
                            # counts servers) and no load balancer, as the bound's resources say
                            "floating_ip_enabled": False, "master_lb_enabled": False,
                            "labels": {"fixed_subnet_cidr": SUBNET_CIDR}}
                async with self.s.post(f"{self.api}/clustertemplates", json=template) as r:
                    assert r.status == 201, await r.text()
                    self.templates[coe] = (await r.json())["uuid"]
            results = []
            for coe, size in plan:
                result = await self.one(coe, size)
                results.append(result)
                print(f"   {coe} {size} nodes: {result.status} in {result.seconds} s (bound {result.bound_seconds} s)"
                      + (f": {result.status_reason}" if not result.ok else ""), flush=True)
                if died := self.stack.check_children():
                    raise RuntimeError(f"{', '.join(c.name for c in died)} died; logs in {self.stack.logs}")
            return results

    async def ledger(self, kind: str, live: bool = True) -> list[dict[str, Any]]:
        params = {"kind": kind, "project_id": self.project_id, "live": "true" if live else "false"}
        async with self.admin.get(f"{self.cloud}/admin/ledger", params=params) as r:
            assert r.status == 200, await r.text()
            records: list[dict[str, Any]] = (await r.json())["records"]
            return records

    async def one(self, coe: str, size: int) -> SizeResult:
        result = SizeResult(size, coe=coe)
        body = {"name": f"scale-{size}", "cluster_template_id": self.templates[coe], "master_count": 1,
                "node_count": size - 1}
        posted = time.perf_counter()
        async with self.s.post(f"{self.api}/clusters", json=body) as r:
            assert r.status == 202, await r.text()
            uuid = (await r.json())["uuid"]
        started, origin = time.perf_counter(), time.time()
        result.post_seconds = round(started - posted, 3)
        # Generous: the bound for this size with the cloud's delays, twenty times over, plus two minutes.
        deadline = started + 120 + 20 * lower_bound(self.model, Resources(servers=size))
        show = f"{self.api}/clusters/{uuid}"
        polls = 0
        while True:
            polls += 1
            await asyncio.sleep(max(0.0, started + polls * POLL_SECONDS - time.perf_counter()))
            async with self.s.get(show) as r:
                cluster = await r.json() if r.status == 200 else {"status": f"HTTP {r.status}"}
            now = time.perf_counter()
            result.status = cluster.get("status", "")
            if result.status == "CREATE_COMPLETE":
                result.seconds = round(now - started, 3)
                break
            if result.status.endswith("FAILED") or now > deadline:
                result.status_reason = cluster.get("status_reason") or (
                    f"still {result.status} after {now - started:.0f} s" if now > deadline else None)
                if now > deadline:
                    result.status = f"TIMEOUT ({result.status})"
                break
        records = {kind: await self.ledger(kind) for kind in LEDGER_KINDS}
        result.resources = resources_from_ledger(records)
        # a failed create holds only part of its resources: bound it by the servers it asked for
        wanted = result.resources if result.ok else Resources(servers=size)
        result.bound_seconds = round(lower_bound(self.model, wanted), 3)
        result.timeline = server_timeline(records["server"], origin)
        if result.ok and result.bound_seconds:
            result.ratio = round(result.seconds / result.bound_seconds, 3)  # type: ignore[operator]
        await self.delete(uuid, result)
        return result

    async def delete(self, uuid: str, result: SizeResult) -> None:
        show = f"{self.api}/clusters/{uuid}"
        started = time.perf_counter()
        async with self.s.delete(show) as r:
            assert r.status == 204, await r.text()
        while True:
            await asyncio.sleep(POLL_SECONDS * 2)
            async with self.s.get(show) as r:
                if r.status == 404:
                    break
                status = (await r.json()).get("status")
            if status == "DELETE_FAILED" or time.perf_counter() - started > 600:
                raise RuntimeError(f"cluster {uuid} of {result.size} nodes not deleted: {status}")
        result.delete_seconds = round(time.perf_counter() - started, 3)
        result.servers_left = len(await self.ledger("server"))


def table(results: list[SizeResult]) -> str:
    head = ("coe", "size", "servers", "measured s", "bound s", "ratio", "overhead s", "servers created (s after 202)",
            "last ACTIVE", "delete s")
    rows = [head]
    for r in results:
        t = r.timeline
        created = f"{t['first_created']:.2f} .. {t['last_created']:.2f}" if "first_created" in t else "-"
        rows.append((
            r.coe, str(r.size), str(r.resources.servers if r.resources else "-"),
            f"{r.seconds:.2f}" if r.seconds is not None else r.status,
            f"{r.bound_seconds:.2f}" if r.bound_seconds is not None else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            f"{r.seconds - r.bound_seconds:.2f}" if r.seconds is not None and r.bound_seconds is not None else "-",
            created, f"{t['last_active']:.2f}" if "last_active" in t else "-",
            f"{r.delete_seconds:.2f}" if r.delete_seconds is not None else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])
                     for row in rows)


def services_version() -> str:
    """The commit measured, and whether services/ or proto/ had uncommitted changes (a shared working tree)."""
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{REPO_ROOT} (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "services", "proto").splitlines()
    return f"{commit}" + (f" + {len(dirty)} uncommitted changes in services/ and proto/" if dirty else "")


def parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are positive node counts, e.g. 2,16")
    return sizes


def parse_coes(text: str) -> list[str]:
    coes = [c.strip() for c in text.split(",") if c.strip()]
    if not coes or set(coes) - set(COES):
        raise argparse.ArgumentTypeError(f"COEs are some of {','.join(COES)}")
    return coes


def size_plan(coes: list[str], sizes: list[int] | None) -> list[tuple[str, int]]:
    """(COE, size) in the order they run: every size of one COE, then the next COE's."""
    return [(coe, size) for coe in coes
            for size in (sizes or (DEFAULT_SIZES if coe == "kubernetes" else OTHER_COE_SIZES))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    defaults = TimingModel()
    p = argparse.ArgumentParser(prog="cluster_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_sizes, default=None,
                   help="cluster sizes in nodes (1 master + N-1 workers), comma separated, for every COE "
                        f"(default: {','.join(map(str, DEFAULT_SIZES))} for Kubernetes, "
                        f"{','.join(map(str, OTHER_COE_SIZES))} for the others)")
    p.add_argument("--coes", type=parse_coes, default=list(COES),
                   help=f"the COEs measured, comma separated (default {','.join(COES)})")
    p.add_argument("--time-factor", type=float, default=defaults.time_factor,
                   help="the devcloud's time factor (model seconds -> wall seconds)")
    p.add_argument("--boot-seconds", type=float, default=defaults.boot_seconds, help="model seconds")
    p.add_argument("--build-slots", type=int, default=defaults.max_concurrent_builds,
                   help="the devcloud's max_concurrent_builds")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="keep the stack's state and logs here (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true", help="also print one JSON line per size")
    args = p.parse_args(argv)
    model = TimingModel(time_factor=args.time_factor, boot_seconds=args.boot_seconds,
                        max_concurrent_builds=args.build_slots)
    os.environ.setdefault("COVE_DEFAULT_CLUSTER_QUOTA", "100")
    measured = services_version()
    print(model.describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state_dir or Path(tmp) / "state"
        config = Path(tmp) / "cloud.yaml"
        config.write_text(yaml.safe_dump(benchmark_config(model), sort_keys=False))
        stack = LocalStack(state, timeout=120.0, devcloud_config=config)
        stack.start()
        try:
            results = asyncio.run(Bench(stack, model).run(size_plan(args.coes, args.sizes)))
        finally:
            stack.stop()
    print()
    print(f"time to CREATE_COMPLETE of 1 master + N-1 workers of each COE (services at {measured}) against the "
          "lower bound:")
    print(table(results))
    print(model.describe())
    print(f"target: ratio <= {TARGET_RATIO} (Magnum at CERN: 23 minutes for 1,000 nodes); "
          "overhead = measured - bound, in wall seconds the time factor does not scale")
    out = {"timing_model": asdict(model), "services": measured, "target_ratio": TARGET_RATIO,
           "sizes": [asdict(r) for r in results]}
    if args.json:
        for r in results:
            print(json.dumps({"benchmark": "cluster_scale", **asdict(r), "time_factor": model.time_factor}))
    failed = [r for r in results if not r.ok]
    if any(r.servers_left for r in results):  # a delete that leaves servers behind fails the run too
        print(f"servers left in the ledger after a delete: {[(r.coe, r.size, r.servers_left) for r in results]}",
              file=sys.stderr)
        raise SystemExit(1)
    if failed:
        for r in failed:
            print(f"FAILED: {r.size} nodes: {r.status}: {r.status_reason}", file=sys.stderr)
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
