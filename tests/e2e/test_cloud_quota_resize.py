"""The cloud's quota checked for resizes and new nodegroups, end to end (LocalStack: every service, its own devcloud,
the openstack CLI; docs/adr/0008): with the project's Nova cores lowered under what a growth needs,
`openstack coe cluster resize`, `openstack coe cluster update ... node_count=` and `openstack coe nodegroup create`
are refused with the cloud's words and nothing is booted; a growth within the cores left is built.
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
from tests.e2e.test_cluster_lifecycle import http, live_servers, osc, osc_raw, private_nats, token
from tests.e2e.test_quota_admission import project_of, servers_ever, set_cores
from tests.stacks import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_nats"]

STACK_ENV = {"COVE_CLOUD_QUOTA_TTL": "0.5"}


@pytest.fixture(scope="module")
async def cqstack(
    private_nats: NatsServer, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    async with running_stack(private_nats.url, pg_admin_url, tmp_path_factory.mktemp("e2e-cloud-quota-resize"),
                             env=STACK_ENV, time_factor=1.0) as local:
        yield local


def refused(st: LocalStack, reason: str, *args: str) -> None:
    """The CLI failed with the API's 403 and its reason (magnumclient prints the reason without its final period,
    then ``(HTTP 403)``)."""
    proc = osc_raw(st, *args)
    assert proc.returncode != 0, f"openstack {' '.join(args)} was accepted:\n{proc.stdout}"
    assert f"{reason.rstrip('.')} (HTTP 403)" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


async def shown(st: LocalStack, tok: str, cid: str) -> dict[str, Any]:
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
    assert code == 200, body
    assert not body["status"].endswith("FAILED"), body
    return dict(body)


async def test_a_growth_over_the_clouds_cores_is_refused_and_one_within_is_built(cqstack: LocalStack) -> None:
    st = cqstack
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    project = await project_of(st, admin, "demo")
    code, tpl = await http("POST", f"{st.api_url}/clustertemplates", demo, {
        "name": f"cqr-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.tiny", "master_flavor_id": "m1.tiny"})
    assert code == 201, tpl
    code, body = await http("POST", f"{st.api_url}/clusters", demo, {
        "name": "cqr", "cluster_template_id": tpl["uuid"], "node_count": 1})
    assert code == 202, body
    cid = body["uuid"]

    async def status_is(wanted: str) -> dict[str, Any] | None:
        cluster = await shown(st, demo, cid)
        return cluster if cluster["status"] == wanted else None

    await wait_for(lambda: status_is("CREATE_COMPLETE"), timeout=120, interval=0.5, message="cqr built")
    assert len(await live_servers(st, admin, project)) == 2  # a master and a worker, m1.tiny: 1 core each

    # The cloud lets the project have 3 cores: 2 are used, 1 is left.
    await set_cores(st, admin, project, 3)
    booted = len(await servers_ever(st, admin, project))
    words = "Quota exceeded in the cloud for cores: requested 2, 1 of 3 left."
    refused(st, words, "coe", "cluster", "resize", "cqr", "3")  # POST /actions/resize
    refused(st, words, "coe", "cluster", "update", "cqr", "--node-count", "3")  # PATCH node_count
    refused(st, words, "coe", "nodegroup", "create", "cqr", "cqr-more", "--node-count", "2", "--flavor", "m1.tiny")
    # Nothing was booted or changed: the ledger holds no new server, the cluster and its groups are as they were.
    assert len(await servers_ever(st, admin, project)) == booted
    cluster = await shown(st, demo, cid)
    assert cluster["status"] == "CREATE_COMPLETE" and cluster["node_count"] == 1, cluster
    groups = json.loads(osc(st, "coe", "nodegroup", "list", "cqr", "-f", "json"))
    assert sorted(g["name"] for g in groups) == ["default-master", "default-worker"], groups

    # One more node fits in the core left: it is built.
    osc(st, "coe", "cluster", "resize", "cqr", "2")
    await wait_for(lambda: status_is("UPDATE_COMPLETE"), timeout=120, interval=0.5, message="cqr grown to 2")
    assert len(await live_servers(st, admin, project)) == 3
    assert (await shown(st, demo, cid))["node_count"] == 2

    # Now every core is used: the cloud's usage (asked again after the update ended) leaves none for another node.
    booted = len(await servers_ever(st, admin, project))
    refused(st, "Quota exceeded in the cloud for cores: requested 1, 0 of 3 left.",
            "coe", "nodegroup", "create", "cqr", "cqr-one", "--node-count", "1", "--flavor", "m1.tiny")
    assert len(await servers_ever(st, admin, project)) == booted

    # A shrink is never refused, whatever the cloud has left.
    osc(st, "coe", "cluster", "resize", "cqr", "1")

    async def shrunk() -> bool:
        return len(await live_servers(st, admin, project)) == 2 and (await shown(st, demo, cid))["node_count"] == 1

    await wait_for(shrunk, timeout=120, interval=0.5, message="cqr back to one worker")
    await set_cores(st, admin, project, 200)
    osc(st, "coe", "cluster", "delete", "cqr")

    async def gone() -> bool:
        code, body = await http("GET", f"{st.api_url}/clusters", demo)
        return code == 200 and not body["clusters"]

    await wait_for(gone, timeout=120, interval=1.0, message="cqr deleted")
