"""Quota admission end to end (LocalStack: every service, its own devcloud, the openstack CLI; docs/adr/0008):

* a project without enough cloud quota (Nova cores) gets its 403, naming the resource, before any server is booted:
  the devcloud's ledger holds no server of the project;
* an admin sets Cove's quotas with python-magnumclient (`openstack coe quotas create --resource vCPU`), and a
  create over them is refused naming the resource;
* with one build slot (COVE_MAX_BUILDS=1) a second cluster waits, and `openstack coe cluster show` says its place.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from deploy.local.nats import NatsServer
from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import http, osc, private_nats, token
from tests.stacks import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_nats"]

STACK_ENV = {"COVE_MAX_BUILDS": "1", "COVE_CLOUD_QUOTA_TTL": "0.5"}


@pytest.fixture(scope="module")
async def qstack(
    private_nats: NatsServer, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    async with running_stack(private_nats.url, pg_admin_url, tmp_path_factory.mktemp("e2e-quota"), env=STACK_ENV,
                             time_factor=1.0) as local:
        yield local


async def servers_ever(st: LocalStack, admin: str, project_id: str) -> list[dict[str, Any]]:
    status, body = await http("GET", f"{st.devcloud_url}/admin/ledger?kind=server&project_id={project_id}", admin)
    assert status == 200, body
    return list(body["records"])


async def project_of(st: LocalStack, admin: str, name: str) -> str:
    status, body = await http("GET", f"{st.devcloud_url}/identity/v3/projects?name={name}", admin)
    assert status == 200, body
    return str(body["projects"][0]["id"])


async def set_cores(st: LocalStack, admin: str, project_id: str, cores: int) -> None:
    status, body = await http("PUT", f"{st.devcloud_url}/compute/v2.1/os-quota-sets/{project_id}", admin,
                              {"quota_set": {"cores": cores}})
    assert status == 200, body


async def test_cloud_quota_refuses_before_booting_and_the_queue_shows_places(qstack: LocalStack) -> None:
    st = qstack
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    demo_id = await project_of(st, admin, "demo")
    code, tpl = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": f"q-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_flavor_id": "m1.small"})
    assert code == 201, tpl

    # The cloud lets the project have 3 cores; 1 master m1.small (1) + 1 worker m1.large (4) needs 5.
    await set_cores(st, admin, demo_id, 3)
    code, err = await http("POST", f"{st.api_url}/clusters", demo, {
        "name": "too-big", "cluster_template_id": tpl["uuid"], "flavor_id": "m1.large"})
    assert code == 403, err
    assert err["errors"][0]["detail"] == "Quota exceeded in the cloud for cores: requested 5, 3 of 3 left."
    assert await servers_ever(st, admin, demo_id) == []  # refused before anything was booted
    code, listed = await http("GET", f"{st.api_url}/clusters", demo)
    assert code == 200 and listed["clusters"] == []
    await set_cores(st, admin, demo_id, 200)

    # Cove's own quotas, set the way admins set Magnum's: python-magnumclient passes the resource name through.
    osc(st, "coe", "quotas", "create", "--project-id", demo_id, "--resource", "vCPU", "--hard-limit", "4",
        cloud="cove-admin")
    shown = osc(st, "coe", "quotas", "show", "--project-id", demo_id, "--resource", "vCPU", cloud="cove-admin")
    fields = {k.strip(): v.strip() for k, _, v in (line.strip("| ").partition("|") for line in shown.splitlines()
                                                   if line.startswith("|"))}
    assert fields.get("hard_limit") == "4" and fields.get("resource") == "vCPU", shown

    async def refused_on_vcpu() -> dict[str, Any] | None:
        # the cloud's figure is cached for COVE_CLOUD_QUOTA_TTL: retry until the raised cores are seen
        c, e = await http("POST", f"{st.api_url}/clusters", demo, {
            "name": "over-vcpu", "cluster_template_id": tpl["uuid"], "flavor_id": "m1.large"})
        assert c == 403, e
        return e if "vCPU" in e["errors"][0]["detail"] else None

    err = await wait_for(refused_on_vcpu, timeout=10, interval=0.6, message="refused on Cove's vCPU quota")
    assert err["errors"][0]["detail"] == "Quota exceeded for vCPU: requested 5, 4 of 4 left."
    osc(st, "coe", "quotas", "delete", "--project-id", demo_id, "--resource", "vCPU", cloud="cove-admin")

    # One build slot: the first cluster builds, the second waits and says so. The first's first server create
    # hangs 20 s in the cloud, so the first is still building when the CLI looks, however loaded the machine.
    code, fault = await http("POST", f"{st.devcloud_url}/admin/faults/api", admin, {
        "service": "compute", "method": "POST", "path": "/servers$", "hang_seconds": 20.0, "count": 1})
    assert code in (200, 201), fault
    for name in ("q-first", "q-second"):
        code, body = await http("POST", f"{st.api_url}/clusters", demo, {
            "name": name, "cluster_template_id": tpl["uuid"], "node_count": 1})
        assert code == 202, body

    async def waiting_first() -> dict[str, Any] | None:
        shown: dict[str, Any] = json.loads(osc(st, "coe", "cluster", "show", "q-second", "-f", "json"))
        assert shown["status"] == "CREATE_IN_PROGRESS", shown
        return shown if shown["status_reason"] is not None else None  # None until the queue's fact is read

    waiting = await wait_for(waiting_first, timeout=15, interval=0.5, message="q-second's place in the queue")
    assert waiting["status_reason"] == "Waiting to be built: 1st in line", waiting

    async def built(name: str) -> bool:
        shown = json.loads(osc(st, "coe", "cluster", "show", name, "-f", "json"))
        assert not shown["status"].endswith("FAILED"), shown
        return bool(shown["status"] == "CREATE_COMPLETE")

    await wait_for(lambda: built("q-first"), timeout=90, interval=1.0, message="q-first built")
    await wait_for(lambda: built("q-second"), timeout=90, interval=1.0, message="q-second built after it")
    for name in ("q-first", "q-second"):
        osc(st, "coe", "cluster", "delete", name)

    async def gone() -> bool:
        code, body = await http("GET", f"{st.api_url}/clusters", demo)
        return code == 200 and not body["clusters"]

    await wait_for(gone, timeout=90, interval=1.0, message="both deleted")
