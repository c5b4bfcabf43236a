"""The devcloud's Neutron, driven only through real openstacksdk and the real `openstack` CLI (spec §5.1 step 6,
§5.2 network lines, quotas, isolation, policy, paging, tags, the ledger)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack.connection import Connection

from tests.conftest import Devcloud

OPENSTACK_CLI = str(Path(sys.executable).with_name("openstack"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def osc(cloud: str, *args: str, parse: bool = True, check: bool = True) -> Any:
    """Run the real `openstack` CLI against the devcloud; its JSON output, parsed."""
    cmd = [OPENSTACK_CLI, "--os-cloud", cloud, *args]
    if parse:
        cmd += ["-f", "json"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if not parse or proc.returncode != 0:
        return proc
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture(scope="module")
def demo(devcloud: Devcloud) -> Iterator[Connection]:
    conn = openstack.connect(cloud="cove-demo")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def admin(devcloud: Devcloud) -> Iterator[Connection]:
    conn = openstack.connect(cloud="cove-admin")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def public(demo: Connection) -> Any:
    return demo.network.find_network("public", ignore_missing=False)


def ledger(admin: Connection, devcloud: Devcloud, **params: str) -> list[dict[str, Any]]:
    resp = admin.session.get(f"{devcloud.url}/admin/ledger", params=params,
                             headers={"X-Auth-Token": admin.auth_token}, endpoint_filter=None)
    body = resp.json()
    records: list[dict[str, Any]] = body["records"] if isinstance(body, dict) else body
    return records


def network_url(conn: Connection, path: str) -> str:
    return conn.network.get_endpoint().rstrip("/") + path


# ------------------------------------------------------------------------------------------------------------------
# Discovery and extensions


def test_endpoint_versions_resources_and_extensions(demo: Connection, devcloud: Devcloud) -> None:
    assert demo.network.get_endpoint() == f"{devcloud.url}/networking/v2.0"
    versions = demo.session.get(f"{devcloud.url}/networking/", endpoint_filter=None).json()
    assert versions["versions"][0]["id"] == "v2.0"
    assert versions["versions"][0]["links"][0]["href"] == f"{devcloud.url}/networking/v2.0/"
    resources = demo.session.get(network_url(demo, "/"), endpoint_filter=None).json()["resources"]
    assert {"networks", "subnets", "routers", "ports", "floatingips"} <= {r["collection"] for r in resources}

    aliases = {e.alias for e in demo.network.extensions()}
    for alias in ("router", "external-net", "security-group", "quotas", "standard-attr-tag", "port-security",
                  "extra_dhcp_opt", "allowed-address-pairs", "binding"):
        assert alias in aliases
    assert "external-gateway-multihoming" not in aliases
    assert demo.network.find_extension("router", ignore_missing=False).alias == "router"
    one = demo.session.get(network_url(demo, "/extensions/router"), endpoint_filter=None).json()
    assert one["extension"]["alias"] == "router"
    missing = demo.session.get(network_url(demo, "/extensions/external-gateway-multihoming"), endpoint_filter=None,
                               raise_exc=False)
    assert missing.status_code == 404


def test_seeded_external_network(demo: Connection, public: Any) -> None:
    assert public.is_router_external is True
    assert public.is_shared is False
    assert public.status == "ACTIVE"
    assert len(public.subnet_ids) == 1
    # owned by the admin project, yet visible to every project
    assert public.project_id != demo.current_project_id


# ------------------------------------------------------------------------------------------------------------------
# §5.1 step 6 with the SDK


def test_sdk_network_flow(demo: Connection, admin: Connection, devcloud: Devcloud, public: Any) -> None:
    net = demo.network.create_network(name=unique("net"))
    assert net.status == "ACTIVE" and net.project_id == demo.current_project_id
    subnet = demo.network.create_subnet(network_id=net.id, cidr="10.20.0.0/24", ip_version=4, name=unique("sub"))
    assert subnet.gateway_ip == "10.20.0.1"
    assert subnet.allocation_pools == [{"start": "10.20.0.2", "end": "10.20.0.254"}]
    assert demo.network.get_network(net.id).subnet_ids == [subnet.id]

    router = demo.network.create_router(name=unique("router"))
    demo.network.add_interface_to_router(router, subnet_id=subnet.id)
    interfaces = list(demo.network.ports(device_id=router.id))
    assert [p.device_owner for p in interfaces] == ["network:router_interface"]
    assert interfaces[0].fixed_ips == [{"subnet_id": subnet.id, "ip_address": "10.20.0.1"}]
    with pytest.raises(openstack.exceptions.BadRequestException):
        demo.network.add_interface_to_router(router, subnet_id=subnet.id)

    router = demo.network.update_router(router, external_gateway_info={"network_id": public.id})
    gw = router.external_gateway_info
    assert gw["network_id"] == public.id
    assert gw["external_fixed_ips"][0]["subnet_id"] == public.subnet_ids[0]
    assert gw["external_fixed_ips"][0]["ip_address"].startswith("127.24.4.")

    sg = demo.network.create_security_group(name=unique("sg"), description="test")
    assert sorted((r["direction"], r["ethertype"]) for r in sg.security_group_rules) == [
        ("egress", "IPv4"), ("egress", "IPv6")]
    rule = demo.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                   port_range_min=22, port_range_max=22,
                                                   remote_ip_prefix="0.0.0.0/0")
    with pytest.raises(openstack.exceptions.ConflictException, match="already exists"):
        demo.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                port_range_min=22, port_range_max=22, remote_ip_prefix="0.0.0.0/0")
    assert len(demo.network.get_security_group(sg.id).security_group_rules) == 3

    port = demo.network.create_port(network_id=net.id, security_group_ids=[sg.id])
    assert port.status == "DOWN"
    assert port.fixed_ips[0]["subnet_id"] == subnet.id
    assert port.fixed_ips[0]["ip_address"] == "10.20.0.2"
    assert port.mac_address.startswith("fa:16:3e:")
    with pytest.raises(openstack.exceptions.ConflictException, match="in use"):
        demo.network.delete_security_group(sg)

    fip = demo.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert fip.status == "ACTIVE"
    assert fip.fixed_ip_address == "10.20.0.2"
    assert fip.router_id == router.id
    assert fip.floating_ip_address.startswith("127.24.4.")
    # the router cannot lose the interface or the gateway the floating IP needs
    with pytest.raises(openstack.exceptions.ConflictException):
        demo.network.remove_interface_from_router(router, subnet_id=subnet.id)
    fip = demo.network.update_ip(fip, port_id=None)
    assert fip.status == "DOWN" and fip.port_id is None and fip.fixed_ip_address is None
    fip = demo.network.update_ip(fip, port_id=port.id)
    assert fip.status == "ACTIVE" and fip.fixed_ip_address == "10.20.0.2"

    # in use: network with ports, subnet with allocations, router with interfaces
    with pytest.raises(openstack.exceptions.ConflictException, match="ports still in use"):
        demo.network.delete_network(net)
    with pytest.raises(openstack.exceptions.ConflictException):
        demo.network.delete_subnet(subnet)
    with pytest.raises(openstack.exceptions.ConflictException, match="still has ports"):
        demo.network.delete_router(router)
    with pytest.raises(openstack.exceptions.ConflictException):
        demo.network.delete_port(interfaces[0])  # a router interface goes through the router API

    ids = [fip.id, port.id, interfaces[0].id, rule.id, sg.id, router.id, subnet.id, net.id]
    demo.network.delete_ip(fip)
    demo.network.delete_port(port)
    demo.network.remove_interface_from_router(router, subnet_id=subnet.id)
    demo.network.delete_security_group_rule(rule)
    demo.network.delete_security_group(sg)
    demo.network.delete_router(router)
    demo.network.delete_subnet(subnet)
    demo.network.delete_network(net)
    for kind, get in (("network", demo.network.get_network), ("router", demo.network.get_router),
                      ("port", demo.network.get_port)):
        with pytest.raises(openstack.exceptions.NotFoundException):
            get(ids[{"network": 7, "router": 5, "port": 1}[kind]])

    records = {r["id"]: r for r in ledger(admin, devcloud, project_id=demo.current_project_id)}
    for rid in ids:
        if rid == rule.id:
            continue  # rules are part of their group's record
        assert rid in records, f"{rid} missing from the ledger"
        assert records[rid]["deleted_at"] is not None, records[rid]
    assert {records[fip.id]["kind"], records[port.id]["kind"], records[router.id]["kind"]} == {
        "floating_ip", "port", "router"}


def test_floating_ip_needs_a_router_to_the_external_network(demo: Connection, public: Any) -> None:
    net = demo.network.create_network(name=unique("isolated"))
    subnet = demo.network.create_subnet(network_id=net.id, cidr="10.30.0.0/24", ip_version=4)
    port = demo.network.create_port(network_id=net.id)
    fip = demo.network.create_ip(floating_network_id=public.id)
    assert fip.status == "DOWN"
    try:
        with pytest.raises(openstack.exceptions.NotFoundException, match="not reachable from subnet"):
            demo.network.update_ip(fip, port_id=port.id)
        with pytest.raises(openstack.exceptions.BadRequestException, match="not a valid external network"):
            demo.network.create_ip(floating_network_id=net.id)
    finally:
        demo.network.delete_ip(fip)
        demo.network.delete_port(port)
        demo.network.delete_subnet(subnet)
        demo.network.delete_network(net)


def test_subnet_validation_and_allocation(demo: Connection) -> None:
    net = demo.network.create_network(name=unique("alloc"))
    try:
        with pytest.raises(openstack.exceptions.BadRequestException, match="recommended"):
            demo.network.create_subnet(network_id=net.id, cidr="10.40.0.1/24", ip_version=4)
        with pytest.raises(openstack.exceptions.BadRequestException):
            demo.network.create_subnet(network_id=net.id, cidr="not-a-cidr", ip_version=4)
        subnet = demo.network.create_subnet(network_id=net.id, cidr="10.40.0.0/29", ip_version=4,
                                            allocation_pools=[{"start": "10.40.0.4", "end": "10.40.0.5"}])
        with pytest.raises(openstack.exceptions.BadRequestException, match="overlaps"):
            demo.network.create_subnet(network_id=net.id, cidr="10.40.0.0/28", ip_version=4)
        a = demo.network.create_port(network_id=net.id)
        b = demo.network.create_port(network_id=net.id, fixed_ips=[{"ip_address": "10.40.0.6"}])
        c = demo.network.create_port(network_id=net.id)
        assert [p.fixed_ips[0]["ip_address"] for p in (a, b, c)] == ["10.40.0.4", "10.40.0.6", "10.40.0.5"]
        with pytest.raises(openstack.exceptions.ConflictException, match="No more IP addresses"):
            demo.network.create_port(network_id=net.id)
        with pytest.raises(openstack.exceptions.ConflictException, match="already allocated"):
            demo.network.create_port(network_id=net.id, fixed_ips=[{"ip_address": "10.40.0.6"}])
        demo.network.delete_port(a)
        d = demo.network.create_port(network_id=net.id)
        assert d.fixed_ips[0]["ip_address"] == "10.40.0.4"  # released addresses are reused
        for p in (b, c, d):
            demo.network.delete_port(p)
        demo.network.delete_subnet(subnet)
    finally:
        demo.network.delete_network(net)


def test_private_networks_on_one_loopback_cidr_get_different_addresses(demo: Connection) -> None:
    """Neutron lets private networks reuse fixed IPs; the devcloud's COE stand-ins listen at them on this machine's
    loopback, so two networks' subnets of one 127.x CIDR hand out different addresses (an explicit one may repeat)."""
    cidr = "127.251.7.0/29"
    nets = [demo.network.create_network(name=unique("lo")) for _ in range(2)]
    try:
        subnets = [demo.network.create_subnet(network_id=n.id, cidr=cidr, ip_version=4) for n in nets]
        ports = [demo.network.create_port(network_id=n.id) for n in nets for _ in range(2)]
        addresses = [p.fixed_ips[0]["ip_address"] for p in ports]
        assert len(set(addresses)) == 4, addresses
        again = demo.network.create_port(network_id=nets[1].id, fixed_ips=[{"ip_address": addresses[0]}])
        assert again.fixed_ips[0]["ip_address"] == addresses[0]  # asked for by name: as Neutron allows
        for p in (*ports, again):
            demo.network.delete_port(p)
        # every address released: the other network may now take the first network's first address by name
        fresh = demo.network.create_port(network_id=nets[0].id, fixed_ips=[{"ip_address": addresses[2]}])
        demo.network.delete_port(fresh)
        for sn in subnets:
            demo.network.delete_subnet(sn)
    finally:
        for n in nets:
            demo.network.delete_network(n)


def test_default_security_group_created_lazily(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-alt")
    try:
        groups = [g for g in conn.network.security_groups() if g.name == "default"]
        assert len(groups) == 1
        rules = {(r["direction"], r["ethertype"], r["remote_group_id"]) for r in groups[0].security_group_rules}
        assert rules == {("ingress", "IPv4", groups[0].id), ("ingress", "IPv6", groups[0].id),
                         ("egress", "IPv4", None), ("egress", "IPv6", None)}
        with pytest.raises(openstack.exceptions.ConflictException):
            conn.network.delete_security_group(groups[0])
        # a port without security groups gets the default group
        net = conn.network.create_network(name=unique("alt-net"))
        port = conn.network.create_port(network_id=net.id)
        assert port.security_group_ids == [groups[0].id]
        conn.network.delete_port(port)
        conn.network.delete_network(net)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------------------------
# Isolation, policy, quotas


def test_cross_project_isolation_and_admin_view(demo: Connection, admin: Connection, devcloud: Devcloud,
                                                public: Any) -> None:
    net = demo.network.create_network(name=unique("private"))
    alt = openstack.connect(cloud="cove-alt")
    try:
        with pytest.raises(openstack.exceptions.NotFoundException):
            alt.network.get_network(net.id)
        with pytest.raises(openstack.exceptions.NotFoundException):
            alt.network.delete_network(net.id, ignore_missing=False)
        with pytest.raises(openstack.exceptions.NotFoundException):
            alt.network.create_port(network_id=net.id)
        alt_ids = {n.id for n in alt.network.networks()}
        assert net.id not in alt_ids and public.id in alt_ids
        # the external network is visible but not writable
        with pytest.raises(openstack.exceptions.ForbiddenException):
            alt.network.update_network(public, name="mine")
        # admin sees every project's networks and can filter by project
        assert net.id in {n.id for n in admin.network.networks(project_id=demo.current_project_id)}
        assert admin.network.get_network(net.id).project_id == demo.current_project_id
    finally:
        alt.close()
        demo.network.delete_network(net)


def test_reader_may_read_but_not_write(devcloud: Devcloud) -> None:
    viewer = openstack.connect(cloud="cove-viewer")
    try:
        assert any(n.name == "public" for n in viewer.network.networks())
        with pytest.raises(openstack.exceptions.ForbiddenException):
            viewer.network.create_network(name=unique("nope"))
        with pytest.raises(openstack.exceptions.ForbiddenException):
            viewer.network.create_security_group(name=unique("nope"))
    finally:
        viewer.close()


def test_non_admin_cannot_create_external_network(demo: Connection) -> None:
    with pytest.raises(openstack.exceptions.ForbiddenException):
        demo.network.create_network(name=unique("ext"), is_router_external=True)


def test_port_quota_is_a_409_over_quota(admin: Connection, devcloud: Devcloud) -> None:
    alt = openstack.connect(cloud="cove-alt")
    pid = alt.current_project_id
    net = alt.network.create_network(name=unique("quota"))
    try:
        used = admin.network.get_quota(pid, details=True).ports["used"]
        admin.network.update_quota(pid, ports=used + 1)
        assert alt.network.get_quota(pid).ports == used + 1
        port = alt.network.create_port(network_id=net.id)
        with pytest.raises(openstack.exceptions.ConflictException, match=r"Quota exceeded for resources: \['port'\]"):
            alt.network.create_port(network_id=net.id)
        resp = alt.session.post(network_url(alt, "/ports"), json={"port": {"network_id": net.id}},
                                endpoint_filter=None, raise_exc=False)
        assert resp.status_code == 409
        assert resp.json()["NeutronError"]["type"] == "OverQuota"
        with pytest.raises(openstack.exceptions.ForbiddenException):
            alt.network.update_quota(pid, ports=1000)
        alt.network.delete_port(port)
    finally:
        admin.network.delete_quota(pid)
        alt.network.delete_network(net)
        alt.close()
    assert admin.network.get_quota(pid).ports == 500


# ------------------------------------------------------------------------------------------------------------------
# Listing: filters, fields, paging, sorting, tags, bulk


def test_filters_paging_sorting_tags_and_bulk(demo: Connection) -> None:
    tag = unique("tag")
    body = {"networks": [{"name": f"{tag}-{i}"} for i in range(5)]}
    resp = demo.session.post(network_url(demo, "/networks"), json=body, endpoint_filter=None)
    assert resp.status_code == 201
    created = resp.json()["networks"]
    assert [n["name"] for n in created] == [f"{tag}-{i}" for i in range(5)]
    nets = [demo.network.get_network(n["id"]) for n in created]
    try:
        for n in nets:
            demo.network.set_tags(n, [tag, "even" if int(n.name[-1]) % 2 == 0 else "odd"])
        demo.network.add_tag(nets[0], "first")
        assert set(demo.network.get_network(nets[0].id).tags) == {tag, "even", "first"}
        demo.network.remove_tag(nets[0], "first")

        assert len(list(demo.network.networks(tags=tag))) == 5
        assert {n.name for n in demo.network.networks(tags=f"{tag},odd")} == {f"{tag}-1", f"{tag}-3"}
        assert len(list(demo.network.networks(any_tags="odd,even", tags=tag))) == 5
        assert len(list(demo.network.networks(tags=tag, not_tags="odd"))) == 3
        assert [n.name for n in demo.network.networks(name=f"{tag}-2")] == [f"{tag}-2"]

        # the SDK follows networks_links page by page
        assert len(list(demo.network.networks(tags=tag, limit=2))) == 5
        first = demo.session.get(network_url(demo, "/networks"), params={"tags": tag, "limit": 2},
                                 endpoint_filter=None).json()
        assert len(first["networks"]) == 2 and first["networks_links"][0]["rel"] == "next"
        marker = first["networks"][-1]["id"]
        second = demo.session.get(network_url(demo, "/networks"),
                                  params={"tags": tag, "limit": 2, "marker": marker}, endpoint_filter=None).json()
        assert [n["name"] for n in second["networks"]] == [f"{tag}-2", f"{tag}-3"]
        reverse = demo.session.get(network_url(demo, "/networks"),
                                   params={"tags": tag, "limit": 2, "page_reverse": "True"},
                                   endpoint_filter=None).json()
        assert [n["name"] for n in reverse["networks"]] == [f"{tag}-3", f"{tag}-4"]
        assert reverse["networks_links"][0]["rel"] == "previous"
        by_name_desc = demo.session.get(network_url(demo, "/networks"),
                                        params={"tags": tag, "sort_key": "name", "sort_dir": "desc",
                                                "fields": ["id", "name"]}, endpoint_filter=None).json()
        assert [n["name"] for n in by_name_desc["networks"]] == [f"{tag}-{i}" for i in range(4, -1, -1)]
        assert set(by_name_desc["networks"][0]) == {"id", "name"}
        with pytest.raises(openstack.exceptions.NotFoundException):
            demo.network.get_network(f"{tag}-0")  # find_* falls back to ?name= on this clean 404
        assert demo.network.find_network(f"{tag}-0", ignore_missing=False).id == nets[0].id
    finally:
        for n in nets:
            demo.network.delete_network(n)


# ------------------------------------------------------------------------------------------------------------------
# The `openstack` CLI (spec §5.2)


def test_cli_network_commands(devcloud: Devcloud, demo: Connection) -> None:
    net_name, sub_name, router_name, sg_name, port_name = (unique(p) for p in ("n", "s", "r", "sg", "p"))
    net = osc("cove-demo", "network", "create", net_name)
    assert net["name"] == net_name and net["status"] == "ACTIVE"
    sub = osc("cove-demo", "subnet", "create", "--network", net_name, "--subnet-range", "10.50.0.0/24", sub_name)
    assert sub["gateway_ip"] == "10.50.0.1" and sub["cidr"] == "10.50.0.0/24"
    router = osc("cove-demo", "router", "create", router_name)
    osc("cove-demo", "router", "add", "subnet", router_name, sub_name, parse=False)
    osc("cove-demo", "router", "set", "--external-gateway", "public", router_name, parse=False)
    shown = osc("cove-demo", "router", "show", router_name)
    assert shown["external_gateway_info"]["network_id"] == demo.network.find_network("public").id
    sg = osc("cove-demo", "security", "group", "create", sg_name)
    rule = osc("cove-demo", "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22", sg_name)
    assert rule["port_range_min"] == 22 and rule["remote_ip_prefix"] == "0.0.0.0/0"
    dup = osc("cove-demo", "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22", sg_name,
              check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    port = osc("cove-demo", "port", "create", "--network", net_name, port_name)
    assert port["status"] == "DOWN" and port["fixed_ips"][0]["ip_address"] == "10.50.0.2"
    fip = osc("cove-demo", "floating", "ip", "create", "public")
    assert fip["floating_ip_address"].startswith("127.24.4.") and fip["status"] == "DOWN"
    osc("cove-demo", "floating", "ip", "set", "--port", port_name, fip["floating_ip_address"], parse=False)
    assert demo.network.get_ip(fip["id"]).fixed_ip_address == "10.50.0.2"

    listed = osc("cove-demo", "network", "list", "--limit", "1")
    assert {net["id"], demo.network.find_network("public").id} <= {n["ID"] for n in listed}

    quota = {row["Resource"]: row["Limit"] for row in osc("cove-demo", "quota", "show", "--network")}
    assert quota["networks"] == 100 and quota["ports"] == 500 and quota["floating_ips"] == 50

    viewer = osc("cove-viewer", "network", "create", unique("nope"), check=False)
    assert viewer.returncode != 0

    osc("cove-demo", "floating", "ip", "delete", fip["id"], parse=False)
    osc("cove-demo", "port", "delete", port_name, parse=False)
    osc("cove-demo", "security", "group", "delete", sg["id"], parse=False)
    osc("cove-demo", "router", "unset", "--external-gateway", router_name, parse=False)
    osc("cove-demo", "router", "remove", "subnet", router_name, sub_name, parse=False)
    osc("cove-demo", "router", "delete", router["id"], parse=False)
    osc("cove-demo", "subnet", "delete", sub["id"], parse=False)
    osc("cove-demo", "network", "delete", net["id"], parse=False)
    with pytest.raises(openstack.exceptions.NotFoundException):
        demo.network.get_network(net["id"])


# ------------------------------------------------------------------------------------------------------------------
# Servers: Nova creates and releases ports; `server add floating ip` finds the server's port


def test_server_ports_and_floating_ip(demo: Connection, admin: Connection, devcloud: Devcloud,
                                      public: Any) -> None:
    net = demo.network.create_network(name=unique("srv-net"))
    subnet = demo.network.create_subnet(network_id=net.id, cidr="10.60.0.0/24", ip_version=4)
    router = demo.network.create_router(name=unique("srv-router"), external_gateway_info={"network_id": public.id})
    demo.network.add_interface_to_router(router, subnet_id=subnet.id)
    flavor = demo.compute.find_flavor("m1.tiny", ignore_missing=False)
    image = demo.image.find_image("ubuntu-22.04", ignore_missing=False)
    server = demo.compute.create_server(name=unique("vm"), flavor_id=flavor.id, image_id=image.id,
                                        networks=[{"uuid": net.id}])
    try:
        server = demo.compute.wait_for_server(server, status="ACTIVE", wait=30, interval=0.2)
        ports = list(demo.network.ports(device_id=server.id))
        assert len(ports) == 1
        port = ports[0]
        assert port.status == "ACTIVE" and port.device_owner == "compute:nova"
        default_sg = next(g for g in demo.network.security_groups(name="default"))
        assert port.security_group_ids == [default_sg.id]

        fip = demo.network.create_ip(floating_network_id=public.id)
        osc("cove-demo", "server", "add", "floating", "ip", server.id, fip.floating_ip_address, parse=False)
        fip = demo.network.get_ip(fip.id)
        assert fip.port_id == port.id and fip.status == "ACTIVE"
        addresses = demo.compute.get_server(server.id).addresses[net.name]
        assert {a["OS-EXT-IPS:type"]: a["addr"] for a in addresses} == {
            "fixed": port.fixed_ips[0]["ip_address"], "floating": fip.floating_ip_address}

        demo.compute.delete_server(server)
        demo.compute.wait_for_delete(server, wait=30, interval=0.2)
        # the port Nova created is gone and the floating IP is free again
        assert list(demo.network.ports(device_id=server.id)) == []
        fip = demo.network.get_ip(fip.id)
        assert fip.port_id is None and fip.status == "DOWN"
        demo.network.delete_ip(fip)
    finally:
        demo.compute.delete_server(server, ignore_missing=True)
        demo.compute.wait_for_delete(server, wait=30, interval=0.2)
        demo.network.remove_interface_from_router(router, subnet_id=subnet.id)
        demo.network.delete_router(router)
        demo.network.delete_subnet(subnet)
        demo.network.delete_network(net)
    port_record = next(r for r in ledger(admin, devcloud, kind="port") if r["id"] == port.id)
    assert port_record["deleted_at"] is not None
