"""The regression guard of the spec's §5.3: a representative openstacksdk + `openstack` CLI flow runs against
a private devcloud that records every request (`--request-log`: "METHOD TEMPLATE STATUS", the template being
the aiohttp route's canonical path). The set of (method, template) pairs it used must equal golden_routes.txt:

- a pair the flow uses that the golden list lacks fails the test with the route named, and a request no route
  matched is named with its raw path: that is how an SDK or CLI upgrade that calls a new URL (like the SDK's
  `add_gateway_router`) is caught before it reaches a real cloud;
- a golden pair the flow no longer uses fails too (the upgrade moved a call elsewhere; look, then regenerate);
- /admin/stats must show no unrouted request and no 5xx.

After a deliberate SDK/CLI bump whose new routes the devcloud serves, regenerate the list with
`COVE_UPDATE_GOLDEN_ROUTES=1 .venv/bin/pytest tests/devcloud/test_route_guard.py` and review the diff.

The devcloud runs with time factor 0 (the guard checks routes, not timing), so the CLI part runs the §5.2
command list in a few interactive `openstack` processes (commands on stdin) instead of one process each."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import openstack.config
import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from openstack import exceptions
from openstack.connection import Connection

from deploy.devcloud.process import Devcloud, start_devcloud, stop_devcloud

GOLDEN = Path(__file__).with_name("golden_routes.txt")
UPDATE = "COVE_UPDATE_GOLDEN_ROUTES"
OPENSTACK = str(Path(sys.executable).with_name("openstack"))
WAIT = 20
INTERVAL = 0.02
OWN_PREFIXES = ("/admin/", "/healthz")  # the devcloud's own endpoints: the test and the launcher call them

Route = tuple[str, str]


# ------------------------------------------------------------------------------------------------------------
# The request log and the golden list


class RequestLog:
    """Reads what the devcloud's --request-log wrote since the last `mark()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> tuple[set[Route], list[str]]:
        """(method, template) pairs used, and the unrouted requests as "METHOD /raw/path STATUS"."""
        used: set[Route] = set()
        unrouted: list[str] = []
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self.offset)
            for line in handle:
                fields = line.split()
                if len(fields) < 3 or fields[1].startswith(OWN_PREFIXES):
                    continue
                if fields[3:] == ["unrouted"]:
                    unrouted.append(" ".join(fields[:3]))
                else:
                    used.add((fields[0], fields[1]))
        return used, unrouted


def load_golden() -> set[Route]:
    routes: set[Route] = set()
    for line in GOLDEN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            method, path = line.split()
            routes.add((method, path))
    return routes


def write_golden(routes: set[Route]) -> None:
    header = [
        "# The (method, templated path) pairs a representative openstacksdk + openstack CLI flow uses",
        "# against the devcloud: tests/devcloud/test_route_guard.py fails when the flow's set differs.",
        (
            f"# Recorded with openstacksdk {version('openstacksdk')}, python-openstackclient "
            f"{version('python-openstackclient')}, python-octaviaclient {version('python-octaviaclient')}, "
            f"keystoneauth1 {version('keystoneauth1')}."
        ),
        f"# Regenerate after a deliberate bump: {UPDATE}=1 .venv/bin/pytest tests/devcloud/test_route_guard.py",
    ]
    body = [f"{m} {p}" for m, p in sorted(routes, key=lambda r: (r[1], r[0]))]
    GOLDEN.write_text("\n".join(header + body) + "\n")


def route_problems(used: set[Route], unrouted: list[str], golden: set[Route]) -> list[str]:
    """What the guard reports, one line each; empty when the flow matches the golden list."""
    problems = [f"unrouted: {line} (the devcloud has no route for it)" for line in unrouted]
    problems += [f"new route, not in {GOLDEN.name}: {m} {p}" for m, p in sorted(used - golden)]
    problems += [f"golden route no longer used: {m} {p}" for m, p in sorted(golden - used)]
    return problems


# ------------------------------------------------------------------------------------------------------------
# The devcloud and clients


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Devcloud, RequestLog]]:
    workdir = tmp_path_factory.mktemp("route-guard")
    log_path = workdir / "requests.log"
    cloud = start_devcloud(workdir, time_factor=0.0, extra_args=("--request-log", str(log_path)))
    try:
        yield cloud, RequestLog(log_path)
    finally:
        stop_devcloud(cloud)


def sdk(cloud: Devcloud, name: str) -> Connection:
    # load_envvars=False: the session devcloud fixture sets OS_CLIENT_CONFIG_FILE, which would otherwise win
    config = openstack.config.OpenStackConfig(config_files=[str(cloud.clouds_yaml)], load_envvars=False)
    return Connection(config=config.get_one(cloud=name))


def admin_json(cloud: Devcloud, path: str) -> Any:
    return sdk(cloud, "cove-admin").session.get(f"{cloud.url}{path}").json()


def osc_batch(cloud: Devcloud, commands: list[str], name: str = "cove-demo") -> str:
    """Run `commands` in one interactive `openstack` (OSC reads them from stdin). Its exit code says nothing
    there; a failed command prints to stderr, which must stay empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(cloud.clouds_yaml), OS_CLOUD=name)
    proc = subprocess.run(
        [OPENSTACK],
        input="\n".join(commands) + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stderr.strip() == "", f"openstack failed in batch {commands}:\n{proc.stderr[-3000:]}"
    return proc.stdout


# ------------------------------------------------------------------------------------------------------------
# The flow: what Cove's provisioner does (through a trust, as the cove service user) and the spec's §5.1 calls


def sdk_flow(cloud: Devcloud) -> None:
    demo = sdk(cloud, "cove-demo")
    admin = sdk(cloud, "cove-admin")
    demo.authorize()
    project_id = demo.current_project_id
    cove_id = admin.identity.find_user("cove", ignore_missing=False).id

    # Identity: a trust (demo to cove), the provisioner's trust-scoped connection, an application credential
    trust = demo.identity.create_trust(
        trustor_user_id=demo.current_user_id,
        trustee_user_id=cove_id,
        project_id=project_id,
        roles=[{"name": "member"}],
        impersonation=True,
    )
    auth = v3.Password(
        auth_url=f"{cloud.url}/identity",
        username="cove",
        password="cove-pass",
        user_domain_name="Default",
        trust_id=trust.id,
    )
    conn = Connection(session=ks_session.Session(auth=auth), app_name="cove-provisioner")
    assert conn.session.get_project_id() == project_id
    cred = demo.identity.create_application_credential(
        demo.current_user_id, "guard-cred", roles=[{"name": "member"}]
    )
    by_cred = openstack.connect(
        auth_type="v3applicationcredential",
        auth_url=f"{cloud.url}/identity",
        application_credential_id=cred.id,
        application_credential_secret=cred.secret,
    )
    assert [f.name for f in by_cred.compute.flavors()]
    demo.identity.delete_application_credential(demo.current_user_id, cred.id)

    # The provisioner's lookups and its network (CAPO style: find by name, then create)
    flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
    conn.compute.get_flavor(flavor.id)
    image = conn.image.find_image("fedora-coreos", ignore_missing=False)
    conn.image.get_image(image.id)
    assert len(list(conn.image.images(limit=1))) >= 2
    public = conn.network.find_network("public", ignore_missing=False)
    assert list(conn.network.networks(name="guard-net")) == []
    net = conn.network.create_network(name="guard-net")
    conn.network.set_tags(net, ["cove-cluster=guard"])
    assert list(conn.network.subnets(name="guard-subnet", network_id=net.id)) == []
    subnet = conn.network.create_subnet(
        name="guard-subnet", network_id=net.id, cidr="10.9.0.0/24", ip_version=4, dns_nameservers=["8.8.8.8"]
    )
    conn.network.find_subnet(subnet.id, ignore_missing=False)
    assert list(conn.network.routers(name="guard-router")) == []
    router = conn.network.create_router(name="guard-router", external_gateway_info={"network_id": public.id})
    assert list(conn.network.ports(device_id=router.id)) == []
    conn.network.add_interface_to_router(router, subnet=subnet.id)
    assert list(conn.network.security_groups(name="guard-sg")) == []
    sg = conn.network.create_security_group(name="guard-sg", description="Cove cluster guard")
    conn.network.create_security_group_rule(
        security_group_id=sg.id,
        direction="ingress",
        ethertype="IPv4",
        protocol="tcp",
        port_range_min=6443,
        port_range_max=6443,
        remote_ip_prefix="0.0.0.0/0",
    )
    with pytest.raises(exceptions.ConflictException):
        conn.network.create_security_group_rule(
            security_group_id=sg.id,
            direction="ingress",
            ethertype="IPv4",
            protocol="tcp",
            port_range_min=6443,
            port_range_max=6443,
            remote_ip_prefix="0.0.0.0/0",
        )

    # Servers: keypair, server group, create with user data and a group hint, list, page, limits, quota set
    keypair = conn.compute.create_keypair(name="guard-key")
    group = conn.compute.create_server_group(name="guard-group", policy="anti-affinity")
    user_data = base64.b64encode(b"#cloud-config\n").decode()
    assert list(conn.compute.servers(details=True, name="guard-")) == []
    servers = [
        conn.compute.create_server(
            name=f"guard-{i}",
            flavor_id=flavor.id,
            image_id=image.id,
            networks=[{"uuid": net.id}],
            key_name=keypair.name,
            user_data=user_data,
            security_groups=[{"name": sg.name}],
            metadata={"cove": "guard"},
            scheduler_hints={"group": group.id},
        )
        for i in range(3)
    ]
    servers = [conn.compute.wait_for_server(s, wait=WAIT, interval=INTERVAL) for s in servers]
    assert len(list(conn.compute.servers(details=True, name="guard-", limit=2))) == 3
    assert len(list(conn.compute.servers(max_items=2))) == 2
    assert conn.compute.get_limits().absolute.instances_used == 3
    assert conn.compute.get_quota_set(project_id).instances == 100
    server = servers[0]

    # A floating IP on the server's port
    port = next(iter(conn.network.ports(device_id=server.id)))
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert conn.network.get_ip(fip.id).status == "ACTIVE"

    # A volume: create, attach through Nova, detach, delete
    vol = conn.block_storage.create_volume(size=1, name="guard-vol")
    vol = conn.block_storage.wait_for_status(vol, "available", wait=WAIT, interval=INTERVAL)
    conn.compute.create_volume_attachment(server, volume_id=vol.id)
    conn.block_storage.wait_for_status(
        conn.block_storage.get_volume(vol.id), "in-use", wait=WAIT, interval=INTERVAL
    )
    assert [a.volume_id for a in conn.compute.volume_attachments(server)] == [vol.id]
    conn.compute.delete_volume_attachment(server, vol.id)
    conn.block_storage.wait_for_status(
        conn.block_storage.get_volume(vol.id), "available", wait=WAIT, interval=INTERVAL
    )
    conn.block_storage.delete_volume(vol)
    conn.block_storage.wait_for_delete(vol, wait=WAIT, interval=INTERVAL)
    conn.block_storage.get_limits()

    # A load balancer for the cluster's API: LB, listener, pool, member, health monitor, cascade delete
    lb = conn.load_balancer.create_load_balancer(name="guard-lb", vip_subnet_id=subnet.id)
    conn.load_balancer.wait_for_load_balancer(lb.id, wait=WAIT, interval=INTERVAL)
    listener = conn.load_balancer.create_listener(
        name="guard-l", protocol="TCP", protocol_port=6443, load_balancer_id=lb.id
    )
    conn.load_balancer.wait_for_load_balancer(lb.id, wait=WAIT, interval=INTERVAL)
    pool = conn.load_balancer.create_pool(
        name="guard-p", protocol="TCP", lb_algorithm="ROUND_ROBIN", listener_id=listener.id
    )
    conn.load_balancer.wait_for_load_balancer(lb.id, wait=WAIT, interval=INTERVAL)
    conn.load_balancer.create_member(
        pool, address=server.addresses["guard-net"][0]["addr"], protocol_port=6443, subnet_id=subnet.id
    )
    conn.load_balancer.wait_for_load_balancer(lb.id, wait=WAIT, interval=INTERVAL)
    conn.load_balancer.create_health_monitor(pool_id=pool.id, type="TCP", delay=5, timeout=3, max_retries=3)
    conn.load_balancer.wait_for_load_balancer(lb.id, wait=WAIT, interval=INTERVAL)
    assert [m.address for m in conn.load_balancer.members(pool)] == [server.addresses["guard-net"][0]["addr"]]
    conn.load_balancer.delete_load_balancer(lb, cascade=True)
    conn.load_balancer.wait_for_delete(lb, wait=WAIT, interval=INTERVAL)

    # Tear down as the provisioner does: servers, router interfaces, router, subnets, network, security group
    conn.network.delete_ip(fip)
    for s in servers:
        conn.compute.delete_server(s.id, ignore_missing=True)
    for s in servers:
        conn.compute.wait_for_delete(s, wait=WAIT, interval=INTERVAL)
    for router_port in list(conn.network.ports(device_id=router.id)):
        for ip in router_port.fixed_ips:
            conn.network.remove_interface_from_router(router, subnet=ip["subnet_id"])
    conn.network.delete_router(router, ignore_missing=True)
    for sub in list(conn.network.subnets(network_id=net.id)):
        conn.network.delete_subnet(sub, ignore_missing=True)
    conn.network.delete_network(net, ignore_missing=True)
    conn.network.delete_security_group(sg, ignore_missing=True)
    conn.compute.delete_server_group(group)
    conn.compute.delete_keypair(keypair)
    demo.identity.delete_trust(trust)


def cli_flow(cloud: Devcloud, tmp_path: Path) -> None:
    """The spec's §5.2 command list (Heat aside), against the seeded external network `public`."""
    user_data = tmp_path / "cloud-init.yaml"
    user_data.write_text("#cloud-config\n")
    osc_batch(
        cloud,
        [
            "token issue -f json",
            "catalog list -f json",
            "versions show -f json",
            "flavor list -f json",
            "flavor show m1.small -f json",
            "image list -f json",
            "image show ubuntu-22.04 -f json",
            "network create n1 -f json",
            "subnet create --network n1 --subnet-range 10.0.0.0/24 s1 -f json",
            "router create r1 -f json",
            "router add subnet r1 s1",
            "router set --external-gateway public r1",
            "security group create sg1 -f json",
            "security group rule create --protocol tcp --dst-port 22 sg1 -f json",
            "port create --network n1 p1 -f json",
            "keypair create k1",
            "keypair list -f json",
            "server group create --policy anti-affinity g1 -f json",
            "floating ip create public -f json",
        ],
    )
    conn = sdk(cloud, "cove-demo")
    group_id = conn.compute.find_server_group("g1", ignore_missing=False).id
    fip = next(iter(conn.network.ips(floating_network_id=conn.network.find_network("public").id)))
    osc_batch(
        cloud,
        [
            (
                "server create --flavor m1.small --image ubuntu-22.04 --network n1 --key-name k1 "
                f"--security-group sg1 --property role=master --hint group={group_id} "
                f"--user-data {user_data} "
                "--wait vm1 -f json"
            ),
            "server list -f json",
            "server list --name vm1 --status ACTIVE -f json",
            "server list --limit 2 -f json",
            "server show vm1 -f json",
            "limits show --absolute -f json",
            "quota show -f json",
            "volume create --size 1 v1 -f json",
        ],
    )
    conn.block_storage.wait_for_status(
        conn.block_storage.find_volume("v1", ignore_missing=False), "available", wait=WAIT, interval=INTERVAL
    )
    osc_batch(
        cloud,
        [
            "server add volume vm1 v1 -f json",
            "volume list -f json",
        ],
    )
    conn.block_storage.wait_for_status(
        conn.block_storage.find_volume("v1", ignore_missing=False), "in-use", wait=WAIT, interval=INTERVAL
    )
    osc_batch(
        cloud,
        [
            "server remove volume vm1 v1",
        ],
    )
    conn.block_storage.wait_for_status(
        conn.block_storage.find_volume("v1", ignore_missing=False), "available", wait=WAIT, interval=INTERVAL
    )
    osc_batch(
        cloud,
        [
            "volume delete v1",
            f"server add floating ip vm1 {fip.floating_ip_address}",
            "loadbalancer create --name lb1 --vip-subnet-id s1 --wait -f json",
            "loadbalancer listener create --name l1 --protocol TCP --protocol-port 6443 --wait lb1 -f json",
            (
                "loadbalancer pool create --name p1 --protocol TCP --lb-algorithm ROUND_ROBIN --listener l1 "
                "--wait"
            ),
            "loadbalancer member create --address 10.0.0.5 --protocol-port 6443 --subnet-id s1 --wait p1",
            "loadbalancer healthmonitor create --delay 5 --timeout 3 --max-retries 3 --type TCP --wait p1",
            "loadbalancer status show lb1",
            "loadbalancer delete --cascade --wait lb1",
            "server delete --wait vm1",
        ],
    )
    assert list(conn.compute.servers()) == []
    assert list(conn.load_balancer.load_balancers()) == []
    assert conn.network.get_ip(fip.id).port_id is None  # the server's port went with it


# ------------------------------------------------------------------------------------------------------------
# The tests


def test_sdk_and_cli_use_exactly_the_golden_routes(
    guarded: tuple[Devcloud, RequestLog], tmp_path: Path
) -> None:
    cloud, log = guarded
    log.mark()
    sdk_flow(cloud)
    cli_flow(cloud, tmp_path)
    used, unrouted = log.read()
    assert ("GET", "/compute/v2.1/servers/{server_id}") in used  # the log names routes by template, not by id
    if os.environ.get(UPDATE) and not unrouted:
        write_golden(used)
    problems = route_problems(used, unrouted, load_golden())
    assert not problems, "the SDK/CLI flow and golden_routes.txt differ:\n  " + "\n  ".join(problems)

    stats = admin_json(cloud, "/admin/stats")
    assert stats["unrouted"] == []
    assert not [code for code in stats["by_status"] if code.startswith("5")], stats["by_status"]


def test_guard_names_a_path_the_devcloud_does_not_route(guarded: tuple[Devcloud, RequestLog]) -> None:
    """A client call the devcloud has no route for (Nova's os-interface here) is reported with its path."""
    cloud, log = guarded
    conn = sdk(cloud, "cove-demo")
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    image = conn.image.find_image("ubuntu-22.04", ignore_missing=False)
    server = conn.compute.wait_for_server(
        conn.compute.create_server(
            name="guard-probe", flavor_id=flavor.id, image_id=image.id, networks="none"
        ),
        wait=WAIT,
        interval=INTERVAL,
    )
    log.mark()
    with pytest.raises(exceptions.NotFoundException):
        list(conn.compute.server_interfaces(server))
    used, unrouted = log.read()
    assert unrouted == [f"GET /compute/v2.1/servers/{server.id}/os-interface 404"]
    problems = route_problems(used, unrouted, used)
    assert problems == [
        (
            f"unrouted: GET /compute/v2.1/servers/{server.id}/os-interface 404 "
            "(the devcloud has no route for it)"
        )
    ]
    assert any(
        f"/servers/{server.id}/os-interface" in line for line in admin_json(cloud, "/admin/stats")["unrouted"]
    )
    conn.compute.delete_server(server)
    # both directions of a difference are named
    assert route_problems({("GET", "/a"), ("GET", "/b/{id}")}, [], {("GET", "/a"), ("POST", "/c")}) == [
        "new route, not in golden_routes.txt: GET /b/{id}",
        "golden route no longer used: POST /c",
    ]


def test_admin_timing_reports_the_live_time_factor(guarded: tuple[Devcloud, RequestLog]) -> None:
    """GET /admin/timing shows the factor PUT /admin/timing set, not the configured one."""
    cloud, _ = guarded
    admin = sdk(cloud, "cove-admin")
    assert admin.session.get(f"{cloud.url}/admin/timing").json()["time_factor"] == 0.0
    try:
        assert admin.session.put(f"{cloud.url}/admin/timing", json={"time_factor": 0.25}).json() == {
            "time_factor": 0.25
        }
        timing = admin.session.get(f"{cloud.url}/admin/timing").json()
        assert timing["time_factor"] == 0.25 and timing["boot_seconds"]["dist"] == "uniform"
    finally:
        admin.session.put(f"{cloud.url}/admin/timing", json={"time_factor": 0.0})
