"""The spec's §5.2 `openstack` CLI smoke run (shared/reference/devcloud-spec.md) as one ordered test against a
private devcloud (time factor 0.01): every command must succeed and print the right JSON.

Adaptations, each because a real cloud behaves so too:
- the demo user authenticates through the environment (OS_AUTH_URL, OS_USERNAME, ...), as the spec's run does;
  `network create ext --external` needs the admin role (Neutron's policy), so the admin creates `ext`, with a
  subnet (a router gateway and a floating IP need addresses to allocate from), through the clouds.yaml;
- the Heat lines (`stack create/show/delete`) are skipped: the devcloud has no orchestration service;
- two extra servers (made with the SDK) make `server list --limit 2` cut a longer list;
- between a command and the next one that depends on its asynchronous result (a volume attaching, detaching),
  the test waits for the state with a deadline, as a script against a real cloud must.
Commands without output (`router add subnet`, `server add floating ip`, ...) are checked through openstacksdk.
At the end the ledger shows nothing of the run left alive and /admin/stats no unrouted request and no 5xx."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openstack.config
import pytest
from openstack import exceptions
from openstack.connection import Connection

from deploy.devcloud.process import Devcloud, start_devcloud, stop_devcloud
from tests.devcloud.test_compute import poll

OPENSTACK = str(Path(sys.executable).with_name("openstack"))
WAIT = 20.0


@pytest.fixture
def smoke_cloud(tmp_path: Path) -> Iterator[Devcloud]:
    cloud = start_devcloud(
        tmp_path, time_factor=0.01, extra_args=("--request-log", str(tmp_path / "requests.log"))
    )
    try:
        yield cloud
    finally:
        stop_devcloud(cloud)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OS_")}


def demo_env(cloud: Devcloud) -> dict[str, str]:
    """The spec's §5.2 environment: password auth of user demo in project demo, no clouds.yaml."""
    return {
        **_clean_env(),
        "OS_AUTH_URL": f"{cloud.url}/identity",
        "OS_USERNAME": "demo",
        "OS_PASSWORD": "demo-pass",
        "OS_PROJECT_NAME": "demo",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default",
        "OS_IDENTITY_API_VERSION": "3",
    }


def cloud_env(cloud: Devcloud, name: str) -> dict[str, str]:
    """An entry of the clouds.yaml the devcloud wrote."""
    return {**_clean_env(), "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml), "OS_CLOUD": name}


def osc(env: dict[str, str], *args: str) -> Any:
    """Run `openstack ARGS`; it must exit 0. Output of `-f json` is decoded, other output returned as text."""
    proc = subprocess.run(
        [OPENSTACK, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, (
        f"openstack {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    )
    text = proc.stdout.strip()
    return json.loads(text) if text.startswith(("{", "[")) and "-f" in args else proc.stdout


def sdk(cloud: Devcloud, name: str) -> Connection:
    # load_envvars=False: the session devcloud fixture sets OS_CLIENT_CONFIG_FILE, which would otherwise win
    config = openstack.config.OpenStackConfig(config_files=[str(cloud.clouds_yaml)], load_envvars=False)
    return Connection(config=config.get_one(cloud=name))




def gone(get: Callable[[], Any]) -> bool:
    try:
        get()
    except exceptions.NotFoundException:
        return True
    return False


def rows(table: list[dict[str, Any]], key: str = "Name") -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in table}


def test_openstack_cli_smoke_run(smoke_cloud: Devcloud, tmp_path: Path) -> None:
    cloud = smoke_cloud
    demo = demo_env(cloud)
    admin = cloud_env(cloud, "cove-admin")
    conn = sdk(cloud, "cove-demo")
    admin_conn = sdk(cloud, "cove-admin")
    project_id = conn.current_project_id

    # -- identity --------------------------------------------------------------------------------------------
    token = osc(demo, "token", "issue", "-f", "json")
    assert token["id"] and token["project_id"] == project_id and token["user_id"] == conn.current_user_id

    catalog = rows(osc(demo, "catalog", "list", "-f", "json"), "Type")
    assert {"identity", "compute", "image", "network", "load-balancer", "block-storage", "volumev3"} <= set(
        catalog
    )
    for service in catalog.values():
        assert {e["interface"] for e in service["Endpoints"]} == {"public", "internal", "admin"}
        assert all(
            e["url"].startswith(cloud.url) and e["region"] == "RegionOne" for e in service["Endpoints"]
        )
    assert catalog["block-storage"]["Endpoints"][0]["url"] == f"{cloud.url}/volume/v3/{project_id}"

    versions = osc(demo, "versions", "show", "-f", "json")
    current = {(v["Service Type"], v["Version"]): v for v in versions if v["Status"] == "CURRENT"}
    assert current[("compute", "2.1")]["Max Microversion"] == "2.96"
    assert current[("compute", "2.1")]["Min Microversion"] == "2.1"
    assert current[("block-storage", "3.0")]["Max Microversion"] == "3.70"
    assert {("identity", "3.14"), ("image", "2.16"), ("network", "2.0"), ("load-balancer", "2.27")} <= set(
        current
    )
    assert current[("network", "2.0")]["Endpoint"] == f"{cloud.url}/networking/v2.0/"

    # -- flavors and images ----------------------------------------------------------------------------------
    flavors = rows(osc(demo, "flavor", "list", "-f", "json"))
    assert {"m1.tiny", "m1.small", "m1.medium", "m1.large"} <= set(flavors)
    assert (flavors["m1.medium"]["VCPUs"], flavors["m1.medium"]["RAM"]) == (2, 4096)
    small = osc(demo, "flavor", "show", "m1.small", "-f", "json")
    assert (small["vcpus"], small["ram"], small["disk"], small["name"]) == (1, 2048, 20, "m1.small")

    images = rows(osc(demo, "image", "list", "-f", "json"))
    assert images["fedora-coreos"]["Status"] == images["ubuntu-22.04"]["Status"] == "active"
    ubuntu = osc(demo, "image", "show", "ubuntu-22.04", "-f", "json")
    assert ubuntu["id"] == images["ubuntu-22.04"]["ID"]
    assert ubuntu["properties"]["os_distro"] == "ubuntu" and ubuntu["min_disk"] == 3

    # -- network ---------------------------------------------------------------------------------------------
    ext = osc(admin, "network", "create", "ext", "--external", "-f", "json")
    assert ext["router:external"] is True and ext["status"] == "ACTIVE"
    ext_subnet = osc(
        admin,
        "subnet",
        "create",
        "--network",
        "ext",
        "--subnet-range",
        "172.24.8.0/24",
        "--no-dhcp",
        "ext-subnet",
        "-f",
        "json",
    )
    assert ext_subnet["network_id"] == ext["id"] and ext_subnet["enable_dhcp"] is False

    n1 = osc(demo, "network", "create", "n1", "-f", "json")
    assert n1["status"] == "ACTIVE" and n1["router:external"] is False and n1["project_id"] == project_id
    s1 = osc(demo, "subnet", "create", "--network", "n1", "--subnet-range", "10.0.0.0/24", "s1", "-f", "json")
    assert (s1["network_id"], s1["cidr"], s1["gateway_ip"], s1["ip_version"]) == (
        n1["id"],
        "10.0.0.0/24",
        "10.0.0.1",
        4,
    )
    assert s1["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]

    r1 = osc(demo, "router", "create", "r1", "-f", "json")
    assert r1["status"] == "ACTIVE" and r1["external_gateway_info"] is None
    osc(demo, "router", "add", "subnet", "r1", "s1")
    osc(demo, "router", "set", "--external-gateway", "ext", "r1")
    router = conn.network.get_router(r1["id"])
    assert router.external_gateway_info["network_id"] == ext["id"]
    gateway_ip = router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    assert ipaddress.ip_address(gateway_ip) in ipaddress.ip_network("172.24.8.0/24")
    interfaces = list(conn.network.ports(device_id=r1["id"], device_owner="network:router_interface"))
    assert [p.fixed_ips[0]["ip_address"] for p in interfaces] == ["10.0.0.1"]

    sg1 = osc(demo, "security", "group", "create", "sg1", "-f", "json")
    assert sorted((r["direction"], r["ethertype"]) for r in sg1["rules"]) == [
        ("egress", "IPv4"),
        ("egress", "IPv6"),
    ]
    rule = osc(
        demo,
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "sg1",
        "-f",
        "json",
    )
    assert (rule["security_group_id"], rule["direction"], rule["protocol"]) == (sg1["id"], "ingress", "tcp")
    assert (rule["port_range_min"], rule["port_range_max"], rule["remote_ip_prefix"]) == (22, 22, "0.0.0.0/0")

    p1 = osc(demo, "port", "create", "--network", "n1", "p1", "-f", "json")
    assert p1["network_id"] == n1["id"] and p1["status"] == "DOWN"
    assert [ip["subnet_id"] for ip in p1["fixed_ips"]] == [s1["id"]]

    # -- keypair and server group ----------------------------------------------------------------------------
    private_key = osc(demo, "keypair", "create", "k1")  # OSC makes the key itself and prints the private half
    assert "BEGIN OPENSSH PRIVATE KEY" in private_key
    keypairs = rows(osc(demo, "keypair", "list", "-f", "json"))
    assert keypairs["k1"]["Type"] == "ssh" and keypairs["k1"]["Fingerprint"]
    g1 = osc(demo, "server", "group", "create", "--policy", "anti-affinity", "g1", "-f", "json")
    assert (g1["name"], g1["policy"], g1["members"]) == ("g1", "anti-affinity", [])

    # -- a server --------------------------------------------------------------------------------------------
    user_data = tmp_path / "cloud-init.yaml"
    user_data.write_text("#cloud-config\nruncmd:\n  - echo hello from cove\n")
    vm1 = osc(
        demo,
        "server",
        "create",
        "--flavor",
        "m1.small",
        "--image",
        "ubuntu-22.04",
        "--network",
        "n1",
        "--key-name",
        "k1",
        "--security-group",
        "sg1",
        "--property",
        "role=master",
        "--hint",
        f"group={g1['id']}",
        "--user-data",
        str(user_data),
        "--wait",
        "vm1",
        "-f",
        "json",
    )
    assert vm1["status"] == "ACTIVE" and vm1["OS-EXT-STS:vm_state"] == "active"
    assert vm1["key_name"] == "k1" and vm1["properties"] == {"role": "master"}
    assert vm1["flavor"]["original_name"] == "m1.small" and ubuntu["id"] in vm1["image"]
    assert [sg["name"] for sg in vm1["security_groups"]] == ["sg1"]
    vm1_ip = vm1["addresses"]["n1"][0]
    assert ipaddress.ip_address(vm1_ip) in ipaddress.ip_network("10.0.0.0/24")
    assert base64.b64decode(vm1["OS-EXT-SRV-ATTR:user_data"]) == user_data.read_bytes()
    assert conn.compute.get_server_group(g1["id"]).member_ids == [vm1["id"]]

    extra = [
        conn.compute.create_server(
            name=f"extra-{i}", flavor_id=small["id"], image_id=ubuntu["id"], networks="none"
        )
        for i in range(2)
    ]
    for server in extra:
        conn.compute.wait_for_server(server, wait=WAIT, interval=0.05)
    listed = rows(osc(demo, "server", "list", "-f", "json"))
    assert set(listed) == {"vm1", "extra-0", "extra-1"}
    assert listed["vm1"]["Status"] == "ACTIVE" and listed["vm1"]["Networks"] == {"n1": [vm1_ip]}
    assert listed["vm1"]["Image"] == "ubuntu-22.04" and listed["vm1"]["Flavor"] == "m1.small"
    filtered = osc(demo, "server", "list", "--name", "vm1", "--status", "ACTIVE", "-f", "json")
    assert [s["ID"] for s in filtered] == [vm1["id"]]
    assert len(osc(demo, "server", "list", "--limit", "2", "-f", "json")) == 2
    shown = osc(demo, "server", "show", "vm1", "-f", "json")
    assert (shown["id"], shown["status"], shown["hostId"]) == (vm1["id"], "ACTIVE", vm1["hostId"])

    # -- limits and quotas -----------------------------------------------------------------------------------
    limits = {r["Name"]: r["Value"] for r in osc(demo, "limits", "show", "--absolute", "-f", "json")}
    assert (limits["max_total_instances"], limits["total_instances_used"]) == (100, 3)
    assert (limits["max_total_cores"], limits["total_cores_used"]) == (200, 3)
    assert (limits["max_total_ram_size"], limits["total_ram_used"]) == (409600, 3 * 2048)
    assert (limits["max_total_volumes"], limits["total_volumes_used"]) == (100, 0)  # Cinder's /limits
    quota = {r["Resource"]: r["Limit"] for r in osc(demo, "quota", "show", "-f", "json")}
    assert (quota["instances"], quota["cores"], quota["ram"]) == (100, 200, 409600)  # Nova
    assert (quota["networks"], quota["ports"], quota["routers"], quota["floating_ips"]) == (
        100,
        500,
        10,
        50,
    )  # Neutron
    assert (quota["volumes"], quota["gigabytes"]) == (100, 10000)  # Cinder

    # -- a volume: create, attach, list, detach, delete ------------------------------------------------------
    v1 = osc(demo, "volume", "create", "--size", "1", "v1", "-f", "json")
    assert (v1["name"], v1["size"], v1["status"]) == ("v1", 1, "creating")
    poll(lambda: conn.block_storage.get_volume(v1["id"]).status == "available", timeout=WAIT, message="v1 available")
    attachment = osc(demo, "server", "add", "volume", "vm1", "v1", "-f", "json")
    assert (attachment["Server ID"], attachment["Volume ID"], attachment["Device"]) == (
        vm1["id"],
        v1["id"],
        "/dev/vdb",
    )
    poll(lambda: conn.block_storage.get_volume(v1["id"]).status == "in-use", timeout=WAIT, message="v1 in-use")
    volumes = rows(osc(demo, "volume", "list", "-f", "json"))
    assert volumes["v1"]["Status"] == "in-use"
    assert [(a["server_id"], a["device"]) for a in volumes["v1"]["Attached to"]] == [(vm1["id"], "/dev/vdb")]
    osc(demo, "server", "remove", "volume", "vm1", "v1")
    poll(lambda: conn.block_storage.get_volume(v1["id"]).status == "available", timeout=WAIT, message="v1 detached")
    osc(demo, "volume", "delete", "v1")
    poll(lambda: gone(lambda: conn.block_storage.get_volume(v1["id"])), timeout=WAIT, message="v1 deleted")

    # -- a floating IP on the server (OSC finds the server's Neutron port by device_id) ----------------------
    fip = osc(demo, "floating", "ip", "create", "ext", "-f", "json")
    assert fip["floating_network_id"] == ext["id"] and fip["port_id"] is None and fip["status"] == "DOWN"
    assert ipaddress.ip_address(fip["floating_ip_address"]) in ipaddress.ip_network("172.24.8.0/24")
    osc(demo, "server", "add", "floating", "ip", "vm1", fip["floating_ip_address"])
    associated = conn.network.get_ip(fip["id"])
    vm1_port = next(iter(conn.network.ports(device_id=vm1["id"])))
    assert (associated.port_id, associated.fixed_ip_address, associated.status) == (
        vm1_port.id,
        vm1_ip,
        "ACTIVE",
    )
    addresses = conn.compute.get_server(vm1["id"]).addresses["n1"]
    assert {(a["addr"], a["OS-EXT-IPS:type"]) for a in addresses} == {
        (vm1_ip, "fixed"),
        (fip["floating_ip_address"], "floating"),
    }

    # -- a load balancer: each step waits for ACTIVE through octaviaclient's own --wait ----------------------
    lb1 = osc(
        demo, "loadbalancer", "create", "--name", "lb1", "--vip-subnet-id", "s1", "--wait", "-f", "json"
    )
    assert (lb1["provisioning_status"], lb1["vip_subnet_id"], lb1["provider"]) == (
        "ACTIVE",
        s1["id"],
        "amphora",
    )
    assert ipaddress.ip_address(lb1["vip_address"]) in ipaddress.ip_network("10.0.0.0/24")
    l1 = osc(
        demo,
        "loadbalancer",
        "listener",
        "create",
        "--name",
        "l1",
        "--protocol",
        "TCP",
        "--protocol-port",
        "6443",
        "--wait",
        "lb1",
        "-f",
        "json",
    )
    assert (l1["protocol"], l1["protocol_port"], l1["loadbalancers"]) == ("TCP", 6443, [{"id": lb1["id"]}])
    pool = osc(
        demo,
        "loadbalancer",
        "pool",
        "create",
        "--name",
        "p1",
        "--protocol",
        "TCP",
        "--lb-algorithm",
        "ROUND_ROBIN",
        "--listener",
        "l1",
        "--wait",
        "-f",
        "json",
    )
    assert pool["loadbalancers"] == [{"id": lb1["id"]}] and pool["listeners"] == [{"id": l1["id"]}]
    member = osc(
        demo,
        "loadbalancer",
        "member",
        "create",
        "--address",
        "10.0.0.5",
        "--protocol-port",
        "6443",
        "--subnet-id",
        "s1",
        "--wait",
        "p1",
        "-f",
        "json",
    )
    assert (member["address"], member["protocol_port"], member["subnet_id"]) == ("10.0.0.5", 6443, s1["id"])
    assert (member["provisioning_status"], member["operating_status"]) == ("ACTIVE", "NO_MONITOR")
    monitor = osc(
        demo,
        "loadbalancer",
        "healthmonitor",
        "create",
        "--delay",
        "5",
        "--timeout",
        "3",
        "--max-retries",
        "3",
        "--type",
        "TCP",
        "--wait",
        "p1",
        "-f",
        "json",
    )
    assert (monitor["type"], monitor["delay"], monitor["pools"]) == ("TCP", 5, [{"id": pool["id"]}])
    status = osc(demo, "loadbalancer", "status", "show", "lb1")
    tree = json.loads(status)["loadbalancer"]
    assert (tree["id"], tree["provisioning_status"], tree["operating_status"]) == (
        lb1["id"],
        "ACTIVE",
        "ONLINE",
    )
    [listener] = tree["listeners"]
    [pool_status] = listener["pools"]
    assert (listener["id"], pool_status["id"]) == (l1["id"], pool["id"])
    assert [(m["address"], m["operating_status"]) for m in pool_status["members"]] == [("10.0.0.5", "ONLINE")]
    assert pool_status["health_monitor"]["id"] == monitor["id"]
    osc(demo, "loadbalancer", "delete", "--cascade", "--wait", "lb1")
    assert gone(lambda: conn.load_balancer.get_load_balancer(lb1["id"]))
    assert list(conn.load_balancer.load_balancers()) == []

    # -- (stack create/show/delete: skipped, the devcloud has no Heat) and the server's end ------------------
    osc(demo, "server", "delete", "--wait", "vm1")
    assert gone(lambda: conn.compute.get_server(vm1["id"]))
    for server in extra:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=WAIT, interval=0.05)
    assert list(conn.compute.servers()) == []

    # -- the ledger: nothing of the run left alive, every record closed --------------------------------------
    ledger = admin_conn.session.get(f"{cloud.url}/admin/ledger?project_id={project_id}").json()["records"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for record in ledger:
        by_kind.setdefault(record["kind"], []).append(record)
    for kind in ("server", "volume", "load_balancer", "listener", "pool", "member", "health_monitor"):
        assert by_kind[kind], f"no {kind} in the ledger"
        assert all(r["deleted_at"] for r in by_kind[kind]), f"a {kind} is left alive: {by_kind[kind]}"
    [vm1_record] = [r for r in by_kind["server"] if r["id"] == vm1["id"]]
    assert (vm1_record["vcpus"], vm1_record["ram_mb"], vm1_record["disk_gb"]) == (1, 2048, 20)
    statuses = [e["status"] for e in vm1_record["events"]]
    assert statuses[0] == "BUILD" and "ACTIVE" in statuses and statuses[-1] == "deleted"

    stats = admin_conn.session.get(f"{cloud.url}/admin/stats").json()
    assert stats["unrouted"] == []
    assert not [s for s in stats["by_status"] if s.startswith("5")], stats["by_status"]
