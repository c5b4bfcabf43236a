"""The stand-in COE endpoints (deploy/devcloud/coe/).

Without a cloud: what they read from the drivers' user data, which cluster gets an address two clusters' private
networks share, that only loopback is bound, and the x509 check. With the devcloud (servers booted with Swarm and
Mesos user data): the real `docker` CLI against the Swarm stand-in over TLS, and Marathon's and the Mesos master's
answers over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.devcloud.coe import kubernetes as k8s
from deploy.devcloud.coe import plan as cp
from deploy.devcloud.coe import reconciler, userdata
from proto import labels
from services.certs import ca
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.kubernetes import KubernetesDriver
from tests.conftest import Devcloud


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def _client(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, group: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, group)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def _node(ca_pem: str, key_pem: str | None, role: str, first: bool, name: str) -> NodeContext:
    return NodeContext(cluster_id="c-1", cluster_name="demo", node_name=name, role=role,  # type: ignore[arg-type]
                       nodegroup="default-master" if role == "master" else "default-worker", is_first_master=first,
                       api_host="127.100.0.5", api_port=6443, ca_cert_pem=ca_pem, bootstrap_token="abcdef.0123456789abcdef",
                       master_addresses=("127.100.0.5",), ca_key_pem=key_pem)


def test_reads_what_the_kubernetes_driver_gives_the_first_master_and_a_worker() -> None:
    ca_pem, key_pem = _pem(*_ca("cluster-ca"))
    driver = KubernetesDriver()
    master = driver.user_data(_node(ca_pem, key_pem, "master", True, "Demo_Master-0"))
    files = userdata.read_user_data(base64.b64encode(master.encode()).decode())  # as Nova stores it
    assert files is not None
    assert (files.coe, files.role, files.first_master, files.node_name) == ("kubernetes", "master", True, "demo-master-0")
    assert (files.api_host, files.api_port, files.kube_tag) == ("127.100.0.5", 6443, "v1.30.4")
    assert files.ca_cert_pem == ca_pem and files.ca_key_pem == key_pem
    assert "127.100.0.5" in files.cert_sans and files.service_cidr
    assert set(files.group_roles) == {("cove:cluster-admins", "cluster-admin"), ("cove:cluster-viewers", "view")}
    worker = userdata.read_user_data(driver.user_data(_node(ca_pem, None, "worker", False, "demo-node-1")))
    assert worker is not None and worker.role == "worker" and worker.ca_key_pem is None
    assert userdata.read_user_data("#!/bin/sh\necho hi\n") is None
    assert userdata.read_user_data(None) is None


def test_reads_what_the_swarm_and_mesos_drivers_give_their_nodes() -> None:
    tls = new_ca("cluster-ca")
    cert, key = tls.server("demo-node-1", ["127.100.0.6", "127.100.0.5"])
    base = NodeContext(cluster_id="c-1", cluster_name="demo", node_name="demo-node-1", role="worker",
                       nodegroup="default-worker", is_first_master=False, api_host="127.100.0.5", api_port=2376,
                       ca_cert_pem=tls.ca_pem, bootstrap_token="", node_address="127.100.0.6",
                       master_addresses=("127.100.0.5",))
    swarm = userdata.read_user_data(swarm_user_data(dataclasses.replace(base, server_cert_pem=cert,
                                                                       server_key_pem=key)))
    assert swarm is not None
    assert (swarm.coe, swarm.role, swarm.first_master, swarm.api_port) == ("swarm-mode", "worker", False, 2376)
    assert (swarm.server_cert_pem, swarm.server_key_pem, swarm.ca_cert_pem) == (cert, key, tls.ca_pem)
    assert swarm.hostname == "demo-node-1" and swarm.ca_key_pem is None
    mesos = userdata.read_user_data(mesos_user_data(dataclasses.replace(base, role="master", is_first_master=True,
                                                                        node_name="demo-master-0", api_port=8080)))
    assert mesos is not None
    assert (mesos.coe, mesos.role, mesos.first_master, mesos.api_port) == ("mesos", "master", True, 8080)
    assert mesos.ca_cert_pem == tls.ca_pem and mesos.server_cert_pem is None


def test_the_default_kube_tag_is_the_driver_s() -> None:
    assert userdata.DEFAULT_KUBE_TAG == labels.resolved("kubernetes", {})["kube_tag"]


def _files(**kw: object) -> userdata.NodeFiles:
    base: dict[str, object] = {"coe": "kubernetes", "node_name": "m-0", "role": "master", "first_master": True,
                               "api_host": "", "api_port": 6443, "ca_cert_pem": ""}
    return userdata.NodeFiles(**{**base, **kw})  # type: ignore[arg-type]


def _plan(cid: str, created: str, bindings: dict[tuple[str, int], int]) -> cp.Plan:
    return cp.Plan(cid, _files(), created, bindings={k: cp.Binding(r, 6443, "s") for k, r in bindings.items()})


def test_a_shared_fixed_ip_goes_to_the_cluster_whose_api_host_it_is_then_the_holder_then_the_older() -> None:
    key = ("127.100.0.2", 6443)
    old, new = _plan("old", "2026-01-01", {key: 1}), _plan("new", "2026-02-01", {key: 0})
    assert cp.assign({"old": old, "new": new}, {}) == {key: "new"}
    new.bindings[key] = cp.Binding(1, 6443, "s")
    assert cp.assign({"old": old, "new": new}, {}) == {key: "old"}
    assert cp.assign({"old": old, "new": new}, {key: "new"}) == {key: "new"}


def test_only_loopback_is_bound() -> None:
    endpoints = reconciler.CoeEndpoints.__new__(reconciler.CoeEndpoints)
    endpoints.refused = set()
    assert endpoints._allowed(("127.24.4.7", 6443), "c")
    assert not endpoints._allowed(("10.0.0.5", 6443), "c")
    assert not endpoints._allowed(("192.0.2.1", 6443), "c") and len(endpoints.refused) == 2
    assert not cp.is_loopback("not-an-ip")


def test_client_certificates_of_the_cluster_ca_only() -> None:
    ca, ca_key = _ca("cluster-ca")
    other, other_key = _ca("other-ca")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    assert k8s.client_identity(_client(ca, ca_key, "system:masters"), ca_pem) == ("admin", ["system:masters"])
    assert k8s.client_identity(_client(other, other_key, "system:masters"), ca_pem) is None
    assert k8s.client_identity(None, ca_pem) is None


def test_the_serving_certificate_names_what_the_user_data_names_and_chains_to_the_ca() -> None:
    """As kubeadm on the node: the masters, the service IP, the control-plane endpoint and the certSANs; an address
    the endpoint listens at (a floating IP) only when the user data's certSANs name it."""
    ca, ca_key = _ca("cluster-ca")
    ca_pem, key_pem = _pem(ca, ca_key)

    def ips(cert_sans: tuple[str, ...]) -> set[str]:
        first = _files(ca_cert_pem=ca_pem, ca_key_pem=key_pem, api_host="127.100.0.5", service_cidr="10.254.0.0/16",
                       cert_sans=cert_sans)
        p = cp.Plan("c", first, "")
        p.master_ips = {"127.100.0.5"}
        cert = x509.load_pem_x509_certificate(
            k8s.serving_certificate(p, ["127.24.4.9"], ec.generate_private_key(ec.SECP256R1())))
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"kubernetes", "kubernetes.default.svc.cluster.local"} <= set(sans.get_values_for_type(x509.DNSName))
        return {str(a) for a in sans.get_values_for_type(x509.IPAddress)}

    assert ips(("127.100.0.5",)) == {"127.100.0.5", "10.254.0.1"}
    assert ips(("127.100.0.5", "127.24.4.9")) == {"127.24.4.9", "127.100.0.5", "10.254.0.1"}
    assert ipaddress.ip_address("127.24.4.9") in cp.LOOPBACK


# ==================================================================================================== with the devcloud

# Servers booted on the devcloud with the user data the Swarm and Mesos drivers render (services/provisioner/drivers/
# swarm.py and mesos.py: /etc/cove/node.env, /etc/cove/ca.pem, and for Swarm /etc/docker/tls/), certificates issued
# by Cove's CA code (services/certs/ca.py), and the real `docker` CLI against the stand-in.

DOCKER = shutil.which("docker")
needs_docker = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed (shutil.which('docker'))")
W = {"wait": 30, "interval": 0.05}


@dataclass
class TlsFiles:
    ca_pem: str
    ca_key: bytes

    def server(self, name: str, sans: list[str]) -> tuple[str, str]:
        """A node's engine certificate and key, as the certs service issues them (server and client usages)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue(self.ca_pem, self.ca_key, _csr(key, name), subject=ca.node_subject(name),
                        sans=ca.node_sans(sans), server=True)
        return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)

    def client_dir(self, path: Path) -> Path:
        """A DOCKER_CERT_PATH as `openstack coe cluster config` writes it: ca.pem, cert.pem, key.pem."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue(self.ca_pem, self.ca_key, _csr(key, "admin"), subject=ca.user_subject("u-1", "admin", "admin"))
        path.mkdir(parents=True, exist_ok=True)
        (path / "ca.pem").write_text(self.ca_pem)
        (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (path / "key.pem").write_text(_key_pem(key))
        return path


def new_ca(name: str) -> TlsFiles:
    cert_pem, key_pem = ca.generate_ca(name)
    return TlsFiles(cert_pem, key_pem)


def _csr(key: ec.EllipticCurvePrivateKey, cn: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def swarm_user_data(ctx: NodeContext) -> str:
    """The Swarm driver's user data (services/provisioner/drivers/swarm.py)."""
    from services.provisioner.drivers.swarm import SwarmDriver

    return SwarmDriver().user_data(ctx)


def mesos_user_data(ctx: NodeContext) -> str:
    """The Mesos driver's user data (services/provisioner/drivers/mesos.py)."""
    from services.provisioner.drivers.mesos import MesosDriver

    return MesosDriver().user_data(ctx)


@dataclass
class Booted:
    cluster_id: str
    tls: TlsFiles
    servers: dict[str, Any]  # node name -> server
    addresses: dict[str, str]  # node name -> fixed IP


def boot_cluster(conn: Any, net: Any, subnet: Any, coe: str, roles: list[str], api_port: int) -> Booted:
    """Ports first (so the certificates name the addresses, as the provisioner does), then the servers with their
    user data and the cluster's metadata; returns once every server is ACTIVE."""
    cid = str(uuid.uuid4())
    tls = new_ca(f"cluster-{cid[:8]}")
    image = conn.image.find_image("ubuntu-22.04", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    names = [f"{coe[:5]}-{cid[:4]}-{role}-{i}" for i, role in enumerate(roles)]
    ports = {n: conn.network.create_port(network_id=net.id, name=n, fixed_ips=[{"subnet_id": subnet.id}])
             for n in names}
    addresses = {n: p.fixed_ips[0]["ip_address"] for n, p in ports.items()}
    api_host = addresses[names[0]]
    servers = {}
    for i, (name, role) in enumerate(zip(names, roles, strict=True)):
        ctx = NodeContext(cluster_id=cid, cluster_name=f"{coe}-demo", node_name=name, role=role,  # type: ignore[arg-type]
                          nodegroup=f"default-{role}", is_first_master=i == 0, api_host=api_host, api_port=api_port,
                          ca_cert_pem=tls.ca_pem, bootstrap_token="", node_address=addresses[name],
                          master_addresses=tuple(addresses[n] for n, r in zip(names, roles, strict=True)
                                                 if r == "master"))
        if coe == "swarm-mode":
            cert, key = tls.server(name, [addresses[name], api_host, "127.0.0.1", "localhost"])
            ctx = dataclasses.replace(ctx, server_cert_pem=cert, server_key_pem=key)
            data = swarm_user_data(ctx)
        else:
            data = mesos_user_data(ctx)
        servers[name] = conn.compute.create_server(
            name=name, flavor_id=flavor.id, image_id=image.id, networks=[{"port": ports[name].id}],
            user_data=base64.b64encode(data.encode()).decode(),
            metadata={"cove_cluster_id": cid})
    for name, s in servers.items():
        servers[name] = conn.compute.wait_for_server(s, **W)
    return Booted(cid, tls, servers, addresses)


def listening(ip: str, port: int) -> bool:
    assert ip.startswith("127."), ip  # never leave the machine
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def until(predicate: Any, message: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def demo(devcloud: Devcloud) -> Any:
    return openstack.connect(cloud="cove-demo")


def remove_network(conn: Any, net: Any) -> None:
    """The servers on ``net``, then its ports, subnets and itself: the session's devcloud is shared, and a project
    with two networks cannot boot a server with ``networks: auto`` (tests/devcloud/test_compute.py does)."""
    ports = list(conn.network.ports(network_id=net.id))
    servers = {p.device_id for p in ports if p.device_id and (p.device_owner or "").startswith("compute:")}
    for sid in servers:
        conn.compute.delete_server(sid, ignore_missing=True)
    for sid in servers:
        server = conn.compute.find_server(sid)
        if server is not None:
            conn.compute.wait_for_delete(server, **W)
    for port in conn.network.ports(network_id=net.id):
        conn.network.delete_port(port, ignore_missing=True)
    for subnet in conn.network.subnets(network_id=net.id):
        conn.network.delete_subnet(subnet, ignore_missing=True)
    conn.network.delete_network(net, ignore_missing=True)


@pytest.fixture(scope="module")
def loopback_net(demo: Any) -> Iterator[tuple[Any, Any]]:
    net = demo.network.create_network(name="coe-standins")
    subnet = demo.network.create_subnet(network_id=net.id, cidr="127.77.1.0/24", ip_version=4, name="coe-standins")
    yield net, subnet
    remove_network(demo, net)


@pytest.fixture(scope="module")
def swarm(demo: Any, loopback_net: tuple[Any, Any]) -> Booted:
    booted = boot_cluster(demo, *loopback_net, "swarm-mode", ["master", "master", "worker", "worker"], 2376)
    for name, ip in booted.addresses.items():
        until(lambda ip=ip: listening(ip, 2376), f"the engine of {name} at {ip}:2376")
    return booted


def docker(booted: Booted, name: str, cert_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cert_path.parent),
           "DOCKER_CONFIG": str(cert_path.parent / "docker-config"),
           "DOCKER_HOST": f"tcp://{booted.addresses[name]}:2376", "DOCKER_CERT_PATH": str(cert_path),
           "DOCKER_TLS_VERIFY": "1"}
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def engine(booted: Booted, name: str, cert_path: Path, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"https://{booted.addresses[name]}:2376{path}", timeout=10,
                            cert=(str(cert_path / "cert.pem"), str(cert_path / "key.pem")),
                            verify=str(cert_path / "ca.pem"), **kw)


def ledger(devcloud: Devcloud, resource_id: str) -> dict[str, Any]:
    admin = openstack.connect(cloud="cove-admin")
    records = admin.session.get(f"{devcloud.url}/admin/ledger").json()["records"]
    return {r["id"]: r for r in records}[resource_id]


@needs_docker
def test_docker_cli_version_info_and_nodes_over_tls(swarm: Booted, tmp_path: Path) -> None:
    certs = swarm.tls.client_dir(tmp_path / "certs")
    names = list(swarm.servers)
    first = names[0]
    out = docker(swarm, first, certs, "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20.10.24+dfsg1", "1.41"]
    info = docker(swarm, first, certs, "info", "--format", "{{json .Swarm}}")
    assert info.returncode == 0, info.stderr
    me = json.loads(info.stdout)
    assert me["LocalNodeState"] == "active" and me["ControlAvailable"] is True and me["Nodes"] == 4
    assert me["Managers"] == 2 and me["NodeAddr"] == swarm.addresses[first]
    ls = docker(swarm, first, certs, "node", "ls", "--format", "{{.Hostname}}|{{.Status}}|{{.Availability}}|"
                "{{.ManagerStatus}}|{{.Self}}")
    assert ls.returncode == 0, ls.stderr
    rows = {line.split("|")[0]: line.split("|")[1:] for line in ls.stdout.splitlines()}
    assert rows == {names[0]: ["Ready", "Active", "Leader", "true"], names[1]: ["Ready", "Active", "Reachable", "false"],
                    names[2]: ["Ready", "Active", "", "false"], names[3]: ["Ready", "Active", "", "false"]}
    inspect = docker(swarm, first, certs, "node", "inspect", "self", "--format", "{{.Description.Hostname}}")
    assert inspect.returncode == 0 and inspect.stdout.strip() == first, inspect.stderr
    # Each node's engine is its own, with its own certificate: a worker is no manager.
    worker = docker(swarm, names[2], certs, "node", "ls")
    assert worker.returncode != 0 and "not a swarm manager" in worker.stderr
    server_cert = ssl.get_server_certificate((swarm.addresses[names[2]], 2376))
    cn = x509.load_pem_x509_certificate(server_cert.encode()).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == names[2]


@needs_docker
def test_a_certificate_from_another_ca_fails_the_handshake(swarm: Booted, tmp_path: Path) -> None:
    other = new_ca("another-cluster").client_dir(tmp_path / "other")
    (other / "ca.pem").write_text(swarm.tls.ca_pem)  # trusting the engine, but signed by another CA
    first = next(iter(swarm.servers))
    out = docker(swarm, first, other, "version")
    assert out.returncode != 0
    # TLS 1.3: the client sends its certificate after its side of the handshake, so the refusal (the server's alert,
    # then its close) reaches the CLI with its first request; never an answer from the engine.
    assert "Server:" not in out.stdout and "error during connect" in out.stderr, out.stderr
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError, or the connection closed in the handshake
        engine(swarm, first, other, "GET", "/_ping")
    with pytest.raises(requests.exceptions.ConnectionError):  # and no client certificate at all
        requests.get(f"https://{swarm.addresses[first]}:2376/_ping", verify=str(other / "ca.pem"), timeout=10)


def test_engine_api_paths_versions_and_errors(swarm: Booted, tmp_path: Path) -> None:
    certs = swarm.tls.client_dir(tmp_path / "certs")
    first = next(iter(swarm.servers))
    ping = engine(swarm, first, certs, "HEAD", "/_ping")
    assert ping.status_code == 200 and ping.headers["Api-Version"] == "1.41" and ping.text == ""
    assert engine(swarm, first, certs, "GET", "/_ping").text == "OK"
    assert engine(swarm, first, certs, "GET", "/nodes").json() == engine(swarm, first, certs, "GET", "/v1.41/nodes").json()
    too_new = engine(swarm, first, certs, "GET", "/v1.99/version")
    assert too_new.status_code == 400 and "too new" in too_new.json()["message"]
    assert engine(swarm, first, certs, "GET", "/v1.24/swarm").json()["JoinTokens"]["Worker"].startswith("SWMTKN-1-")
    missing = engine(swarm, first, certs, "GET", "/v1.41/nodes/nosuch")
    assert (missing.status_code, missing.json()) == (404, {"message": "node nosuch not found"})
    assert engine(swarm, first, certs, "GET", "/v1.41/tasks", params={
        "filters": json.dumps({"node": {"x": True}, "desired-state": {"running": True}})}).json() == []
    bad = engine(swarm, first, certs, "GET", "/v1.41/tasks", params={"filters": json.dumps({"bogus": {"x": True}})})
    assert (bad.status_code, bad.json()) == (400, {"message": "Invalid filter 'bogus'"})
    node = engine(swarm, first, certs, "GET", f"/v1.41/nodes/{first}").json()  # by host name, as Swarm resolves
    no_version = engine(swarm, first, certs, "POST", f"/v1.41/nodes/{node['ID']}/update", json=node["Spec"])
    assert no_version.status_code == 400 and "invalid node version" in no_version.json()["message"]
    stale = engine(swarm, first, certs, "POST", f"/v1.41/nodes/{node['ID']}/update",
                   params={"version": node["Version"]["Index"] - 1}, json=node["Spec"])
    assert (stale.status_code, stale.json()) == (500, {"message": "rpc error: code = Unknown desc = update out of sequence"})
    manager = engine(swarm, first, certs, "DELETE", f"/v1.41/nodes/{node['ID']}", params={"force": "true"})
    assert manager.status_code == 400 and "must be demoted to worker before removal" in manager.json()["message"]


@needs_docker
def test_drain_then_delete_then_node_rm_is_in_the_ledger_in_order(
        swarm: Booted, demo: Any, devcloud: Devcloud, tmp_path: Path) -> None:
    certs = swarm.tls.client_dir(tmp_path / "certs")
    names = list(swarm.servers)
    first, worker = names[0], names[3]
    up = docker(swarm, first, certs, "node", "rm", worker)
    assert up.returncode != 0 and "is not down and can't be removed" in up.stderr
    drained = docker(swarm, first, certs, "node", "update", "--availability", "drain", worker)
    assert drained.returncode == 0, drained.stderr
    node = json.loads(docker(swarm, first, certs, "node", "inspect", worker).stdout)[0]
    assert node["Spec"]["Availability"] == "drain"
    demo.compute.delete_server(swarm.servers[worker])
    demo.compute.wait_for_delete(swarm.servers[worker], **W)

    def status() -> str:
        return docker(swarm, first, certs, "node", "ls", "--filter", f"name={worker}", "--format", "{{.Status}}").stdout

    until(lambda: status().strip() == "Down", f"{worker} Down once its server is deleted")
    removed = docker(swarm, first, certs, "node", "rm", worker)
    assert removed.returncode == 0, removed.stderr
    assert worker not in docker(swarm, first, certs, "node", "ls").stdout
    record = ledger(devcloud, node["ID"])
    server = ledger(devcloud, swarm.servers[worker].id)
    assert record["kind"] == "swarm_node" and record["server_id"] == swarm.servers[worker].id
    actions = [e["status"] for e in record["events"]]
    assert actions == ["active", "drain", "removed", "deleted"]
    at = {e["status"]: e["at"] for e in record["events"]}
    assert at["drain"] < server["deleted_at"] < at["removed"]
    # The provisioner's order (services/provisioner/coeapi.py): drain, `node rm --force`, then the server.
    other = names[2]
    assert docker(swarm, first, certs, "node", "update", "--availability", "drain", other).returncode == 0
    forced = docker(swarm, first, certs, "node", "rm", "--force", other)
    assert forced.returncode == 0, forced.stderr
    demo.compute.delete_server(swarm.servers[other])
    demo.compute.wait_for_delete(swarm.servers[other], **W)
    record = next(r for r in openstack.connect(cloud="cove-admin").session.get(
        f"{devcloud.url}/admin/ledger?kind=swarm_node").json()["records"] if r["server_id"] == swarm.servers[other].id)
    at = {e["status"]: e["at"] for e in record["events"]}
    assert at["drain"] < at["removed"] < ledger(devcloud, swarm.servers[other].id)["deleted_at"]
    assert docker(swarm, first, certs, "node", "ls", "-q").stdout.split().__len__() == 2


# ---------------------------------------------------------------------------------------------------- Mesos


@pytest.fixture(scope="module")
def mesos(demo: Any, loopback_net: tuple[Any, Any]) -> Booted:
    booted = boot_cluster(demo, *loopback_net, "mesos", ["master", "master", "worker", "worker"], 8080)
    for name, ip in list(booted.addresses.items())[:2]:
        until(lambda ip=ip: listening(ip, 8080) and listening(ip, 5050), f"Marathon and Mesos on {name} at {ip}")
    return booted


def test_marathon_and_the_mesos_master(mesos: Booted, demo: Any) -> None:
    names = list(mesos.servers)
    masters = [mesos.addresses[n] for n in names[:2]]
    workers = [mesos.addresses[n] for n in names[2:]]
    marathon = f"http://{masters[1]}:8080"
    assert requests.get(f"{marathon}/ping", timeout=10).text == "pong"
    info = requests.get(f"{marathon}/v2/info", timeout=10).json()
    zk = info["marathon_config"]["master"]
    assert zk.startswith("zk://") and zk.endswith("/mesos")
    assert sorted(zk.removeprefix("zk://").removesuffix("/mesos").split(",")) == sorted(f"{m}:2181" for m in masters)
    assert info["leader"] == f"{masters[0]}:8080" and info["name"] == "marathon"
    assert requests.get(f"{marathon}/v2/apps", timeout=10).json() == {"apps": []}
    created = requests.post(f"{marathon}/v2/apps", json={"id": "hello", "cmd": "sleep 1000", "instances": 1},
                            timeout=10)
    assert created.status_code == 201 and created.json()["id"] == "/hello"
    assert [a["id"] for a in requests.get(f"http://{masters[0]}:8080/v2/apps", timeout=10).json()["apps"]] == [
        "/hello"]
    assert requests.post(f"{marathon}/v2/apps", json={"id": "/hello"}, timeout=10).status_code == 409
    assert requests.get(f"http://{masters[0]}:5050/health", timeout=10).status_code == 200
    state = requests.get(f"http://{masters[1]}:5050/master/state", timeout=10).json()
    assert state["leader"] == f"master@{masters[0]}:5050"
    assert sorted(s["hostname"] for s in state["slaves"]) == sorted(workers) and state["activated_slaves"] == 2
    assert not listening(workers[0], 8080) and not listening(workers[0], 5050)
    demo.compute.delete_server(mesos.servers[names[3]])
    demo.compute.wait_for_delete(mesos.servers[names[3]], **W)
    until(lambda: [s["hostname"] for s in requests.get(f"http://{masters[0]}:5050/master/state", timeout=10)
                   .json()["slaves"]] == [workers[0]], "the deleted worker is no longer an agent")


def test_a_load_balancer_in_front_of_the_managers_serves_the_first_master_s_engine(
        swarm: Booted, demo: Any, loopback_net: tuple[Any, Any], tmp_path: Path) -> None:
    """The VIP forwards 2376 to the second manager only, yet answers with the first master's certificate and as the
    first master's engine (the provisioner names the VIP in that certificate); it stops once the member goes."""
    _, subnet = loopback_net
    names = list(swarm.servers)
    lb = demo.load_balancer.create_load_balancer(name="swarm-api", vip_subnet_id=subnet.id)

    def active(get: Any, obj_id: str) -> Any:
        return until(lambda: get(obj_id).provisioning_status == "ACTIVE" and get(obj_id), f"{obj_id} ACTIVE")

    active(demo.load_balancer.get_load_balancer, lb.id)
    listener = demo.load_balancer.create_listener(name="swarm-api", loadbalancer_id=lb.id, protocol="TCP",
                                                  protocol_port=2376)
    active(demo.load_balancer.get_load_balancer, lb.id)
    pool = demo.load_balancer.create_pool(name="swarm-api", listener_id=listener.id, protocol="TCP",
                                          lb_algorithm="ROUND_ROBIN")
    active(demo.load_balancer.get_load_balancer, lb.id)
    member = demo.load_balancer.create_member(pool, address=swarm.addresses[names[1]], protocol_port=2376,
                                              subnet_id=subnet.id)
    active(demo.load_balancer.get_load_balancer, lb.id)
    vip = demo.load_balancer.get_load_balancer(lb.id).vip_address
    until(lambda: listening(vip, 2376), f"the VIP {vip}:2376")
    pem = ssl.get_server_certificate((vip, 2376))
    cn = x509.load_pem_x509_certificate(pem.encode()).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == names[0]
    certs = swarm.tls.client_dir(tmp_path / "certs")
    info = requests.get(f"https://{vip}:2376/v1.41/info", timeout=10, verify=False,  # the VIP is not in its SANs
                        cert=(str(certs / "cert.pem"), str(certs / "key.pem"))).json()
    assert info["Name"] == names[0] and info["Swarm"]["ControlAvailable"] is True
    demo.load_balancer.delete_member(member, pool)
    until(lambda: not listening(vip, 2376), "the VIP stops serving once no member routes to a manager")
    active(demo.load_balancer.get_load_balancer, lb.id)
    demo.load_balancer.delete_load_balancer(lb.id, cascade=True)
