"""A cluster built the way a production cloud needs it, end to end (every service as a subprocess, the devcloud,
the real `openstack` CLI and openstacksdk as a user would drive them):

* a template with master_lb_enabled, floating_ip_enabled, docker_volume_size and master_lb_allowed_cidrs, 3 masters
  and 2 workers (then resized to 1 worker: its volume and floating IP go with its server): CREATE_COMPLETE with an ACTIVE load balancer holding the 3 masters, a floating IP on every node
  and on the VIP, one volume per node attached, the masters in an anti-affinity server group, security group rules
  that open the API and SSH only to the given CIDRs, and api_address on the load balancer's floating IP;
  `cluster config` gives a kubeconfig whose server is that address and whose client certificate chains to the
  cluster's CA;
* `cluster show`, `nodegroup show` and `openstack server list` agree on flavor, image and count, for templates with
  and without a master flavor and with merge_labels true and false; every address they, `floating ip list` and
  `loadbalancer list` show is in 127.0.0.0/8;
* delete (after a complete create, in the middle of a create, after a failed create) leaves the devcloud's ledger
  with no server, port, floating IP, volume, load balancer, security group, network, router or server group of
  the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from deploy.local.stack import LocalStack
from services.provisioner import model
from tests.conftest import wait_for
from tests.e2e.test_cluster_config import verifies
from tests.e2e.test_cluster_lifecycle import cluster_status, http, osc, private_nats, sdk, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures: a stack of our own

ALLOWED = ["192.0.2.0/24", "198.51.100.0/24"]
KINDS = ("server", "port", "floating_ip", "volume", "load_balancer", "listener", "pool", "member", "health_monitor",
         "security_group", "network", "subnet", "router", "server_group")


async def live(st: LocalStack, admin: str, project_id: str) -> set[tuple[str, str]]:
    """(kind, id) of every live resource of the project the ledger knows (the kinds a cluster can own), but the
    project's ``default`` security group, which Neutron makes on the project's first network call."""
    code, body = await http("GET", f"{st.devcloud_url}/admin/ledger?live=true&project_id={project_id}", admin)
    assert code == 200, body
    return {(r["kind"], r["id"]) for r in body["records"]
            if r["kind"] in KINDS and not (r["kind"] == "security_group" and r["name"] == "default")}


async def gone(st: LocalStack, tok: str, cid: str) -> bool:
    return (await http("GET", f"{st.api_url}/clusters/{cid}", tok))[0] == 404


async def test_a_production_cluster_with_load_balancer_floating_ips_volumes_and_allow_list(
    stack: LocalStack, tmp_path: Path
) -> None:
    st = stack
    alt = await token(st, "alt", "alt-pass", "alt")
    admin = await token(st, "admin", "admin-pass", "admin")
    sfx = uuid.uuid4().hex[:6]
    tname, cname = f"prod-{sfx}", f"prod-{sfx}"
    conn = await asyncio.to_thread(sdk, st, "cove-alt")
    project_id = await asyncio.to_thread(lambda: conn.current_project_id)
    before = await live(st, admin, project_id)

    osc(st, "coe", "cluster", "template", "create", tname, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.medium",
        "--master-lb-enabled", "--floating-ip-enabled", "--docker-volume-size", "3", "--network-driver", "calico",
        "--labels", f"master_lb_allowed_cidrs={';'.join(ALLOWED)}", cloud="cove-alt")
    osc(st, "coe", "cluster", "create", cname, "--cluster-template", tname, "--master-count", "3",
        "--node-count", "2", cloud="cove-alt")
    cid = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json", cloud="cove-alt"))["uuid"]
    cluster = await wait_for(lambda: cluster_status(st, alt, cid, "CREATE_COMPLETE"), timeout=150, interval=0.5,
                             message="production cluster CREATE_COMPLETE")

    # the load balancer: ACTIVE, a listener on the API port, the three masters as members
    servers = await asyncio.to_thread(lambda: list(conn.compute.servers(details=True)))
    mine = [s for s in servers if s.metadata.get("cove_cluster_id") == cid]
    masters = sorted((s for s in mine if s.metadata.get("cove_role") == "master"), key=lambda s: s.name)
    workers = sorted((s for s in mine if s.metadata.get("cove_role") == "worker"), key=lambda s: s.name)
    assert (len(masters), len(workers)) == (3, 2), ([s.name for s in mine], [(s.name, s.metadata) for s in servers])
    lbs = await asyncio.to_thread(lambda: [lb for lb in conn.load_balancer.load_balancers()
                                           if f"cove-cluster-{cid}" in (lb.tags or [])])
    assert len(lbs) == 1 and lbs[0].provisioning_status == "ACTIVE", lbs
    lb = lbs[0]
    listeners = await asyncio.to_thread(lambda: list(conn.load_balancer.listeners(loadbalancer_id=lb.id)))
    assert [(x.protocol_port, sorted(x.allowed_cidrs or [])) for x in listeners] == [(6443, ALLOWED)], listeners
    pools = await asyncio.to_thread(lambda: [p for p in conn.load_balancer.pools()
                                             if lb.id in {x["id"] for x in p.loadbalancers or []}])
    assert len(pools) == 1 and pools[0].health_monitor_id, pools
    members = await asyncio.to_thread(lambda: list(conn.load_balancer.members(pools[0].id)))
    master_ips = {ip["addr"] for s in masters for net in s.addresses.values() for ip in net
                  if ip.get("OS-EXT-IPS:type", "fixed") == "fixed"}
    assert {m.address for m in members} == master_ips and len(members) == 3

    # floating IPs: one per node and one on the VIP; api_address is the VIP's
    fips = await asyncio.to_thread(lambda: list(conn.network.ips(project_id=project_id)))
    by_port = {f.port_id: f.floating_ip_address for f in fips if f.port_id}
    assert by_port.get(lb.vip_port_id), "the load balancer's VIP has a floating IP"
    assert cluster["api_address"] == f"https://{by_port[lb.vip_port_id]}:6443", cluster
    for server in mine:
        ports = await asyncio.to_thread(lambda s=server: list(conn.network.ports(device_id=s.id)))
        assert any(p.id in by_port for p in ports), f"{server.name} has no floating IP"
    assert sorted(cluster["master_addresses"]) == sorted(by_port[p.id] for s in masters for p in
                                                         conn.network.ports(device_id=s.id) if p.id in by_port)

    # one container-storage volume per node, attached to it before boot
    volumes = await asyncio.to_thread(lambda: list(conn.block_storage.volumes(details=True)))
    attached = {a["server_id"] for v in volumes if v.status == "in-use" and v.size == 3
                for a in v.attachments}
    assert attached == {s.id for s in mine}, volumes

    # the masters in one anti-affinity server group, each on its own host
    groups = await asyncio.to_thread(lambda: list(conn.compute.server_groups()))
    ours = [g for g in groups if set(g.member_ids or []) & {s.id for s in masters}]
    assert len(ours) == 1 and set(ours[0].member_ids) == {s.id for s in masters}, groups
    assert (ours[0].policy or (ours[0].policies or [None])[0]) in ("anti-affinity", "soft-anti-affinity")

    # security groups: the API and SSH only from the allow-list; the rest only from the cluster's own groups
    sg_ids = {sg for s in mine for sg in [g["name"] for g in s.security_groups]}
    sgs = await asyncio.to_thread(lambda: [g for g in conn.network.security_groups(project_id=project_id)
                                           if g.name in sg_ids])
    own = {g.id for g in sgs}
    prefix = model.cluster_prefix(cname, cid)
    assert {g.name for g in sgs} == {f"{prefix}-master-sg", f"{prefix}-worker-sg"}, sg_ids
    for group in sgs:
        for rule in group.security_group_rules:
            if rule["direction"] != "ingress":
                continue
            assert rule["remote_ip_prefix"] in ALLOWED or rule["remote_group_id"] in own, (group.name, rule)
    api_rules = [r for g in sgs if g.name.endswith("-master-sg") for r in g.security_group_rules
                 if r["direction"] == "ingress" and r["port_range_min"] == 6443]
    assert sorted(r["remote_ip_prefix"] for r in api_rules if r["remote_ip_prefix"]) == ALLOWED, api_rules
    assert all(r["remote_group_id"] in own for r in api_rules if not r["remote_ip_prefix"]), api_rules

    # flavors, image and counts agree between cluster show, nodegroup show and the servers
    await agree(st, cname, "cove-alt", masters=3, workers=2, master_flavor="m1.medium", flavor="m1.small")

    # `cluster config`: the kubeconfig's server is api_address and its client certificate chains to the CA
    osc(st, "coe", "cluster", "config", cname, "--dir", str(tmp_path), cloud="cove-alt")
    kubeconfig = yaml.safe_load((tmp_path / "config").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster["api_address"]
    ca_pem = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    client = x509.load_pem_x509_certificate(base64.b64decode(kubeconfig["users"][0]["user"]["client-certificate-data"]))
    assert verifies(client, ca_pem)
    assert osc(st, "coe", "ca", "show", cname, cloud="cove-alt").strip() == ca_pem.decode().strip()

    # a resize down releases the removed worker's volume and floating IP with its server
    osc(st, "coe", "cluster", "resize", cname, "1", cloud="cove-alt")
    await wait_for(lambda: cluster_status(st, alt, cid, "UPDATE_COMPLETE"), timeout=120, interval=0.5,
                   message="resized to one worker")
    after = await live(st, admin, project_id)
    kept = {k: sum(1 for kind, _ in after - before if kind == k) for k in ("server", "volume", "floating_ip")}
    assert kept == {"server": 4, "volume": 4, "floating_ip": 5}, kept

    # delete leaves nothing of the cluster
    osc(st, "coe", "cluster", "delete", cname, cloud="cove-alt")
    await wait_for(lambda: gone(st, alt, cid), timeout=120, interval=0.5, message="cluster deleted")
    left = await live(st, admin, project_id) - before
    assert left == set(), sorted(left)
    osc(st, "coe", "cluster", "template", "delete", tname, cloud="cove-alt")


def loopback(st: LocalStack, cloud: str, shown: dict[str, Any]) -> None:
    """Every address the stack handed out for the project lies in 127.0.0.0/8 (issue 17): the servers' fixed and
    floating addresses, the floating IPs, the load balancers' VIPs, and the cluster's api_address, master_addresses
    and node_addresses."""
    addresses = [urlsplit(shown["api_address"]).hostname or "", *shown["master_addresses"], *shown["node_addresses"]]
    for server in json.loads(osc(st, "server", "list", "-f", "json", cloud=cloud)):
        addresses += [ip for ips in server["Networks"].values() for ip in ips]
    addresses += [f["Floating IP Address"] for f in json.loads(osc(st, "floating", "ip", "list", "-f", "json",
                                                                    cloud=cloud))]
    addresses += [lb["vip_address"] for lb in json.loads(osc(st, "loadbalancer", "list", "-f", "json", cloud=cloud))]
    outside = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    assert not outside and len(addresses) > 3, (outside, addresses)


async def agree(st: LocalStack, cname: str, cloud: str, *, masters: int, workers: int, master_flavor: str,
                flavor: str) -> None:
    shown = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json", cloud=cloud))
    assert (shown["master_flavor_id"], shown["flavor_id"]) == (master_flavor, flavor), shown
    assert (shown["master_count"], shown["node_count"]) == (masters, workers), shown
    for group, role, count, want in (("default-master", "master", masters, master_flavor),
                                     ("default-worker", "worker", workers, flavor)):
        ng = json.loads(osc(st, "coe", "nodegroup", "show", cname, group, "-f", "json", cloud=cloud))
        assert (ng["flavor_id"], ng["image_id"], ng["node_count"], ng["role"]) == (want, "fedora-coreos", count,
                                                                                    role), ng
    loopback(st, cloud, shown)
    listed = json.loads(osc(st, "server", "list", "--long", "-f", "json", cloud=cloud))
    prefix = f"{model.cluster_prefix(cname, shown['uuid'])}-"
    ours = [s for s in listed if s["Name"].startswith(prefix)]
    by_role = {"master": [s for s in ours if "-master-" in s["Name"]], "worker": [s for s in ours if "-node-" in s["Name"]]}
    assert len(by_role["master"]) == masters and len(by_role["worker"]) == workers, ours
    assert {s["Flavor"] for s in by_role["master"]} == {master_flavor}, by_role["master"]
    assert {s["Flavor"] for s in by_role["worker"]} <= {flavor}, by_role["worker"]
    assert {s["Image Name"] for s in ours} == {"fedora-coreos"}, ours


@pytest.mark.parametrize(("master_flavor", "merge"), [(None, False), ("m1.medium", True)])
async def test_show_nodegroups_and_servers_agree(stack: LocalStack, master_flavor: str | None, merge: bool) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    sfx = uuid.uuid4().hex[:6]
    tname, cname = f"agree-{sfx}", f"agree-{sfx}"
    extra = ["--master-flavor", master_flavor] if master_flavor else []
    osc(st, "coe", "cluster", "template", "create", tname, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", *extra, "--labels", "a=1,b=2")
    labels = ["--labels", "b=3,c=4", *(["--merge-labels"] if merge else [])]
    osc(st, "coe", "cluster", "create", cname, "--cluster-template", tname, "--node-count", "2", *labels)
    cid = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json"))["uuid"]
    await wait_for(lambda: cluster_status(st, demo, cid, "CREATE_COMPLETE"), timeout=120, interval=0.5,
                   message="cluster CREATE_COMPLETE")
    await agree(st, cname, "cove-demo", masters=1, workers=2, master_flavor=master_flavor or "m1.small",
                flavor="m1.small")
    shown = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json"))
    assert shown["labels"] == ({"a": "1", "b": "3", "c": "4"} if merge else {"b": "3", "c": "4"}), shown
    osc(st, "coe", "cluster", "delete", cname)
    await wait_for(lambda: gone(st, demo, cid), timeout=120, interval=0.5, message="cluster deleted")


async def test_delete_in_the_middle_of_a_create_and_after_a_failed_one_leaves_nothing(stack: LocalStack) -> None:
    st = stack
    alt = await token(st, "alt", "alt-pass", "alt")
    admin = await token(st, "admin", "admin-pass", "admin")
    conn = await asyncio.to_thread(sdk, st, "cove-alt")
    project_id = await asyncio.to_thread(lambda: conn.current_project_id)
    before = await live(st, admin, project_id)
    code, template = await http("POST", f"{st.api_url}/clustertemplates", alt, {
        "name": f"mid-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "external_network_id": "public", "flavor_id": "m1.small", "master_lb_enabled": True,
        "floating_ip_enabled": True, "docker_volume_size": 2})
    assert code == 201, template

    # in the middle of a create: some resources made, others not yet
    code, body = await http("POST", f"{st.api_url}/clusters", alt, {
        "name": "mid-create", "cluster_template_id": template["uuid"], "master_count": 3, "node_count": 3})
    assert code == 202, body
    mid = body["uuid"]

    async def building() -> bool:
        return bool(await live(st, admin, project_id) - before)

    await wait_for(building, timeout=60, interval=0.05, message="the create started making resources")
    code, body = await http("GET", f"{st.api_url}/clusters/{mid}", alt)
    assert code == 200 and body["status"] == "CREATE_IN_PROGRESS", body  # really in the middle of the create
    assert (await http("DELETE", f"{st.api_url}/clusters/{mid}", alt))[0] == 204

    # after a failed create
    code, _ = await http("PUT", f"{st.devcloud_url}/admin/faults", admin, {"boot_failure_rate": 1.0})
    assert code == 200
    try:
        code, body = await http("POST", f"{st.api_url}/clusters", alt, {
            "name": "fails", "cluster_template_id": template["uuid"], "node_count": 1})
        assert code == 202, body
        failed = body["uuid"]
        await wait_for(lambda: cluster_status(st, alt, failed, "CREATE_FAILED"), timeout=120, interval=0.5,
                       message="cluster CREATE_FAILED")
    finally:
        await http("PUT", f"{st.devcloud_url}/admin/faults", admin, {"boot_failure_rate": 0.0})
    assert (await http("DELETE", f"{st.api_url}/clusters/{failed}", alt))[0] == 204

    for cid in (mid, failed):
        await wait_for(lambda c=cid: gone(st, alt, c), timeout=120, interval=0.5, message=f"{cid} deleted")
    left = await live(st, admin, project_id) - before
    assert left == set(), sorted(left)
