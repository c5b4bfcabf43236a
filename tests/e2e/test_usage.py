"""Usage end to end (LocalStack: every service, the devcloud, the openstack CLI), compared with the devcloud's ledger.

A mixed workload in the demo project: a cluster with a load balancer, floating IPs and a volume per node, resized up
and down; a cluster whose worker vanishes (deleted behind Cove's back) while it is being built; a cluster whose
boots fail (the devcloud's boot_failure_rate); then all three deleted. Afterwards every server, volume, floating IP
and load balancer the ledger recorded for the project is billed by ``GET /v1/usage?group_by=resource`` within 1 s of
the ledger's life of it, and nothing else is billed; the project's totals are the sums of its resources and equal
the ledger's within those seconds; CSV and JSON agree; a member of another project gets 403; and
``openstack coe usage list`` (Cove's OSC plugin) prints the same figures through the real CLI, with its flags.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from deploy.local.stack import LocalStack
from services.provisioner import model
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import LATEST, http, osc, osc_raw, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_nats", "stack"]

BILLED_KINDS = ("server", "volume", "floating_ip", "load_balancer")
TOLERANCE = 1.0
"""Seconds a resource's billed life may differ from the ledger's (the issue's bar)."""


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def status_of(st: LocalStack, tok: str, cid: str) -> str | None:
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
    if code == 404:
        return None
    assert code == 200, body
    return str(body["status"])


async def reaches(st: LocalStack, tok: str, cid: str, wanted: str | None, timeout: float = 120) -> None:
    async def check() -> bool:
        status = await status_of(st, tok, cid)
        assert status is None or wanted is None or not status.endswith("FAILED") or wanted.endswith("FAILED"), status
        return status == wanted

    await wait_for(check, timeout=timeout, interval=0.3, message=f"cluster {cid} {wanted or 'gone'}")


async def devcloud(st: LocalStack, admin: str, method: str, path: str, body: Any = None) -> Any:
    code, out = await http(method, f"{st.devcloud_url}{path}", admin, body)
    assert code in (200, 201, 204), out
    return out


async def ledger(st: LocalStack, admin: str, project: str, since: datetime) -> dict[str, dict[str, Any]]:
    body = await devcloud(st, admin, "GET", f"/admin/ledger?project_id={project}")
    return {r["id"]: r for r in body["records"] if r["kind"] in BILLED_KINDS and ts(r["created_at"]) >= since}


async def usage(st: LocalStack, tok: str, accept: str = "application/json", **query: str) -> tuple[int, str]:
    headers = {"X-Auth-Token": tok, "Accept": accept, **LATEST}
    async with aiohttp.ClientSession() as s, s.get(f"{st.api_url}/usage", params=query, headers=headers) as r:
        return r.status, await r.text()


async def create(st: LocalStack, tok: str, template: str, name: str, node_count: int) -> str:
    code, body = await http("POST", f"{st.api_url}/clusters", tok,
                            {"name": name, "cluster_template_id": template, "node_count": node_count})
    assert code == 202, body
    return str(body["uuid"])


async def test_usage_equals_the_ledger_over_a_mixed_workload(stack: LocalStack) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    alt = await token(st, "alt", "alt-pass", "alt")
    start = datetime.now(UTC) - timedelta(seconds=1)
    # the cloud at half speed: a boot takes 1.5-4 s, so billing from ACTIVE instead of the create would miss by
    # more than the tolerance, and this test would say so
    factor = (await devcloud(st, admin, "GET", "/admin/timing"))["time_factor"]
    await devcloud(st, admin, "PUT", "/admin/timing", {"time_factor": 0.5})
    try:
        await workload(st, demo, admin, alt, start)
    finally:
        await devcloud(st, admin, "PUT", "/admin/timing", {"time_factor": factor})


async def workload(st: LocalStack, demo: str, admin: str, alt: str, start: datetime) -> None:
    tag = uuid.uuid4().hex[:6]
    code, tpl = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": f"usage-{tag}", "coe": "kubernetes", "image_id": "fedora-coreos", "external_network_id": "public",
        "flavor_id": "m1.small", "master_flavor_id": "m1.medium", "docker_volume_size": 1,
        "master_lb_enabled": True, "floating_ip_enabled": True})
    assert code == 201, tpl

    # 1. a cluster with a load balancer, floating IPs and volumes, resized up and down
    c1 = await create(st, demo, tpl["uuid"], f"use1-{tag}", 1)
    await reaches(st, demo, c1, "CREATE_COMPLETE")
    project = (await http("GET", f"{st.api_url}/clusters/{c1}", demo))[1]["project_id"]
    for count in (2, 1):
        code, body = await http("POST", f"{st.api_url}/clusters/{c1}/actions/resize", demo, {"node_count": count})
        assert code == 202, body
        await reaches(st, demo, c1, "UPDATE_COMPLETE")

    # 2. a worker vanishes (deleted behind Cove's back) while its cluster is being built: the provisioner notices
    # during the build, bills the server until it saw it gone and boots a replacement
    c2 = await create(st, demo, tpl["uuid"], f"use2-{tag}", 1)
    worker = model.node_name(model.cluster_prefix(f"use2-{tag}", c2), model.WORKER, 0)
    await devcloud(st, admin, "POST", "/admin/faults/servers", {"name": worker, "action": "vanish", "after_seconds": 0})
    await reaches(st, demo, c2, "CREATE_COMPLETE")
    c2_servers = [r for r in (await ledger(st, admin, project, start)).values()
                  if r["kind"] == "server" and r["name"] == worker]
    assert len(c2_servers) == 2 and sum(r["deleted_at"] is not None for r in c2_servers) == 1, c2_servers

    # 3. every boot fails: CREATE_FAILED, with servers in ERROR (billed until deleted, as the ledger keeps them)
    await devcloud(st, admin, "PUT", "/admin/faults", {"boot_failure_rate": 1.0})
    try:
        c3 = await create(st, demo, tpl["uuid"], f"use3-{tag}", 1)
        await reaches(st, demo, c3, "CREATE_FAILED")
    finally:
        await devcloud(st, admin, "PUT", "/admin/faults", {"boot_failure_rate": 0.0})

    for cid in (c1, c2, c3):
        code, body = await http("DELETE", f"{st.api_url}/clusters/{cid}", demo)
        assert code == 204, body
    for cid in (c1, c2, c3):
        await reaches(st, demo, cid, None)
    end = datetime.now(UTC) + timedelta(seconds=60)  # every interval is closed: a window past now changes nothing
    window = {"start": start.isoformat(), "end": end.isoformat()}

    async def settled() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] | None:
        records = await ledger(st, admin, project, start)
        code, text = await usage(st, admin, project_id=project, group_by="resource", **window)
        assert code == 200, text
        rows = {r["resource_id"]: r for r in json.loads(text)["usage"] if r["resource_kind"] != "cluster"}
        if any(r["deleted_at"] is None for r in records.values()):
            return None
        if set(rows) != set(records) or any(r["ended_at"] is None for r in rows.values()):
            return None
        return records, rows

    records, rows = await wait_for(settled, timeout=60, interval=0.5, message="every resource billed and closed")
    kinds = {k: sum(r["kind"] == k for r in records.values()) for k in BILLED_KINDS}
    assert kinds["server"] >= 7 and kinds["volume"] >= 5 and kinds["floating_ip"] >= 5, kinds
    assert kinds["load_balancer"] == 3, kinds
    worst: dict[str, float] = dict.fromkeys(BILLED_KINDS, 0.0)
    for rid, rec in records.items():
        life = (ts(rec["deleted_at"]) - ts(rec["created_at"])).total_seconds()
        billed = rows[rid]["billed_seconds"]
        worst[rec["kind"]] = max(worst[rec["kind"]], abs(billed - life))
        assert abs(billed - life) <= TOLERANCE, (rec["kind"], rec["name"], billed, life)
        if rec["kind"] == "server":
            assert (rows[rid]["vcpus"], rows[rid]["ram_mb"]) == (rec["vcpus"], rec["ram_mb"])
        if rec["kind"] == "volume":
            assert rows[rid]["size_gb"] == rec["volume_gb"]
    print(f"\nworst |billed - ledger| over {len(records)} resources, by kind: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in worst.items()))

    # the project's totals are its resources' sums, and the ledger's within the per-resource tolerance
    code, text = await usage(st, demo, group_by="project", **window)
    assert code == 200, text
    (total,) = json.loads(text)["usage"]
    assert total["project_id"] == project
    _, resource_text = await usage(st, demo, group_by="resource", **window)
    resources = json.loads(resource_text)["usage"]
    for fig in ("vcpu_hours", "ram_gb_hours", "volume_gb_hours", "floating_ip_hours", "load_balancer_hours",
                "server_hours", "cluster_hours"):
        assert total[fig] == pytest.approx(sum(r[fig] for r in resources), rel=1e-12, abs=1e-12), fig
    servers = [r for r in records.values() if r["kind"] == "server"]
    ledger_vcpu_h = sum(r["vcpus"] * (ts(r["deleted_at"]) - ts(r["created_at"])).total_seconds()
                        for r in servers) / 3600
    assert abs(total["vcpu_hours"] - ledger_vcpu_h) <= sum(r["vcpus"] for r in servers) * TOLERANCE / 3600
    assert total["cluster_hours"] > 0 and total["load_balancer_hours"] > 0

    # CSV and JSON agree, row by row and column by column
    code, text = await usage(st, demo, group_by="cluster", **window)
    code_csv, text_csv = await usage(st, demo, accept="text/csv", group_by="cluster", **window)
    assert code == code_csv == 200, text_csv
    as_json = json.loads(text)["usage"]
    as_csv = list(csv.DictReader(io.StringIO(text_csv)))
    assert len(as_json) == len(as_csv) == 3
    for j, c in zip(as_json, as_csv, strict=True):
        assert list(c) == list(j)
        for key, value in j.items():
            assert c[key] == (value if isinstance(value, str) else json.dumps(value)), key

    # members and readers see their own project; another project's usage is refused
    code, text = await usage(st, alt, project_id=project, **window)
    assert code == 403, text
    code, text = await usage(st, alt, **window)
    assert code == 200 and json.loads(text)["usage"] == [], text
    viewer = await token(st, "viewer", "viewer-pass", "demo")
    assert (await usage(st, viewer, project_id=project, **window))[0] == 200
    code, text = await usage(st, admin, group_by="nonsense")
    assert code == 400, text

    # the real CLI: `openstack coe usage list` with its flags, in every format cliff gives
    flags = ["--start", window["start"], "--end", window["end"]]
    listed = json.loads(osc(st, "coe", "usage", "list", *flags, "--group-by", "cluster", "-f", "json"))
    assert listed == as_json
    listed_csv = list(csv.DictReader(io.StringIO(osc(st, "coe", "usage", "list", *flags, "--group-by", "cluster",
                                                     "-f", "csv"))))
    assert [float(r["vcpu_hours"]) for r in listed_csv] == [r["vcpu_hours"] for r in as_json]
    value = osc(st, "coe", "usage", "list", *flags, "--cluster", c1, "-f", "value", "-c", "vcpu_hours")
    assert float(value) == next(r["vcpu_hours"] for r in as_json if r["cluster_id"] == c1)
    table = osc(st, "coe", "usage", "list", *flags, "--group-by", "resource", "-f", "table")
    assert "load_balancer" in table and "floating_ip" in table
    by_admin = json.loads(osc(st, "coe", "usage", "list", *flags, "--project", project, "-f", "json",
                              cloud="cove-admin"))
    assert by_admin == [total]
    refused = osc_raw(st, "coe", "usage", "list", "--project", project, cloud="cove-alt")
    assert refused.returncode != 0 and "403" in refused.stderr + refused.stdout
