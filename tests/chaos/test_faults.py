"""Chaos, one fault at a time, during concurrent creates and deletes (issue 16): afterwards every acknowledged
request is honoured, every cluster terminal, the devcloud's ledger shows no duplicate and no orphan, the scheduler's
reservations equal what exists, and accounting equals the ledger.

One test, two forms, chosen by the environment (``make chaos`` runs the full one):

* short (default, part of ``make test``): 20 clusters; faults: kill -9 of the provisioner (one copy), of every copy
  of the scheduler, of one copy of the API, of one NATS node, and the devcloud failing 10% of calls and hanging
  some. Not the PostgreSQL restart, to stay short (below);
* full (``COVE_CHAOS=full``): 200 clusters; kill -9 of each service one copy at a time and all copies at once, of
  one NATS node, a PostgreSQL restart, the devcloud's faults.

``COVE_CHAOS_SEED`` repeats a run (the seed orders the faults, picks the copy killed and the gaps between faults);
``COVE_CHAOS_CLUSTERS`` and ``COVE_CHAOS_TIME_FACTOR`` override a form's numbers.

The stack is ``make run-cluster``'s when LocalStack offers copies and NATS nodes (``copies``, ``nats_nodes``), else
``make run``'s (one copy of each service, one NATS node: killing "one copy" and "all copies" are then the same
kill, and killing the NATS node is a NATS crash and restart). The stack owns its NATS and PostgreSQL (in a folder
outside pytest's basetemp, which PostgreSQL's unprivileged user must traverse), so the test can kill and restart
them.

The workload: ``n`` creates at once (1 master, 1 worker, m1.small, a 1 GB docker volume, no load balancer, no
floating IP: each cluster takes one address of the external /24 for its router, so 200 fit). Every even cluster is
deleted as soon as it is terminal (creates and deletes run together); once every create is terminal and those
deletes are done, the scheduler's reservations are compared with what the API lists; then the odd clusters are
deleted. A request the client saw refused or cut (a killed API, a 5xx) is retried as a new request (a create under
a new name); only a 202 or 204 counts as acknowledged, and a cluster made by a create whose answer was lost is
followed like the others. A delete that ends DELETE_FAILED (the devcloud's faults) is retried once the faults are
cleared, as a user would.

Each fault is injected once the previous one recovered (the killed processes answer /readyz again), after a seeded
gap; the fault table prints each fault, its time, what was still in flight and its recovery time, and the check
table what was checked afterwards. The report is also written to ``<state dir>/chaos-faults-report.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from deploy.local.stack import Child, LocalStack, StackError
from services.provisioner import model
from services.scheduler.admission import quota_exceeded_message
from tests.chaos.test_provisioner_kill import KINDS, devcloud_config, duplicate_records, token_and_project
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration]

SERVICES = ("api", "scheduler", "certs", "provisioner", "accounting")
BILLED_KINDS = ("server", "volume", "floating_ip", "load_balancer")
TOLERANCE = 1.0
"""Seconds a resource's billed life may differ from the ledger's (tests/e2e/test_usage.py's bar)."""
TERMINAL = ("CREATE_COMPLETE", "CREATE_FAILED")
LATEST = {"OpenStack-API-Version": "container-infra latest"}
DEVCLOUD_FAULTS = {"api": [
    {"service": "*", "method": "*", "path": "", "status": 0, "probability": 0.03, "count": -1, "hang_seconds": 4.0},
    {"service": "*", "method": "*", "path": "", "status": 500, "probability": 0.1, "count": -1, "hang_seconds": 0},
]}
"""A call in 33 hangs 4 s (then is served); a tenth of the others fail with 500 (first match wins)."""


USAGE_CHECK = "accounting = ledger (each resource within 1 s)"
KNOWN = {USAGE_CHECK: (
    "a volume's end is an estimate (services/provisioner/billing.py: a quarter second at most after the later of "
    "its delete's acceptance and its last sighting, else the middle of the window between the look that last showed "
    "it and the first that did not, or, for a copy resuming a killed copy's delete, what that copy wrote down): "
    "Cinder shows neither a deleted volume nor when it went. On a machine as loaded as make test's, a look can "
    "come late enough to put one past the 1 s bar")}
"""Checks that may fail without a Cove bug on a loaded machine: reported by the short form, asserted by the full one.

The short form leaves the PostgreSQL restart out only to stay short. It once stranded a creating cluster: a
provisioner copy's reconcile failed once ("the database system is starting up") and was not seen again while that
copy kept the cluster's lease (4 min 46 s; seed 379141440). Every statement now has a deadline
(``services/runtime/db.py``), and an orphan no copy takes within a period is adopted past the fair share
(``services/provisioner/loop.py``); the full form (200 clusters, all 13 faults, seed 4242) then had every cluster
terminal."""


@dataclass(frozen=True)
class Form:
    name: str
    clusters: int
    faults: tuple[str, ...]
    time_factor: float
    deadline: float
    """Seconds the workload may take before the test calls what is left stuck."""
    devcloud_window: float
    """Seconds the devcloud's faults stay on."""
    gap: tuple[float, float]
    """Seconds between one fault's recovery and the next fault, drawn uniformly."""
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Form:
        base = FULL if env.get("COVE_CHAOS", "").strip().lower() == "full" else SHORT
        seed = env.get("COVE_CHAOS_SEED", "").strip()
        return replace(
            base,
            clusters=int(env.get("COVE_CHAOS_CLUSTERS") or base.clusters),
            time_factor=float(env.get("COVE_CHAOS_TIME_FACTOR") or base.time_factor),
            seed=int(seed) if seed else random.SystemRandom().randrange(2**32),
        )


EVERY_FAULT = (*(f"kill {s} one" for s in SERVICES), *(f"kill {s} all" for s in SERVICES),
               "kill nats node", "restart postgres", "devcloud faults")
SHORT = Form("short", clusters=20, faults=("kill provisioner one", "kill scheduler all", "kill api one",
                                           "kill nats node", "devcloud faults"),
             time_factor=0.3, deadline=150.0, devcloud_window=5.0, gap=(0.3, 1.0))
FULL = Form("full", clusters=200, faults=EVERY_FAULT, time_factor=0.2, deadline=1200.0, devcloud_window=20.0,
            gap=(2.0, 8.0))
FORM = Form.from_env(os.environ)


def fault_order(form: Form, rng: random.Random) -> list[str]:
    """The form's faults in a seeded order."""
    order = list(form.faults)
    rng.shuffle(order)
    return order


# ---------------------------------------------------------------------------------------------------- the stack


def stack_options() -> dict[str, int]:
    """``make run-cluster``'s shape when LocalStack offers it, else {} (``make run``'s)."""
    params = inspect.signature(LocalStack).parameters
    return {k: v for k, v in (("copies", 2), ("nats_nodes", 3)) if k in params}


@pytest.fixture(scope="module")
def form() -> Form:
    print(f"\nchaos: form {FORM.name}, seed {FORM.seed} (COVE_CHAOS_SEED={FORM.seed} repeats it), "
          f"{FORM.clusters} clusters, faults {list(FORM.faults)}, time factor {FORM.time_factor}, "
          f"stack {stack_options() or 'one copy of each service, one NATS node'}")
    return FORM


@pytest.fixture(scope="module")
async def fault_stack(form: Form) -> AsyncIterator[LocalStack]:
    state = Path(tempfile.mkdtemp(prefix="cove-chaos-"))  # not under basetemp: PostgreSQL's user traverses it
    saved = {k: os.environ.pop(k, None) for k in ("COVE_NATS_URL", "COVE_DATABASE_URL")}
    local = LocalStack(state, timeout=120.0, time_factor=form.time_factor,
                       devcloud_config=devcloud_config(state / "devcloud.yaml", form.clusters),
                       **stack_options())  # type: ignore[arg-type]
    try:
        await asyncio.to_thread(local.start)
    except BaseException:
        await asyncio.to_thread(local.stop)
        raise
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    try:
        yield local
    finally:
        await asyncio.to_thread(local.stop)
        if not os.environ.get("COVE_CHAOS_KEEP"):
            shutil.rmtree(state, ignore_errors=True)


def copies_of(st: LocalStack, service: str) -> list[Child]:
    return [c for c in st.children if c.name == service or c.name.startswith(f"{service}-")]


def nats_nodes(st: LocalStack) -> list[Any]:
    nodes = getattr(st, "nats_nodes", None)
    if isinstance(nodes, list) and nodes:
        return nodes
    return [st.nats] if st.nats is not None else []


SUPERVISED_STARTS = 3
"""How many times a killed service is started before the test gives up on it: deploy/systemd's units restart a
service that exits (``Restart=on-failure``), and one may exit while starting when the NATS cluster still moves a
consumer's leader after a node's restart (a JetStream API request unanswered for its 5 s)."""


def restart_supervised(st: LocalStack, name: str) -> int:
    """Start ``name`` again as its supervisor would, until it is ready; returns how many starts it took."""
    for start in range(1, SUPERVISED_STARTS + 1):
        try:
            st.restart(name)
            return start
        except StackError:
            if start == SUPERVISED_STARTS:
                raise
    raise AssertionError("unreachable")


def inject(st: LocalStack, fault: str, rng: random.Random) -> str:
    """Inject ``fault`` (blocking: call through a thread) and bring the stack back; returns what was done."""
    words = fault.split()
    if words[0] == "kill" and words[1] in SERVICES:
        copies = copies_of(st, words[1])
        victims = [rng.choice(copies)] if words[2] == "one" else copies
        for child in victims:  # every victim dies before any comes back
            child.proc.kill()
        pids = [c.proc.pid for c in victims]
        starts = [restart_supervised(st, child.name) for child in victims]
        again = "" if max(starts) == 1 else f" (started {max(starts)} times: it exited while starting)"
        return f"SIGKILL {', '.join(c.name for c in victims)} (pid {', '.join(map(str, pids))}), restarted{again}"
    if fault == "kill nats node":
        nodes = nats_nodes(st)
        node = rng.choice(nodes)
        pid = node.pid
        node.kill()
        time.sleep(1.0)  # long enough for every client to see the connection drop
        node.start()
        return f"SIGKILL nats-server {getattr(node, 'server_name', '')} (pid {pid}) of {len(nodes)}, restarted"
    if fault == "restart postgres":
        pg = st.postgres
        assert pg is not None, "the stack's PostgreSQL is not its own"
        pg.stop()
        pg.start()
        return f"PostgreSQL stopped (fast shutdown) and started on port {pg.port}"
    raise ValueError(fault)


# ---------------------------------------------------------------------------------------------------- the client


async def call(session: aiohttp.ClientSession, method: str, url: str, tok: str, body: Any = None,
               timeout: float = 30.0) -> tuple[int, Any]:
    """(status, body); status 0 when the connection failed or was cut (a killed API)."""
    try:
        async with session.request(method, url, json=body, headers={"X-Auth-Token": tok, **LATEST},
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            try:
                return r.status, (json.loads(text) if text else None)
            except ValueError:
                return r.status, text
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return 0, repr(exc)


@dataclass
class Tracked:
    """One cluster the workload knows of: acknowledged (202) or made by a create whose answer was lost."""

    uuid: str
    name: str
    acknowledged: bool
    refused: bool = False
    """Adopted from a create answered 403: withdrawn, it may be listed for a moment (CREATE_IN_PROGRESS while the
    scheduler decided) and then be gone without a terminal status."""
    statuses: list[str] = field(default_factory=list)
    delete_acknowledged: bool = False
    delete_attempts: int = 0
    gone: bool = False


@dataclass
class Workload:
    st: LocalStack
    tok: str
    template: str
    clusters: dict[str, Tracked] = field(default_factory=dict)
    lost_creates: list[str] = field(default_factory=list)
    """Names of creates whose answer was no acknowledgment (cut, 5xx, a 403 refusal): any cluster of that name is
    followed too."""
    refused_names: set[str] = field(default_factory=set)
    """Names of creates answered 403 (the quota: the cluster is withdrawn)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Answers that were no acknowledgment, by status."""
    current: dict[str, str] = field(default_factory=dict)
    """uuid -> status, as last listed."""
    generation: int = 0
    """Complete listings so far."""
    stuck: dict[str, str] = field(default_factory=dict)
    """uuid -> what it was waiting for and its statuses, for clusters that did not get there within the deadline."""

    def in_flight(self) -> int:
        return sum(1 for c in self.clusters.values() if not c.gone)

    def seen(self, cid: str) -> None:
        status = self.current.get(cid)
        c = self.clusters[cid]
        if status is None:
            if c.statuses:  # listed before, now not: deleted
                c.gone = True
        elif not c.statuses or c.statuses[-1] != status:
            c.statuses.append(status)

    async def poll(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """List every cluster every 0.3 s (a killed API only skips a round), adopting those of lost creates."""
        while not stop.is_set():
            listed: dict[str, dict[str, Any]] = {}
            link: str | None = f"{self.st.api_url}/clusters?limit=1000"
            while link:
                code, body = await call(session, "GET", link, self.tok)
                if code != 200:
                    break
                listed.update({c["uuid"]: c for c in body["clusters"]})
                link = body.get("next")
            if link is None:  # a complete listing (an empty one too: the last clusters are gone)
                self.current = {cid: c["status"] for cid, c in listed.items()}
                for cid, c in listed.items():
                    if cid not in self.clusters and c["name"] in self.lost_creates:
                        self.clusters[cid] = Tracked(cid, c["name"], acknowledged=False,
                                                     refused=c["name"] in self.refused_names)
                for cid in self.clusters:
                    self.seen(cid)
                self.generation += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.3)
            except TimeoutError:
                pass

    async def create(self, session: aiohttp.ClientSession, i: int) -> str:
        for attempt in range(100):
            name = f"chaos-{i:03d}-{attempt}"
            code, body = await call(session, "POST", f"{self.st.api_url}/clusters", self.tok, {
                "name": name, "cluster_template_id": self.template, "master_count": 1, "node_count": 1})
            if code == 202:
                self.clusters[body["uuid"]] = Tracked(body["uuid"], name, acknowledged=True)
                return str(body["uuid"])
            self.refused[f"create {code}"] += 1
            self.lost_creates.append(name)
            if code == 403:
                self.refused_names.add(name)
            await asyncio.sleep(0.5)
        raise AssertionError(f"create {i} never acknowledged")

    async def delete(self, session: aiohttp.ClientSession, cid: str) -> None:
        """DELETE until acknowledged (204; a 404 when an earlier answer was cut: it is gone), then until gone; a
        DELETE_FAILED is deleted again, at most 10 times."""
        c = self.clusters[cid]
        while not c.gone:
            if c.delete_attempts >= 10:
                raise AssertionError(f"{cid} ({c.name}) not deleted after 10 deletes: {c.statuses}")
            c.delete_attempts += 1
            while True:
                code, _ = await call(session, "DELETE", f"{self.st.api_url}/clusters/{cid}", self.tok)
                if code in (204, 404):
                    c.delete_acknowledged = c.delete_acknowledged or code == 204
                    break
                self.refused[f"delete {code}"] += 1
                await asyncio.sleep(0.5)
            since = self.generation  # a status listed after the DELETE, not an earlier DELETE_FAILED

            def settled(since: int = since) -> bool:
                return c.gone or (self.generation > since + 1 and self.current.get(cid) == "DELETE_FAILED")

            try:
                await wait_for(settled, timeout=FORM.deadline, interval=0.2)
            except TimeoutError:
                self.stuck[cid] = f"delete: {c.statuses}"  # the checks report it
                return

    async def terminal(self, cid: str) -> bool:
        c = self.clusters[cid]
        try:
            await wait_for(lambda: withdrawn(c) or (bool(c.statuses) and c.statuses[-1] in TERMINAL),
                           timeout=FORM.deadline, interval=0.2)
        except TimeoutError:
            self.stuck[cid] = f"create: {c.statuses}"  # the checks report it
            return False
        return True


# ---------------------------------------------------------------------------------------------------- the checks


def withdrawn(c: Tracked) -> bool:
    """A cluster of a create answered 403, listed for a moment and gone without a terminal status: withdrawn, as
    Magnum has no cluster after a refusal (a refused cluster that stayed would be CREATE_FAILED, and deleted)."""
    return c.refused and c.gone and not set(c.statuses) & set(TERMINAL)


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def reservations(st: LocalStack, project_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(st.database_url)
    try:
        row = await conn.fetchrow("SELECT clusters, nodes FROM scheduler.project_usage WHERE project_id = $1",
                                  project_id)
        building = await conn.fetchval(
            "SELECT count(*) FROM scheduler.clusters WHERE project_id = $1 AND build IN ('queued', 'building')",
            project_id)
    finally:
        await conn.close()
    return {"clusters": row["clusters"] if row else 0, "nodes": row["nodes"] if row else 0,
            "queued_or_building": int(building)}


async def existing(session: aiohttp.ClientSession, st: LocalStack, tok: str) -> dict[str, dict[str, Any]]:
    code, body = await call(session, "GET", f"{st.api_url}/clusters?limit=1000", tok)
    assert code == 200 and not body.get("next"), body
    return {c["uuid"]: c for c in body["clusters"]}


async def usage_vs_ledger(session: aiohttp.ClientSession, st: LocalStack, admin: str, project_id: str,
                          since: datetime) -> Check:
    end = datetime.now(UTC) + timedelta(seconds=60)
    query = f"project_id={project_id}&group_by=resource&start={since.isoformat()}&end={end.isoformat()}"
    worst: dict[str, float] = dict.fromkeys(BILLED_KINDS, 0.0)
    worst_of: dict[str, str] = {}
    last: list[str] = []

    async def settled() -> bool:
        code, body = await call(session, "GET", f"{st.devcloud_url}/admin/ledger?project_id={project_id}", admin)
        assert code == 200, body
        records = {r["id"]: r for r in body["records"] if r["kind"] in BILLED_KINDS and ts(r["created_at"]) >= since}
        code, body = await call(session, "GET", f"{st.api_url}/usage?{query.replace('+', '%2B')}", admin)
        assert code == 200, body
        rows = {r["resource_id"]: r for r in body["usage"] if r["resource_kind"] != "cluster"}
        last.clear()
        last.extend(f"{rid}: not billed" for rid in set(records) - set(rows))
        last.extend(f"{rid}: billed, not in the ledger" for rid in set(rows) - set(records))
        for rid, rec in records.items():
            if rid not in rows or rec["deleted_at"] is None or rows[rid]["ended_at"] is None:
                if rid in rows:
                    last.append(f"{rid}: still open")
                continue
            life = (ts(rec["deleted_at"]) - ts(rec["created_at"])).total_seconds()
            off = abs(rows[rid]["billed_seconds"] - life)
            if off >= worst[rec["kind"]]:
                worst[rec["kind"]] = off
                # where the worst one's difference lies: its start, its end (billed minus the ledger's, seconds)
                worst_of[rec["kind"]] = (f"{rec['name']} start {_off(rows[rid]['started_at'], rec['created_at'])},"
                                         f" end {_off(rows[rid]['ended_at'], rec['deleted_at'])}")
            if off > TOLERANCE:
                last.append(f"{rec['kind']} {rec['name']} ({rid}): billed {rows[rid]['billed_seconds']} s, "
                            f"ledger {life:.3f} s")
        worst["resources"] = len(records)
        return not last

    try:
        await wait_for(settled, timeout=60, interval=1.0, message="usage settled")
    except TimeoutError:
        return Check(USAGE_CHECK, False, "; ".join(last[:10]))
    resources = int(worst.pop("resources"))
    print("chaos: worst billed resource of each kind: " + "; ".join(f"{k} {v}" for k, v in worst_of.items()),
          flush=True)
    return Check(USAGE_CHECK, True,
                 f"{resources} resources, worst " + ", ".join(f"{k} {v:.3f} s" for k, v in worst.items()))


def _off(billed: str | None, ledger: str | None) -> str:
    if billed is None or ledger is None:
        return "?"
    return f"{(ts(billed) - ts(ledger)).total_seconds():+.3f} s"


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple(str(x) for x in headers), *[tuple(str(x) for x in r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])


# ---------------------------------------------------------------------------------------------------- the test


@pytest.mark.timeout(2 * FORM.deadline + 600)
async def test_one_fault_at_a_time_during_creates_and_deletes(fault_stack: LocalStack, form: Form) -> None:
    st, n, rng = fault_stack, form.clusters, random.Random(form.seed)
    order = fault_order(form, rng)
    print(f"chaos: fault order {order}")
    since = datetime.now(UTC) - timedelta(seconds=1)
    demo, project_id = await token_and_project(st, "demo", "demo-pass", "demo")
    admin, _ = await token_and_project(st, "admin", "admin-pass", "admin")
    faults: list[dict[str, Any]] = []
    checks: list[Check] = []
    report: dict[str, Any] = {"form": asdict(form), "order": order, "stack": stack_options()}
    async with aiohttp.ClientSession() as session:
        code, body = await call(session, "GET", f"{st.devcloud_url}/admin/ledger?live=true", admin)
        baseline = {r["id"] for r in body["records"]}
        code, body = await call(session, "POST", f"{st.api_url}/quotas", admin,
                                {"project_id": project_id, "resource": "Cluster", "hard_limit": n})
        assert code == 201, body
        code, template = await call(session, "POST", f"{st.api_url}/clustertemplates", demo, {
            "name": f"chaos-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
            "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small",
            "master_lb_enabled": False, "floating_ip_enabled": False, "docker_volume_size": 1,
            "network_driver": "calico"})
        assert code == 201, template
        work = Workload(st, demo, template["uuid"])
        stop_polling, workload_done = asyncio.Event(), asyncio.Event()
        poller = asyncio.create_task(work.poll(session, stop_polling))
        began = time.monotonic()

        async def fault_driver() -> None:
            for fault in order:
                gap = round(rng.uniform(*form.gap), 2)
                try:
                    await asyncio.wait_for(workload_done.wait(), gap)
                except TimeoutError:
                    pass
                # a fault must land while clusters are in flight: on a loaded machine the first creates may not be
                # acknowledged yet when the first gap (0.2 s and up) is over
                with contextlib.suppress(TimeoutError):
                    await wait_for(lambda: work.in_flight() > 0 or workload_done.is_set(), timeout=60, interval=0.05)
                if workload_done.is_set():
                    faults.append({"fault": fault, "at": None, "in_flight": 0, "recovered_after": None,
                                   "what": "not injected: the workload was over"})
                    continue
                at, in_flight = time.monotonic() - began, work.in_flight()
                if fault == "devcloud faults":
                    code, body = await call(session, "PUT", f"{st.devcloud_url}/admin/faults", admin,
                                            DEVCLOUD_FAULTS)
                    assert code == 200, body
                    await asyncio.sleep(form.devcloud_window)
                    code, body = await call(session, "DELETE", f"{st.devcloud_url}/admin/faults", admin)
                    assert code == 204, body
                    what = f"10% of calls 500, 3% hang 4 s, for {form.devcloud_window} s"
                else:
                    what = await asyncio.to_thread(inject, st, fault, rng)
                faults.append({"fault": fault, "at": round(at, 2), "in_flight": in_flight,
                               "recovered_after": round(time.monotonic() - began - at, 2), "what": what})
                print(f"chaos: {at:7.2f}s {fault}: {what} ({in_flight} clusters in flight)")

        driver = asyncio.create_task(fault_driver())

        async def first_phase(i: int) -> str:
            cid = await work.create(session, i)
            if await work.terminal(cid) and i % 2 == 0:
                await work.delete(session, cid)
            return cid

        async def first_phases() -> None:
            await asyncio.gather(*(first_phase(i) for i in range(n)))

        try:
            # a fault that could not be recovered from (a process that does not come back) ends the test at once
            phase = asyncio.create_task(first_phases())
            await asyncio.wait([phase, driver], return_when=asyncio.FIRST_COMPLETED)
            if driver.done() and driver.exception() is not None:
                phase.cancel()
                raise driver.exception()  # type: ignore[misc]
            await phase
            # lost creates: the clusters they made, once listed, go the same way
            await asyncio.sleep(1.0)
            extra = [cid for cid, c in work.clusters.items() if not c.acknowledged]
            for cid in extra:
                await work.terminal(cid)
            report["first_phase_seconds"] = round(time.monotonic() - began, 2)

            # -- quiescent: reservations equal what exists -------------------------------------------------------
            async def quiet() -> bool:
                listed = await existing(session, st, demo)
                return not any(c["status"].endswith("IN_PROGRESS") for c in listed.values())

            try:
                await wait_for(quiet, timeout=30 if work.stuck else form.deadline, interval=0.5)
            except TimeoutError:
                pass  # the reservations then differ, and the stuck clusters are reported
            want: dict[str, int] = {}
            got: dict[str, int] = {}

            async def reserved_as_existing() -> bool:  # the scheduler hears of outcomes after the API may
                # A create refused after its 202 (the decision later than the API's wait for it, while every
                # scheduler copy was down) shows CREATE_FAILED with the refusal and holds no reservation (ADR 0008).
                listed = await existing(session, st, demo)
                for cid in [cid for cid, c in listed.items() if c["status"] == "CREATE_FAILED"]:
                    code, shown = await call(session, "GET", f"{st.api_url}/clusters/{cid}", demo)
                    if code == 200 and shown.get("status_reason") == quota_exceeded_message(n):
                        del listed[cid]
                want.update({"clusters": len(listed), "nodes": sum(c["master_count"] + c["node_count"]
                                                                   for c in listed.values()), "queued_or_building": 0})
                got.update(await reservations(st, project_id))
                return got == want

            try:
                await wait_for(reserved_as_existing, timeout=30, interval=0.5)
            except TimeoutError:
                pass
            checks.append(Check("scheduler reservations = clusters that exist (mid-run)", got == want,
                                f"reserved {got}, existing {want}"))
            checks.append(Check("no quota over-admitted", got["clusters"] <= n, f"{got['clusters']} <= quota {n}"))

            # -- second phase: the rest deleted --------------------------------------------------------------------
            rest = [cid for cid, c in work.clusters.items() if not c.gone and cid not in work.stuck]
            # one cluster stays until every fault is in (a quick machine ends the workload before the faults'
            # recoveries do, and a fault must land while clusters exist), then goes too
            anchor, rest = rest[:1], rest[1:]
            await asyncio.gather(*(work.delete(session, cid) for cid in rest))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(driver), timeout=form.deadline)
            await asyncio.gather(*(work.delete(session, cid) for cid in anchor))
            workload_done.set()
            await driver
            # deletes that ended DELETE_FAILED while the devcloud failed calls are retried now it does not
            await asyncio.gather(*(work.delete(session, cid) for cid, c in work.clusters.items()
                                   if not c.gone and cid not in work.stuck))
        finally:
            workload_done.set()
            if not driver.done():
                await asyncio.wait_for(driver, timeout=120)
            stop_polling.set()
            await poller
            code, _ = await call(session, "DELETE", f"{st.devcloud_url}/admin/faults", admin)
        report["wall_seconds"] = round(time.monotonic() - began, 2)

        # -- afterwards ------------------------------------------------------------------------------------------
        acked = [c for c in work.clusters.values() if c.acknowledged]
        never_listed = [c.uuid for c in acked if not c.statuses]
        checks.append(Check("every acknowledged create (202) honoured: the cluster was listed", not never_listed,
                            f"{len(acked)} acknowledged, {len(work.lost_creates)} lost or refused and retried "
                            f"({dict(work.refused)}); never listed: {never_listed}"))
        unterminal = [c.uuid for c in work.clusters.values() if not set(c.statuses) & set(TERMINAL) and not withdrawn(c)]
        outcome = Counter(next((s for s in c.statuses if s in TERMINAL), "withdrawn" if withdrawn(c) else "none")
                          for c in work.clusters.values())
        checks.append(Check("every cluster reached CREATE_COMPLETE or CREATE_FAILED", not unterminal,
                            f"{dict(outcome)}; not: {unterminal}"))
        not_gone = [c.uuid for c in work.clusters.values() if not c.gone]
        checks.append(Check("every acknowledged delete (204) honoured: every cluster gone", not not_gone,
                            f"{sum(c.delete_attempts for c in work.clusters.values())} deletes for "
                            f"{len(work.clusters)} clusters; left: {not_gone}; stuck: {work.stuck}"))
        got = await reservations(st, project_id)
        checks.append(Check("scheduler reservations = clusters that exist (the end: none)",
                            got == {"clusters": 0, "nodes": 0, "queued_or_building": 0}, f"reserved {got}"))

        code, body = await call(session, "GET", f"{st.devcloud_url}/admin/ledger?project_id={project_id}", admin)
        assert code == 200, body
        prefixes = {model.cluster_prefix(c.name, c.uuid): c.uuid for c in work.clusters.values()}
        dups = duplicate_records(body["records"], prefixes)
        kinds = Counter(r["kind"] for r in body["records"] if r["kind"] in KINDS)
        checks.append(Check("ledger: no duplicate of any kind (kind and name, live or not)", not dups,
                            f"records {dict(kinds)}; duplicates: {json.dumps(dups)[:2000]}"))

        def orphans_in(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: r.get(k) for k in ("kind", "id", "name", "status")} for r in records
                    if r["kind"] in KINDS and r["id"] not in baseline
                    and not (r["kind"] == "security_group" and r["name"] == "default")]

        orphans: list[dict[str, Any]] = []

        async def clean() -> bool:
            _, body = await call(session, "GET", f"{st.devcloud_url}/admin/ledger?live=true", admin)
            orphans[:] = orphans_in(body["records"])
            return not orphans

        try:
            await wait_for(clean, timeout=20, interval=0.5)
        except TimeoutError:
            pass
        checks.append(Check("ledger: no orphan of any kind (nothing live that was not before)", not orphans,
                            f"kinds {', '.join(KINDS)}; orphans: {json.dumps(orphans)[:2000]}"))
        checks.append(await usage_vs_ledger(session, st, admin, project_id, since))
        injected = [f for f in faults if f["at"] is not None]
        checks.append(Check("every fault injected while clusters were in flight",
                            len(injected) == len(order) and all(f["in_flight"] > 0 for f in injected),
                            f"{len(injected)} of {len(order)} injected"))

    print(f"\nchaos: faults (seed {form.seed}, {len(work.clusters)} clusters, {report['wall_seconds']} s)\n"
          + table(("fault", "at (s)", "in flight", "recovered (s)", "what"),
                  [(f["fault"], f["at"], f["in_flight"], f["recovered_after"], f["what"]) for f in faults]))
    print("\nchaos: checks\n" + table(("check", "result", "detail"),
                                     [(c.what, "ok" if c.ok else "FAILED", c.detail[:300]) for c in checks]))
    report |= {"faults": faults, "checks": [asdict(c) for c in checks]}
    (st.state_dir / "chaos-faults-report.json").write_text(json.dumps(report, indent=2, default=str))
    failed = [c for c in checks if not c.ok and (form.name == "full" or c.what not in KNOWN)]
    for c in checks:
        if not c.ok and c not in failed:
            print(f"chaos: known failure, asserted only by make chaos: {c.what}: {KNOWN[c.what]}\n  {c.detail}")
    assert not failed, f"seed {form.seed}: " + "\n".join(f"{c.what}: {c.detail}" for c in failed)


def test_the_fault_order_repeats_with_its_seed() -> None:
    def order(seed: int) -> list[str]:
        return fault_order(FULL, random.Random(seed))

    assert order(3) == order(3) and sorted(order(3)) == sorted(EVERY_FAULT)
    assert order(3) != order(4) and len(EVERY_FAULT) == 13
    assert Form.from_env({"COVE_CHAOS": "full", "COVE_CHAOS_SEED": "9"}).clusters == 200
    assert Form.from_env({"COVE_CHAOS_SEED": "9"}).clusters == 20
