"""Cluster templates and clusters end to end with the real clients (LocalStack: every service as a subprocess, its
own NATS, a fresh database, the devcloud): `openstack coe cluster template ...` and `openstack coe cluster ...`
(python-magnumclient 5's OSC plugin) and python-magnumclient's library through a keystoneauth session and the
catalog (service type container-infra).

* an admin publishes a template with labels; a member's `--public` is refused (403) and creates nothing;
* template labels change with `update --label/--no-label` (JSON-patch add/remove /labels/<key>) and with the
  older clients' `replace labels=...` (a Python-literal dict string); show/list find templates by name;
* a cluster created with `--labels ... --merge-labels` shows labels_added/labels_overridden against its template;
  the template it uses cannot be deleted (400) nor have its labels changed, only be renamed;
* `coe cluster update <c> --node-count 2` really adds a worker server in the devcloud (1 -> 2), UPDATE_COMPLETE;
* `coe cluster delete` leaves no live server.

magnumclient 5 dropped the positional `update <t> replace|add|remove attr=value` form of `coe cluster template
update` and `coe cluster update`; its flags send the same JSON-patch ops (add/remove on /labels/<key>, replace
/node_count). The older `replace labels=k=v,...` patch is sent through magnumclient's own `args_array_to_patch`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from typing import Any

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from magnumclient.client import Client as MagnumClient
from magnumclient.common.utils import args_array_to_patch

from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import OPENSTACK, http, live_servers, osc, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures reused from the lifecycle test: a stack of our own

TEMPLATE_ARGS = ("--coe", "kubernetes", "--image", "fedora-coreos", "--external-network", "public",
                 "--flavor", "m1.small", "--master-flavor", "m1.small")


def osc_raw(st: LocalStack, *args: str, cloud: str = "cove-demo") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(st.state_dir / "clouds.yaml"))
    return subprocess.run([OPENSTACK, "--os-cloud", cloud, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def show_json(st: LocalStack, *args: str, cloud: str = "cove-demo") -> dict[str, Any]:
    out = osc(st, *args, "-f", "json", cloud=cloud)
    body: dict[str, Any] = json.loads(out)
    return body


def magnum(st: LocalStack, user: str, password: str, project: str, api_version: str | None = None) -> Any:
    """python-magnumclient as an application uses it: a keystoneauth session, the endpoint from the catalog
    (``api_version="latest"`` for what needs a later microversion than the client's default, nodegroups)."""
    auth = v3.Password(auth_url=f"{st.devcloud_url}/identity/v3", username=user, password=password,
                       project_name=project, user_domain_name="Default", project_domain_name="Default")
    return MagnumClient("1", session=ks_session.Session(auth=auth), service_type="container-infra",
                        api_version=api_version)


async def settled(st: LocalStack, tok: str, cid: str, wanted: str) -> dict[str, Any] | None:
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", tok)
    assert code == 200, body
    assert not body["status"].endswith("FAILED"), body
    return dict(body) if body["status"] == wanted else None


def workers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "-node-" in (r.get("name") or "")]


async def test_templates_and_clusters_with_the_cli_and_magnumclient(stack: LocalStack) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    sfx = uuid.uuid4().hex[:6]
    pub, mine, cname = f"pub-{sfx}", f"mine-{sfx}", f"cli-{sfx}"

    # an admin publishes a template with labels (magnumclient sends them as strings)
    out = osc(st, "coe", "cluster", "template", "create", pub, *TEMPLATE_ARGS, "--labels", "a=1,b=true",
              "--public", "-f", "json", cloud="cove-admin")
    accepted, _, shown_json = out.partition("\n")  # magnumclient prints a line before the formatted template
    assert "accepted" in accepted, out
    created = json.loads(shown_json)
    assert created["name"] == pub and created["public"] is True, created
    assert created["labels"] == {"a": "1", "b": "true"}, created

    # a member may not publish: 403, nothing created
    refused = osc_raw(st, "coe", "cluster", "template", "create", f"nope-{sfx}", *TEMPLATE_ARGS, "--public")
    assert refused.returncode != 0, refused.stdout
    assert "(HTTP 403)" in refused.stderr and "public or hidden" in refused.stderr, refused.stderr

    # the member creates a private template of its own; sees the admin's public one by name
    osc(st, "coe", "cluster", "template", "create", mine, *TEMPLATE_ARGS, "--labels", "a=1,b=true,c=3")
    listed = json.loads(osc(st, "coe", "cluster", "template", "list", "-f", "json"))
    names = [t["name"] for t in listed]
    assert pub in names and mine in names and f"nope-{sfx}" not in names, names
    seen_pub = show_json(st, "coe", "cluster", "template", "show", pub)
    assert seen_pub["uuid"] == created["uuid"] and seen_pub["public"] is True
    refused = osc_raw(st, "coe", "cluster", "template", "update", mine, "--public")
    assert refused.returncode != 0 and "(HTTP 403)" in refused.stderr, refused.stderr

    # labels: add (new key and existing key), remove, then the older clients' `replace labels=...`
    tpl = show_json(st, "coe", "cluster", "template", "update", mine, "--label", "d=4", "--label", "a=2")
    assert tpl["labels"] == {"a": "2", "b": "true", "c": "3", "d": "4"}, tpl
    tpl = show_json(st, "coe", "cluster", "template", "update", mine, "--no-label", "d")
    assert tpl["labels"] == {"a": "2", "b": "true", "c": "3"}, tpl
    mc = await asyncio.to_thread(magnum, st, "demo", "demo-pass", "demo")
    replaced = await asyncio.to_thread(mc.cluster_templates.update, mine,
                                       args_array_to_patch("replace", ["labels=a=1,c=3,e=5"]))
    assert replaced.labels == {"a": "1", "c": "3", "e": "5"}, replaced.labels
    tpl = show_json(st, "coe", "cluster", "template", "show", mine)
    assert tpl["labels"] == {"a": "1", "c": "3", "e": "5"}, tpl
    tid = tpl["uuid"]

    # a cluster whose labels merge over the template's
    osc(st, "coe", "cluster", "create", cname, "--cluster-template", mine, "--node-count", "1",
        "--labels", "c=30,f=6", "--merge-labels")
    shown = show_json(st, "coe", "cluster", "show", cname)
    cid = shown["uuid"]
    assert shown["cluster_template_id"] == tid, shown
    assert shown["labels"] == {"a": "1", "c": "30", "e": "5", "f": "6"}, shown
    assert shown["labels_added"] == {"f": "6"} and shown["labels_overridden"] == {"c": "3"}, shown
    assert shown["labels_skipped"] == {}, shown

    # while a cluster uses the template: no delete (400), no label change (400); a rename is allowed
    out = osc(st, "coe", "cluster", "template", "delete", mine)  # the CLI reports the failure, exits 0
    assert "failed" in out and "(HTTP 400)" in out and "referenced" in out, out
    refused = osc_raw(st, "coe", "cluster", "template", "update", mine, "--label", "z=1")
    assert refused.returncode != 0 and "(HTTP 400)" in refused.stderr, refused.stderr
    renamed = show_json(st, "coe", "cluster", "template", "update", mine, "--name", f"{mine}-r")
    assert renamed["uuid"] == tid and renamed["name"] == f"{mine}-r"
    mine = f"{mine}-r"

    cluster = await wait_for(lambda: settled(st, demo, cid, "CREATE_COMPLETE"), timeout=60, interval=0.5,
                             message="cluster CREATE_COMPLETE")
    project = cluster["project_id"]
    assert len(workers(await live_servers(st, admin, project))) == 1
    assert len(await live_servers(st, admin, project)) == 2

    # `coe cluster update --node-count 2` (JSON-patch replace /node_count): a second worker really boots
    out = osc(st, "coe", "cluster", "update", cname, "--node-count", "2")
    assert "accepted" in out.lower(), out
    code, body = await http("GET", f"{st.api_url}/clusters/{cid}", demo)
    assert code == 200 and body["status"] in ("UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"), body
    await wait_for(lambda: settled(st, demo, cid, "UPDATE_COMPLETE"), timeout=60, interval=0.5,
                   message="cluster UPDATE_COMPLETE after node_count 2")
    live = await live_servers(st, admin, project)
    assert len(workers(live)) == 2 and len(live) == 3, live
    shown = show_json(st, "coe", "cluster", "show", cname)
    assert shown["status"] == "UPDATE_COMPLETE" and shown["node_count"] == 2, shown
    assert len(shown["node_addresses"]) == 2 and len(shown["master_addresses"]) == 1, shown
    assert shown["cluster_template_id"] == tid and shown["labels_added"] == {"f": "6"}, shown
    # only node_count (and health) may change on a cluster
    refused = osc_raw(st, "coe", "cluster", "update", cname, "--master-count", "3")
    assert refused.returncode != 0 and "(HTTP 400)" in refused.stderr, refused.stderr

    # python-magnumclient's library over the catalog: list/get clusters and templates
    clusters = await asyncio.to_thread(mc.clusters.list)
    assert [(c.uuid, c.node_count, c.status) for c in clusters if c.name == cname] == [
        (cid, 2, "UPDATE_COMPLETE")], clusters
    got = await asyncio.to_thread(mc.clusters.get, cname)
    assert got.uuid == cid and got.labels_overridden == {"c": "3"} and len(got.node_addresses) == 2
    templates = await asyncio.to_thread(mc.cluster_templates.list)
    assert {t.name for t in templates} >= {pub, mine}
    got_t = await asyncio.to_thread(mc.cluster_templates.get, pub)
    assert got_t.uuid == created["uuid"] and got_t.public is True and got_t.labels == {"a": "1", "b": "true"}

    # delete: nothing left running; then the template can go
    osc(st, "coe", "cluster", "delete", cname)

    async def gone() -> bool:
        return (await http("GET", f"{st.api_url}/clusters/{cid}", demo))[0] == 404

    await wait_for(gone, timeout=60, interval=0.5, message="cluster deleted")
    assert await live_servers(st, admin, project) == []
    out = osc(st, "coe", "cluster", "template", "delete", mine)
    assert "accepted" in out and "failed" not in out, out
    osc(st, "coe", "cluster", "template", "delete", pub, cloud="cove-admin")
    left = json.loads(osc(st, "coe", "cluster", "template", "list", "-f", "json", cloud="cove-admin"))
    assert not {pub, mine} & {t["name"] for t in left}, left
