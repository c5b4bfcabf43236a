"""What the widely used clients send, end to end (every service as a subprocess, the devcloud, the real clients):

* paged and sorted lists of every resource the clients list (cluster templates, clusters, nodegroups, quotas,
  mservices): `openstack coe ... list` with `--limit`, `--marker` (where the CLI has it), `--sort-key` and
  `--sort-dir`; python-magnumclient's `list(limit=..., marker=..., sort_key=..., sort_dir=...)` page by page;
  openstacksdk's generators, which follow the pages themselves. Every paged walk equals the unpaged list.
  magnumclient sends `GET /v1/clusters/?limit=2` (a slash before the `?`): before the router served both
  spellings, `--limit` and `--sort-key` were 404s;
* openstacksdk's `update_cluster(<uuid>, node_count=N)` and `update_cluster_template(<uuid>, name=...)`, with the
  newest openstacksdk and with 4.14 (what Ansible's openstack.cloud 2.5 runs with), whose PATCH starts with
  `{"op": "move", "from": "/uuid", "path": "/id"}` and `add`s the attribute: the cluster really resizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openstack
import openstack.version
import pytest

from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_clients_templates_clusters import magnum
from tests.e2e.test_cluster_lifecycle import (
    cluster_status,
    live_servers,
    osc,
    private_nats,
    sdk,
    stack,
    token,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures: a stack of our own

PAGE = 2
SDK_4_14 = Path(sys.executable).parent.parent / "openstacksdk-4.14"  # `make venv` installs it (Makefile)
SDK_UPDATE_SCRIPT = Path(__file__).with_name("sdk_update.py")
TEMPLATE_ARGS = ("--coe", "kubernetes", "--image", "fedora-coreos", "--external-network", "public",
                 "--flavor", "m1.small", "--master-flavor", "m1.small")


def cli_list(st: LocalStack, *args: str, cloud: str = "cove-demo") -> list[dict[str, Any]]:
    """The rows `openstack coe <args>` prints: as JSON (`-f json`), or read off the table for `coe quotas list`,
    which magnumclient prints itself and which takes no `-f`."""
    if args[0] != "quotas":
        rows: list[dict[str, Any]] = json.loads(osc(st, "coe", *args, "-f", "json", cloud=cloud))
        return rows
    lines = [line for line in osc(st, "coe", *args, cloud=cloud).splitlines() if line.startswith("|")]
    header, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(header, cells, strict=True)) for cells in body]


def paged(fetch: Callable[[str | None], list[Any]], marker_of: Callable[[Any], str]) -> list[list[Any]]:
    """Every page of a magnumclient list, each asked for with the marker of the last item of the one before."""
    pages: list[list[Any]] = []
    marker: str | None = None
    while True:
        page = fetch(marker)
        assert len(page) <= PAGE, page
        pages.append(page)
        if len(page) < PAGE:
            return pages
        marker = marker_of(page[-1])


def check_cli(st: LocalStack, what: tuple[str, ...], everything: list[dict[str, Any]], key: str,
              cloud: str = "cove-demo") -> None:
    """`--limit`, `--sort-key`/`--sort-dir` (both directions, with and without a limit) against the unpaged list."""
    assert len(everything) > PAGE, everything
    first = cli_list(st, *what, "--limit", str(PAGE), cloud=cloud)
    assert first == everything[:PAGE], (what, first)
    for direction in ("asc", "desc"):
        ordered = sorted(everything, key=lambda row: row[key], reverse=direction == "desc")
        shown = cli_list(st, *what, "--sort-key", key, "--sort-dir", direction, cloud=cloud)
        assert [r[key] for r in shown] == [r[key] for r in ordered], (what, direction, shown)
        top = cli_list(st, *what, "--sort-key", key, "--sort-dir", direction, "--limit", str(PAGE), cloud=cloud)
        assert [r[key] for r in top] == [r[key] for r in ordered[:PAGE]], (what, direction, top)


async def test_every_listed_resource_pages_and_sorts_through_every_client(stack: LocalStack) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    sfx = uuid.uuid4().hex[:6]
    names = [f"pg-{sfx}-{c}" for c in "cadbe"]  # created in an order that is not the names' order

    # -- cluster templates
    for name in names:
        osc(st, "coe", "cluster", "template", "create", name, *TEMPLATE_ARGS)
    templates = cli_list(st, "cluster", "template", "list")
    assert [t["name"] for t in templates] == names, templates
    check_cli(st, ("cluster", "template", "list"), templates, "name")
    mc = await asyncio.to_thread(magnum, st, "demo", "demo-pass", "demo")
    for direction in ("asc", "desc"):
        pages = await asyncio.to_thread(paged, lambda m, d=direction: mc.cluster_templates.list(
            limit=PAGE, marker=m, sort_key="name", sort_dir=d), lambda t: t.uuid)
        assert len(pages) == 3, pages
        assert [t.name for page in pages for t in page] == sorted(names, reverse=direction == "desc")
    coe = (await asyncio.to_thread(sdk, st)).container_infrastructure_management
    walked = await asyncio.to_thread(lambda: [t.id for t in coe.cluster_templates(limit=PAGE)])
    assert walked == [t["uuid"] for t in templates]

    # -- clusters
    for name in names:
        osc(st, "coe", "cluster", "create", name, "--cluster-template", names[0], "--node-count", "1")
    clusters = cli_list(st, "cluster", "list")
    assert [c["name"] for c in clusters] == names, clusters
    check_cli(st, ("cluster", "list"), clusters, "name")
    for direction in ("asc", "desc"):
        pages = await asyncio.to_thread(paged, lambda m, d=direction: mc.clusters.list(
            limit=PAGE, marker=m, sort_key="name", sort_dir=d), lambda c: c.uuid)
        assert [c.name for page in pages for c in page] == sorted(names, reverse=direction == "desc")
    walked = await asyncio.to_thread(lambda: [c.id for c in coe.clusters(limit=PAGE)])
    assert walked == [c["uuid"] for c in clusters]

    # -- nodegroups of one cluster: its two defaults and three more
    cid = clusters[0]["uuid"]
    await wait_for(lambda: cluster_status(st, demo, cid, "CREATE_COMPLETE"), timeout=90, interval=0.5,
                   message="cluster CREATE_COMPLETE")
    for c in "zyx":
        osc(st, "coe", "nodegroup", "create", cid, f"ng-{c}", "--node-count", "1")
    groups = cli_list(st, "nodegroup", "list", cid)
    assert sorted(g["name"] for g in groups) == ["default-master", "default-worker", "ng-x", "ng-y", "ng-z"]
    check_cli(st, ("nodegroup", "list", cid), groups, "name")
    mc_latest = await asyncio.to_thread(magnum, st, "demo", "demo-pass", "demo", "latest")
    for direction in ("asc", "desc"):
        pages = await asyncio.to_thread(paged, lambda m, d=direction: mc_latest.nodegroups.list(
            cid, limit=PAGE, marker=m, sort_key="name", sort_dir=d), lambda g: g.uuid)
        assert [g.name for page in pages for g in page] == sorted((g["name"] for g in groups),
                                                                  reverse=direction == "desc")

    # -- quotas (admin, every project): the CLI's --marker is the last id of the page before
    admin_mc = await asyncio.to_thread(magnum, st, "admin", "admin-pass", "admin")
    for project in ("admin", "service", "demo", "alt"):
        project_id = await asyncio.to_thread(lambda p=project: sdk(st, "cove-admin").identity.find_project(p).id)
        osc(st, "coe", "quotas", "create", "--project-id", project_id, "--resource", "Cluster", "--hard-limit",
            "40", cloud="cove-admin")
    quotas = cli_list(st, "quotas", "list", "--all-tenants", cloud="cove-admin")
    assert len(quotas) == 4, quotas
    check_cli(st, ("quotas", "list", "--all-tenants"), quotas, "project_id", cloud="cove-admin")
    ids = [q.id for q in await asyncio.to_thread(admin_mc.quotas.list, all_tenants=True)]
    first = cli_list(st, "quotas", "list", "--all-tenants", "--limit", str(PAGE), cloud="cove-admin")
    rest = cli_list(st, "quotas", "list", "--all-tenants", "--marker", str(ids[PAGE - 1]), cloud="cove-admin")
    assert first + rest == quotas, (first, rest)
    for direction in ("asc", "desc"):
        pages = await asyncio.to_thread(paged, lambda m, d=direction: admin_mc.quotas.list(
            limit=PAGE, marker=m, sort_key="project_id", sort_dir=d, all_tenants=True), lambda q: str(q.id))
        assert [q.project_id for page in pages for q in page] == sorted((q["project_id"] for q in quotas),
                                                                        reverse=direction == "desc")

    # -- mservices (admin): the CLI has no paging flags; magnumclient and openstacksdk page
    services = await asyncio.to_thread(admin_mc.mservices.list)
    assert len(services) > PAGE and {s.binary for s in services} >= {"cove-api", "cove-provisioner"}, services
    for direction in ("asc", "desc"):
        pages = await asyncio.to_thread(paged, lambda m, d=direction: admin_mc.mservices.list(
            limit=PAGE, marker=m, sort_key="binary", sort_dir=d), lambda s: str(s.id))
        assert [s.binary for page in pages for s in page] == sorted((s.binary for s in services),
                                                                    reverse=direction == "desc")
    admin_coe = (await asyncio.to_thread(sdk, st, "cove-admin")).container_infrastructure_management
    listed = await asyncio.to_thread(lambda: [s.id for s in admin_coe.services()])  # the sdk takes no paging here
    assert listed == [s.id for s in services]
    shown = cli_list(st, "service", "list", cloud="cove-admin")
    assert [s["id"] for s in shown] == [s.id for s in services]


def run_sdk_update(st: LocalStack, sdk_path: Path | None, *args: str) -> dict[str, Any]:
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(st.state_dir / "clouds.yaml"))
    if sdk_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(sdk_path), env.get("PYTHONPATH"))))
    proc = subprocess.run([sys.executable, str(SDK_UPDATE_SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


async def test_openstacksdk_updates_with_the_newest_release_and_4_14(stack: LocalStack) -> None:
    st = stack
    assert (SDK_4_14 / "openstack").is_dir(), f"{SDK_4_14} is missing: `make venv` installs openstacksdk 4.14 there"
    demo = await token(st, "demo", "demo-pass", "demo")
    admin = await token(st, "admin", "admin-pass", "admin")
    sfx = uuid.uuid4().hex[:6]
    osc(st, "coe", "cluster", "template", "create", f"sdk-{sfx}", *TEMPLATE_ARGS)
    tid = json.loads(osc(st, "coe", "cluster", "template", "show", f"sdk-{sfx}", "-f", "json"))["uuid"]
    osc(st, "coe", "cluster", "create", f"sdk-{sfx}", "--cluster-template", tid, "--node-count", "1")
    cid = json.loads(osc(st, "coe", "cluster", "show", f"sdk-{sfx}", "-f", "json"))["uuid"]
    body = await wait_for(lambda: cluster_status(st, demo, cid, "CREATE_COMPLETE"), timeout=90, interval=0.5,
                          message="cluster CREATE_COMPLETE")
    project = body["project_id"]

    for sdk_path, version, count in ((None, openstack.version.__version__, 2), (SDK_4_14, "4.14.0", 3)):
        answer = await asyncio.to_thread(run_sdk_update, st, sdk_path, "cluster", cid, str(count))
        assert answer["sdk"] == version, answer
        assert answer["patch"][0] == {"op": "move", "from": "/uuid", "path": "/id"}, answer  # what needs leniency
        assert {"op": "add", "path": "/node_count", "value": count} in answer["patch"], answer
        done = await wait_for(lambda: cluster_status(st, demo, cid, "UPDATE_COMPLETE"), timeout=90, interval=0.5,
                              message=f"UPDATE_COMPLETE after openstacksdk {version} resized to {count}")
        assert done["node_count"] == count, done
        servers = [s["name"] for s in await live_servers(st, admin, project) if s["name"].startswith(f"sdk-{sfx}")]
        assert len([name for name in servers if "-node-" in name]) == count, servers

        renamed = f"sdk-{sfx}-{version}"
        answer = await asyncio.to_thread(run_sdk_update, st, sdk_path, "template", tid, renamed)
        assert answer["sdk"] == version and answer["name"] == renamed, answer
        shown = json.loads(osc(st, "coe", "cluster", "template", "show", tid, "-f", "json"))
        assert shown["name"] == renamed, shown
