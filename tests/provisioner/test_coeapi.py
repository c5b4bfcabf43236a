"""The provisioner's Swarm drain (services/provisioner/coeapi.py) against the devcloud's Swarm stand-in: a worker is
drained and removed, a manager is demoted in the same update and removed (the swarm refuses to remove a manager),
a node the swarm does not know is left alone, and a client certificate of another CA is an error, not a drain."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openstack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.certs import ca
from services.provisioner import certificates, coeapi
from tests.conftest import Devcloud
from tests.devcloud.test_coe_endpoints import (  # noqa: F401  (module fixtures)
    Booted,
    TlsFiles,
    boot_cluster,
    demo,
    listening,
    new_ca,
    remove_network,
    until,
)

pytestmark = pytest.mark.integration


def provisioner_client(tls: TlsFiles) -> certificates.NodeTLS:
    """The provisioner's client certificate, made as ``certificates.node_tls`` makes it and signed as the certs
    service's sign_node signs it."""
    key_pem, csr_pem, sans = certificates.node_csr(coeapi.CLIENT_NAME, [])
    cert = ca.issue(tls.ca_pem, tls.ca_key, csr_pem, subject=ca.node_subject(coeapi.CLIENT_NAME),
                    sans=ca.node_sans(sans), server=True)
    return certificates.NodeTLS(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


@pytest.fixture(scope="module")
def drain_net(demo: Any) -> Iterator[tuple[Any, Any]]:  # noqa: F811
    """A network of this module's own, removed with its servers afterwards (the devcloud is the session's)."""
    net = demo.network.create_network(name="coeapi-drain")
    subnet = demo.network.create_subnet(network_id=net.id, cidr="127.77.9.0/24", ip_version=4, name="coeapi-drain")
    yield net, subnet
    remove_network(demo, net)


@pytest.fixture(scope="module")
def swarm(demo: Any, drain_net: tuple[Any, Any]) -> Booted:  # noqa: F811
    booted = boot_cluster(demo, *drain_net, "swarm-mode", ["master", "master", "master", "worker"], 2376)
    for name, ip in booted.addresses.items():
        until(lambda ip=ip: listening(ip, 2376), f"the engine of {name} at {ip}:2376")
    return booted


def endpoint(booted: Booted, client: certificates.NodeTLS) -> coeapi.Endpoint:
    first = next(iter(booted.addresses))
    return coeapi.Endpoint(booted.addresses[first], 2376, booted.tls.ca_pem, client)


def statuses(devcloud: Devcloud, name: str) -> list[str]:
    """The devcloud's ledger of the Swarm node ``name``: active, each availability change, removed."""
    admin = openstack.connect(cloud="cove-admin")
    records = admin.session.get(f"{devcloud.url}/admin/ledger", params={"kind": "swarm_node"}).json()["records"]
    node = next(r for r in records if r["name"] == name)
    return [e["status"] for e in node["events"]]


async def test_a_worker_and_a_manager_are_drained_and_removed(swarm: Booted, devcloud: Devcloud) -> None:
    ep = endpoint(swarm, provisioner_client(swarm.tls))
    names = list(swarm.addresses)
    worker, manager = names[3], names[2]
    assert await coeapi.drain_swarm_node(ep, worker, timeout=5) is True
    assert await coeapi.drain_swarm_node(ep, manager, timeout=5) is True
    for name in (worker, manager):
        seen = statuses(devcloud, name)
        assert "drain" in seen and seen[-1] in ("removed", "deleted"), (name, seen)
    # removed: the swarm no longer knows them, so a second drain has nothing to do
    assert await coeapi.drain_swarm_node(ep, worker, timeout=5) is False
    assert await coeapi.drain_swarm_node(ep, "no-such-node", timeout=5) is False


async def test_a_client_certificate_of_another_ca_is_an_error(swarm: Booted) -> None:
    other = provisioner_client(new_ca("another-cluster"))
    with pytest.raises(coeapi.DrainError):
        await coeapi.drain_swarm_node(endpoint(swarm, other), next(iter(swarm.addresses)), timeout=1)


def test_only_the_networks_configured_are_reached() -> None:
    assert coeapi.reachable("127.24.4.7", ["127.0.0.0/8"])
    assert not coeapi.reachable("10.0.0.5", ["127.0.0.0/8"])
    assert coeapi.reachable("10.0.0.5", ["127.0.0.0/8", "10.0.0.0/24"])
    assert not coeapi.reachable("swarm.example.org", ["0.0.0.0/0"])


def test_the_provisioner_s_key_and_csr_name_what_it_asks() -> None:
    key_pem, csr_pem, sans = certificates.node_csr("node-1", ["10.0.0.5", "127.24.4.9", "10.0.0.5"])
    assert sans == ["node-1", "10.0.0.5", "127.24.4.9", "localhost", "127.0.0.1"]
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and csr.is_signature_valid
    assert csr.public_key() == key.public_key()
