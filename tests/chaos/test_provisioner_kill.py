"""Chaos: the provisioner is killed with SIGKILL at random points while production-style clusters are created and
then deleted, and restarted after each kill; afterwards nothing in the cloud is duplicated or orphaned.

One test, two forms, chosen by the environment (``make chaos`` runs the full one):

* short (default, part of ``make test``): 6 clusters, 2 kills during the creates and 1 during the deletes;
* full (``COVE_CHAOS=full``): 50 clusters, 8 kills during the creates and 2 during the deletes.

``COVE_CHAOS_SEED`` repeats a run (the seed is printed first, and decides the kill plan); ``COVE_CHAOS_CLUSTERS``,
``COVE_CHAOS_CREATE_KILLS``, ``COVE_CHAOS_DELETE_KILLS`` and ``COVE_CHAOS_TIME_FACTOR`` override a form's numbers.

The shape: a template with master_lb_enabled, floating_ip_enabled, docker_volume_size and a master_lb_allowed_cidrs
label, 1 master + 1 worker (m1.small). Each cluster holds 2 servers, 2 volumes, a load balancer (listener, pool,
monitor, 1 member), 3 floating IPs (one per node, one on the VIP), a network, subnet and router, 2 security groups.
The floating IPs and the routers' gateways come from the external network ``public``, a /24: 253 addresses, 4 per
cluster, so at most 63 clusters fit and 50 do. The devcloud gets the ``demo`` project's quotas for that shape times
the number of clusters, doubled (``cloud_quotas``): a duplicate must show up in the ledger as a duplicate, not be
refused as over quota. Cove's own cluster quota for the project is raised through its API.

The kills: the seeded random picks, per phase, points on the count of the provisioner's own events stored in the
stream (one in each of as many equal slices of what the phase emits without chaos: 6 events per cluster for a
create, 4 for a delete) and a jitter of up to half a second after each, so a kill lands between events, inside
cloud calls and reconcile passes alike, at the start, in the middle and at the end of the phase.
At each point the provisioner child of the LocalStack is killed with SIGKILL and started again the same way
(``LocalStack.restart``); a point already passed while the last restart came up fires as soon as it is up.

Checked, from the devcloud's ledger (the ground truth), Neutron and the stream:
* every cluster ends CREATE_COMPLETE or CREATE_FAILED with a reason (printed);
* no two records of one kind and name of a cluster, live or not (servers, volumes, load balancers and their
  children, networks, subnets, routers, security groups, server groups); no two floating IPs with one purpose
  (Neutron's description ``Cove cluster <uuid>: <name>``), and no floating IP made and dropped during the create;
* a complete cluster has exactly its 2 servers, 2 volumes, 1 load balancer and 3 floating IPs;
* the stream: one ClusterCreateStarted per cluster, one ClusterCreateCompleted or ClusterCreateFailed, at most one
  NodeCreated and one NodeDeleted per server id, a NodeCreated for every server the cloud made for the cluster,
  one ClusterDeleteCompleted per cluster;
* after every cluster is deleted (with kills too): nothing of the kinds a cluster can own is live in the project
  but its ``default`` security group, and nothing is live in the cloud that was not before the test.

A report (seed, kill log, statuses, findings) is written to ``<state dir>/chaos-report.json``, next to the
provisioner's log ``<state dir>/logs/provisioner.log``, where each kill and restart is marked with a ``===`` line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml

from deploy.local.nats import NatsServer
from deploy.local.stack import REPO_ROOT, LocalStack
from proto import subjects
from proto.envelope import Envelope, decode
from services.provisioner import model
from tests.conftest import drop_database, fresh_database, wait_for
from tests.e2e.test_cluster_lifecycle import http

pytestmark = [pytest.mark.integration]

EXTERNAL_ADDRESSES = 253
"""127.24.4.0/24 less the network, broadcast and gateway addresses."""
ALLOWED_CIDRS = "192.0.2.0/24;198.51.100.0/24"
KINDS = ("server", "port", "floating_ip", "volume", "load_balancer", "listener", "pool", "member", "health_monitor",
         "security_group", "network", "subnet", "router", "server_group")
"""What a cluster can own in the cloud (the ledger's kinds)."""
FLAVOR_VCPUS, FLAVOR_RAM_MB = 1, 2048  # m1.small
DOCKER_GB = 2


@dataclass(frozen=True)
class Shape:
    """One cluster, and what it holds in the cloud once complete."""

    masters: int = 1
    workers: int = 1
    load_balancer_children: int = 4
    """listener, pool, health monitor, one member per master."""
    ports: int = 5
    """one per server, the VIP's, the router's interface on the cluster subnet, spare for the VIP's floating IP."""
    security_group_rules: int = 40

    @property
    def servers(self) -> int:
        return self.masters + self.workers

    @property
    def floating_ips(self) -> int:
        return self.servers + 1  # one per node and one on the load balancer's VIP

    @property
    def external_addresses(self) -> int:
        return self.floating_ips + 1  # and the router's gateway


SHAPE = Shape()
CREATE_EVENTS = 2 + 2 * SHAPE.servers
"""ClusterCreateStarted, NodeCreated and NodeBecameActive per server, ClusterCreateCompleted."""
DELETE_EVENTS = 2 + SHAPE.servers
"""ClusterDeleteStarted, NodeDeleted per server, ClusterDeleteCompleted."""


@dataclass(frozen=True)
class Form:
    name: str
    clusters: int
    create_kills: int
    delete_kills: int
    time_factor: float
    deadline: float
    """Seconds each phase (creates, deletes) may take before the test calls the clusters stuck."""
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Form:
        base = FULL if env.get("COVE_CHAOS", "").strip().lower() == "full" else SHORT
        seed = env.get("COVE_CHAOS_SEED", "").strip()
        return replace(
            base,
            clusters=int(env.get("COVE_CHAOS_CLUSTERS") or base.clusters),
            create_kills=int(env.get("COVE_CHAOS_CREATE_KILLS") or base.create_kills),
            delete_kills=int(env.get("COVE_CHAOS_DELETE_KILLS") or base.delete_kills),
            time_factor=float(env.get("COVE_CHAOS_TIME_FACTOR") or base.time_factor),
            seed=int(seed) if seed else random.SystemRandom().randrange(2**32),
        )


SHORT = Form("short", clusters=6, create_kills=2, delete_kills=1, time_factor=0.1, deadline=120.0)
FULL = Form("full", clusters=50, create_kills=8, delete_kills=2, time_factor=0.2, deadline=900.0)
FORM = Form.from_env(os.environ)


def cloud_quotas(clusters: int, shape: Shape = SHAPE) -> dict[str, dict[str, int]]:
    """The devcloud quotas of the project for ``clusters`` clusters of ``shape``, doubled."""
    n = 2 * clusters
    return {
        "compute": {"instances": n * shape.servers, "cores": n * shape.servers * FLAVOR_VCPUS,
                    "ram": n * shape.servers * FLAVOR_RAM_MB, "server_groups": max(10, n),
                    "server_group_members": max(100, n * shape.masters)},
        "network": {"network": n, "subnet": n, "router": n, "port": n * shape.ports,
                    "floatingip": n * shape.floating_ips, "security_group": 2 * n + 1,
                    "security_group_rule": n * shape.security_group_rules},
        "volume": {"volumes": n * shape.servers, "gigabytes": n * shape.servers * DOCKER_GB},
        "load_balancer": {"load_balancer": n, "listener": n, "pool": n, "health_monitor": n,
                          "member": n * shape.masters},
    }


def devcloud_config(path: Path, clusters: int, project: str = "demo") -> Path:
    raw: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy" / "devcloud" / "cloud.yaml").read_text())
    raw["quotas"].setdefault("projects", {})[project] = cloud_quotas(clusters)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def form() -> Form:
    if FORM.clusters * SHAPE.external_addresses > EXTERNAL_ADDRESSES:
        pytest.fail(f"{FORM.clusters} clusters need {FORM.clusters * SHAPE.external_addresses} addresses of the "
                    f"external /24, which has {EXTERNAL_ADDRESSES}")
    print(f"\nchaos: form {FORM.name}, seed {FORM.seed} (COVE_CHAOS_SEED={FORM.seed} repeats the kill plan), "
          f"{FORM.clusters} clusters, {FORM.create_kills}+{FORM.delete_kills} kills, time factor {FORM.time_factor}")
    return FORM


@pytest.fixture(scope="module")
def chaos_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A NATS of our own: the session's stream holds other tests' events that the services must not act on."""
    server = NatsServer(tmp_path_factory.mktemp("chaos-nats"), server_name="cove-chaos")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def chaos_stack(
    form: Form, chaos_nats: NatsServer, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    state = tmp_path_factory.mktemp("chaos-stack")
    db_url = await fresh_database(pg_admin_url)
    saved = {k: os.environ.get(k) for k in ("COVE_NATS_URL", "COVE_DATABASE_URL")}
    os.environ.update({"COVE_NATS_URL": chaos_nats.url, "COVE_DATABASE_URL": db_url})
    local = LocalStack(state, timeout=90.0, time_factor=form.time_factor,
                       devcloud_config=devcloud_config(state / "devcloud.yaml", form.clusters))
    try:
        await asyncio.to_thread(local.start)
    except BaseException:
        await asyncio.to_thread(local.stop)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield local
    finally:
        await asyncio.to_thread(local.stop)
        await drop_database(pg_admin_url, db_url)


# ---------------------------------------------------------------------------------------------------- the kills


@dataclass(frozen=True)
class KillPoint:
    after_events: int
    """Kill once the phase has seen this many provisioner events in the stream..."""
    jitter: float
    """...and then this many seconds more."""


def kill_plan(rng: random.Random, kills: int, expected_events: int) -> list[KillPoint]:
    """``kills`` points among the ``expected_events`` a phase emits, in order, each with a jitter: one point drawn
    in each of ``kills`` equal slices of the phase, so that its start (the cluster's network, security groups,
    load balancer and volumes, before any NodeCreated), its middle and its end all see kills. The last twelfth of
    the events is left out: a point there often comes after the phase has ended, and is dropped."""
    if kills <= 0:
        return []
    span = max(expected_events - max(1, expected_events // 12), kills)
    cuts = [span * i // kills for i in range(kills + 1)]
    return [KillPoint(rng.randrange(lo, hi), round(rng.uniform(0.0, 0.5), 3)) for lo, hi in itertools.pairwise(cuts)]


@dataclass
class Kill:
    phase: str
    point: KillPoint
    events_seen: int
    """Provisioner events of the phase in the stream at the kill."""
    at: float
    """Seconds into the phase."""
    killed_pid: int
    new_pid: int
    restart_seconds: float
    """From the SIGKILL to the new process's /readyz."""


class EventWatch:
    """Every provisioner event stored in COVE_EVENTS, in stream order (an ordered push consumer)."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url, name="chaos-watch")

        async def stored(msg: Any) -> None:
            self.events.append(decode(msg.data))

        self.sub = await self.nc.jetstream().subscribe(subjects.producer_events("provisioner", "cluster"),
                                                       ordered_consumer=True, cb=stored)

    async def stop(self) -> None:
        await self.sub.unsubscribe()
        await self.nc.close()


async def kill_at_points(st: LocalStack, watch: EventWatch, phase: str, plan: list[KillPoint], done: asyncio.Event,
                         deadline: float) -> list[Kill]:
    """SIGKILL and restart the provisioner at each point of ``plan`` until ``done`` (every cluster of the phase at
    its end): the remaining points are then dropped."""
    base, started, kills = len(watch.events), time.monotonic(), []
    for point in plan:
        try:
            await wait_for(lambda p=point: done.is_set() or len(watch.events) - base >= p.after_events,  # type: ignore[misc]
                           timeout=deadline, interval=0.01, message=f"{phase}: {point.after_events} events")
        except TimeoutError:
            break  # the phase's own wait reports what is stuck
        if done.is_set():
            break
        await asyncio.sleep(point.jitter)  # the experiment: where between two events the kill lands
        if done.is_set():
            break
        seen = len(watch.events) - base
        old = next(c for c in st.children if c.name == "provisioner")
        at = time.monotonic()
        new = await asyncio.to_thread(st.restart, "provisioner")
        kills.append(Kill(phase, point, seen, round(at - started, 3), old.proc.pid, new.proc.pid,
                          round(time.monotonic() - at, 3)))
        print(f"chaos: {phase}: SIGKILL provisioner pid {old.proc.pid} after {seen} events "
              f"(point {point.after_events}+{point.jitter}s) at {at - started:.2f}s; pid {new.proc.pid} ready "
              f"{time.monotonic() - at:.2f}s later")
    return kills


# ---------------------------------------------------------------------------------------------------- the cloud


async def token_and_project(st: LocalStack, user: str, password: str, project: str) -> tuple[str, str]:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    async with aiohttp.ClientSession() as s, s.post(f"{st.devcloud_url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"], (await r.json())["token"]["project"]["id"]


async def ledger(st: LocalStack, admin: str, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    code, body = await http("GET", f"{st.devcloud_url}/admin/ledger?{query}", admin)
    assert code == 200, body
    return list(body["records"])


async def floating_ips(st: LocalStack, tok: str) -> list[dict[str, Any]]:
    code, body = await http("GET", f"{st.devcloud_url}/networking/v2.0/floatingips", tok)
    assert code == 200, body
    return list(body["floatingips"])


async def network_usage(st: LocalStack, admin: str, project_id: str) -> dict[str, Any]:
    code, body = await http("GET", f"{st.devcloud_url}/networking/v2.0/quotas/{project_id}/details", admin)
    return dict(body.get("quota", {})) if code == 200 else {"error": code}


def prefix_of(name: str, cluster_id: str) -> str:
    return model.cluster_prefix(name, cluster_id)


def owner(name: str, prefixes: Mapping[str, str]) -> str | None:
    """The cluster (uuid) whose resource names start with its prefix, or None."""
    return next((cid for prefix, cid in prefixes.items() if name.startswith(f"{prefix}-")), None)


def unterminated(statuses: Mapping[str, str]) -> dict[str, str]:
    return {cid: s for cid, s in statuses.items() if s not in ("CREATE_COMPLETE", "CREATE_FAILED")}


async def cluster_statuses(st: LocalStack, tok: str) -> dict[str, str]:
    out: dict[str, str] = {}
    link: str | None = f"{st.api_url}/clusters?limit=1000"
    while link:
        code, body = await http("GET", link, tok)
        assert code == 200, body
        out.update({c["uuid"]: c["status"] for c in body["clusters"]})
        link = body.get("next")
    return out


# ---------------------------------------------------------------------------------------------------- findings


@dataclass
class Findings:
    duplicates: list[Any] = field(default_factory=list)
    missing: list[Any] = field(default_factory=list)
    event_errors: list[str] = field(default_factory=list)
    orphans: list[Any] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.duplicates or self.missing or self.event_errors or self.orphans)


def duplicate_records(records: list[dict[str, Any]], prefixes: Mapping[str, str]) -> list[dict[str, Any]]:
    """Records of one kind and name of a cluster, more than one, live or not (the ledger keeps deleted ones)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] in KINDS and r["name"] and owner(r["name"], prefixes):
            groups[(r["kind"], r["name"])].append(r)
    return [{"kind": kind, "name": name, "records": [
        {k: r.get(k) for k in ("id", "status", "created_at", "deleted_at")} for r in group]}
        for (kind, name), group in sorted(groups.items()) if len(group) > 1]


def check_events(events: list[Envelope], clusters: list[str], servers_by_cluster: Mapping[str, set[str]],
                 *, deleted: bool) -> list[str]:
    errors: list[str] = []
    by_cluster: dict[str, Counter[str]] = defaultdict(Counter)
    node_created: Counter[str] = Counter()
    node_deleted: Counter[str] = Counter()
    recorded: dict[str, set[str]] = defaultdict(set)
    for env in events:
        by_cluster[env.cluster_id or ""][env.type] += 1
        if env.type == "NodeCreated":
            node_created[env.payload.server_id] += 1  # type: ignore[union-attr]
            recorded[env.cluster_id or ""].add(env.payload.server_id)  # type: ignore[union-attr]
        elif env.type == "NodeDeleted":
            node_deleted[env.payload.server_id] += 1  # type: ignore[union-attr]
    errors += [f"NodeCreated {n} times for server {sid}" for sid, n in node_created.items() if n > 1]
    errors += [f"NodeDeleted {n} times for server {sid}" for sid, n in node_deleted.items() if n > 1]
    for cid in clusters:
        seen = by_cluster[cid]
        if seen["ClusterCreateStarted"] != 1:
            errors.append(f"{cid}: ClusterCreateStarted {seen['ClusterCreateStarted']} times")
        if seen["ClusterCreateCompleted"] + seen["ClusterCreateFailed"] != 1:
            errors.append(f"{cid}: ClusterCreateCompleted {seen['ClusterCreateCompleted']} times, "
                          f"ClusterCreateFailed {seen['ClusterCreateFailed']} times")
        unrecorded = servers_by_cluster.get(cid, set()) - recorded[cid]
        if unrecorded:
            errors.append(f"{cid}: servers the cloud made without a NodeCreated: {sorted(unrecorded)}")
        if deleted and seen["ClusterDeleteCompleted"] != 1:
            errors.append(f"{cid}: ClusterDeleteCompleted {seen['ClusterDeleteCompleted']} times")
    return errors


def conflict_storms(log: Path) -> dict[str, Any]:
    """The provisioner's ``emit_conflict`` warnings (a publish refused because the subject moved past what its
    store had applied): how many, for how many clusters, and the longest a cluster's task kept retrying with one
    stale expectation (first to last warning)."""
    spans: dict[tuple[str, int], list[datetime]] = defaultdict(list)
    for line in log.read_text(errors="replace").splitlines():
        if '"emit_conflict"' not in line:
            continue
        try:
            d = json.loads(line)
            spans[(d["cluster_id"], d["expected"])].append(datetime.fromisoformat(d["timestamp"]))
        except (ValueError, KeyError):
            continue
    longest = max(spans.items(), key=lambda kv: kv[1][-1] - kv[1][0], default=None)
    return {
        "warnings": sum(len(v) for v in spans.values()),
        "clusters": len({cid for cid, _ in spans}),
        "longest_seconds": round((longest[1][-1] - longest[1][0]).total_seconds(), 2) if longest else 0.0,
        "longest": {"cluster": longest[0][0], "expected_last_seq": longest[0][1],
                    "from": longest[1][0].isoformat(), "to": longest[1][-1].isoformat()} if longest else None,
    }


def log_excerpt(st: LocalStack, kills: list[Kill], lines: int = 15) -> list[str]:
    """The provisioner log's lines before each kill marker."""
    text = (st.logs / "provisioner.log").read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(text):
        if line.startswith("=== cove run: killed provisioner"):
            out += [*text[max(0, i - lines):i + 1], "..."]
    return out


# ---------------------------------------------------------------------------------------------------- the test


@pytest.mark.timeout(2 * FORM.deadline + 300)
async def test_killing_the_provisioner_never_duplicates_nor_orphans(chaos_stack: LocalStack, form: Form) -> None:
    st, n, rng = chaos_stack, form.clusters, random.Random(form.seed)
    began = time.monotonic()
    create_plan = kill_plan(rng, form.create_kills, CREATE_EVENTS * n)
    delete_plan = kill_plan(rng, form.delete_kills, DELETE_EVENTS * n)
    print(f"chaos: kill plan: creates {[(p.after_events, p.jitter) for p in create_plan]}, "
          f"deletes {[(p.after_events, p.jitter) for p in delete_plan]}")
    demo, project_id = await token_and_project(st, "demo", "demo-pass", "demo")
    admin, _ = await token_and_project(st, "admin", "admin-pass", "admin")
    baseline = {r["id"] for r in await ledger(st, admin, live="true")}
    code, body = await http("POST", f"{st.api_url}/quotas", admin,
                            {"project_id": project_id, "resource": "Cluster", "hard_limit": n})
    assert code == 201, body
    code, template = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": f"chaos-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small",
        "master_lb_enabled": True, "floating_ip_enabled": True, "docker_volume_size": DOCKER_GB,
        "network_driver": "calico", "labels": {"master_lb_allowed_cidrs": ALLOWED_CIDRS}})
    assert code == 201, template
    watch = EventWatch()
    await watch.start(st.nats_url)
    report: dict[str, Any] = {"form": asdict(form), "shape": asdict(SHAPE), "quotas": cloud_quotas(n),
                              "plan": {"create": [asdict(p) for p in create_plan],
                                       "delete": [asdict(p) for p in delete_plan]}}
    findings = Findings()
    kills: list[Kill] = []
    statuses: dict[str, str] = {}
    left: dict[str, str] = {}
    try:
        # -- creates, with kills -------------------------------------------------------------------------------
        done = asyncio.Event()
        killer = asyncio.create_task(kill_at_points(st, watch, "create", create_plan, done, form.deadline))

        async def create(i: int) -> tuple[str, str]:
            name = f"chaos-{i:02d}"
            code, body = await http("POST", f"{st.api_url}/clusters", demo, {
                "name": name, "cluster_template_id": template["uuid"], "master_count": SHAPE.masters,
                "node_count": SHAPE.workers})
            assert code == 202, body
            return body["uuid"], name

        t0 = time.monotonic()
        try:
            names = dict(await asyncio.gather(*(create(i) for i in range(n))))

            async def terminal() -> bool:
                statuses.update({c: s for c, s in (await cluster_statuses(st, demo)).items() if c in names})
                return len(statuses) == n and not unterminated(statuses)

            try:
                await wait_for(terminal, timeout=form.deadline, interval=0.25)
            except TimeoutError:
                report["stuck"] = unterminated(statuses)
        finally:
            done.set()
            kills += await killer
        report["create_seconds"] = round(time.monotonic() - t0, 2)
        report["statuses"] = dict(Counter(statuses.values()))
        prefixes = {prefix_of(name, cid): cid for cid, name in names.items()}
        failed = {}
        for cid, status in statuses.items():
            if status == "CREATE_FAILED":
                failed[cid] = (await http("GET", f"{st.api_url}/clusters/{cid}", demo))[1].get("status_reason")
        report["failed"] = failed
        print(f"chaos: creates: {report['statuses']} in {report['create_seconds']}s, {len(kills)} kills")
        for cid, reason in failed.items():
            print(f"chaos: CREATE_FAILED {names[cid]} ({cid}): {reason}")
        assert "stuck" not in report, f"clusters not terminal after {form.deadline}s: {report['stuck']}"
        assert all(failed.values()), f"CREATE_FAILED without a reason: {failed}"
        # no fault is injected: a kill may delay a create, never fail it (a test where every create fails would
        # otherwise pass: nothing built, nothing duplicated, nothing orphaned)
        assert report["statuses"] == {"CREATE_COMPLETE": n}, f"creates (seed {form.seed}): {report['statuses']}"

        # -- no duplicates --------------------------------------------------------------------------------------
        records = await ledger(st, admin, project_id=project_id)
        findings.duplicates += duplicate_records(records, prefixes)
        fips = await floating_ips(st, demo)
        purposes = Counter(f["description"] for f in fips if owner(f["description"].split(": ", 1)[-1], prefixes))
        findings.duplicates += [{"kind": "floating_ip", "purpose": d, "count": c} for d, c in purposes.items()
                                if c > 1]
        made = [r for r in records if r["kind"] == "floating_ip"]
        if len(made) != len(fips):
            findings.duplicates.append({"kind": "floating_ip", "made": len(made), "live": len(fips),
                                        "dropped": [r["id"] for r in made if r["deleted_at"]]})
        live = [r for r in records if r["deleted_at"] is None]
        servers_by_cluster: dict[str, set[str]] = defaultdict(set)
        for r in records:
            if r["kind"] == "server" and (cid := owner(r["name"], prefixes)):
                servers_by_cluster[cid].add(r["id"])
        for cid, status in statuses.items():
            if status != "CREATE_COMPLETE":
                continue
            prefix = next(p for p, c in prefixes.items() if c == cid)
            have = Counter(r["kind"] for r in live if r["name"].startswith(f"{prefix}-"))
            fip_count = sum(1 for f in fips if f["description"].startswith(f"Cove cluster {cid}:"))
            want = {"server": SHAPE.servers, "volume": SHAPE.servers, "load_balancer": 1}
            got = {k: have[k] for k in want}
            if got != want or fip_count != SHAPE.floating_ips:
                findings.missing.append({"cluster": cid, "want": want, "got": got, "floating_ips": fip_count})
        report["usage"] = {"network": await network_usage(st, admin, project_id),
                           "ledger_live": dict(Counter(r["kind"] for r in live))}
        findings.event_errors += check_events(watch.events, list(names), servers_by_cluster, deleted=False)

        # -- deletes, with kills --------------------------------------------------------------------------------
        done = asyncio.Event()
        killer = asyncio.create_task(kill_at_points(st, watch, "delete", delete_plan, done, form.deadline))
        t0 = time.monotonic()
        try:
            for code, body in await asyncio.gather(*(http("DELETE", f"{st.api_url}/clusters/{cid}", demo)
                                                     for cid in names)):
                assert code == 204, body

            async def all_gone() -> bool:
                left.clear()
                left.update({c: s for c, s in (await cluster_statuses(st, demo)).items() if c in names})
                return not left

            try:
                await wait_for(all_gone, timeout=form.deadline, interval=0.25)
            except TimeoutError:
                report["not_deleted"] = dict(left)
        finally:
            done.set()
            kills += await killer
        report["delete_seconds"] = round(time.monotonic() - t0, 2)
        print(f"chaos: deletes: {n - len(left)} of {n} gone in {report['delete_seconds']}s")
        assert "not_deleted" not in report, f"clusters not deleted after {form.deadline}s: {report['not_deleted']}"

        # -- no orphans -----------------------------------------------------------------------------------------
        def orphans_in(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: r.get(k) for k in ("kind", "id", "name", "project_id", "status", "created_at")}
                    for r in records if r["kind"] in KINDS and r["id"] not in baseline
                    and not (r["kind"] == "security_group" and r["name"] == "default")]

        async def clean() -> bool:
            return not orphans_in(await ledger(st, admin, live="true"))

        try:
            await wait_for(clean, timeout=10, interval=0.25)
        except TimeoutError:
            findings.orphans += orphans_in(await ledger(st, admin, live="true"))
        records = await ledger(st, admin, project_id=project_id)
        findings.duplicates += [d for d in duplicate_records(records, prefixes) if d not in findings.duplicates]
        findings.event_errors = check_events(watch.events, list(names), servers_by_cluster, deleted=True)
    finally:
        await watch.stop()
        report["kills"] = [asdict(k) for k in kills]
        report["events"] = dict(Counter(e.type for e in watch.events))
        report["findings"] = asdict(findings)
        report["wall_seconds"] = round(time.monotonic() - began, 2)
        report["emit_conflicts"] = conflict_storms(st.logs / "provisioner.log")
        if findings.any() or "stuck" in report or "not_deleted" in report:
            report["provisioner_log_before_kills"] = log_excerpt(st, kills)
        (st.state_dir / "chaos-report.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"chaos: {len(kills)} kills, {report['wall_seconds']}s, events {report['events']}; "
              f"report {st.state_dir / 'chaos-report.json'}, provisioner log {st.logs / 'provisioner.log'}")
        storms = report["emit_conflicts"]
        print(f"chaos: {storms['warnings']} emit_conflict warnings for {storms['clusters']} clusters, the longest "
              f"retrying one stale expectation for {storms['longest_seconds']}s: {storms['longest']}")

    assert not findings.duplicates, f"duplicates (seed {form.seed}): {json.dumps(findings.duplicates, indent=1)}"
    assert not findings.missing, f"complete clusters lacking resources (seed {form.seed}): {findings.missing}"
    assert not findings.event_errors, f"provisioner events (seed {form.seed}): {findings.event_errors}"
    assert not findings.orphans, f"orphans (seed {form.seed}): {json.dumps(findings.orphans, indent=1)}"
    assert kills or not create_plan + delete_plan, "no kill happened: every point came after its phase ended"
    # A task whose publish conflicts waits until its own store caught up (loop._catch_up), so a stale expectation
    # is never retried over and over (before that fix: up to 150 conflicts a second, for the 30 s ack wait).
    assert storms["longest_seconds"] < 1.0, f"a task kept retrying a stale expectation (seed {form.seed}): {storms}"
