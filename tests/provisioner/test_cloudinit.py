"""Unit tests of the pure parts: cloud-init rendering and the reconcile decisions."""

from __future__ import annotations

import datetime
import hashlib
import re

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.provisioner import reconcile as rc
from services.provisioner.cloudinit import NodeBoot, bootstrap_token, ca_cert_hash, render_user_data


def make_ca() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "demo")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA = make_ca()


def boot(role: str, **kw: object) -> NodeBoot:
    args: dict[str, object] = {
        "cluster_id": "5d12f6fd-a196-4bf0-ae4c-1f639a523a52", "cluster_name": "demo", "node_name": f"demo-5d12f6fd-{role}-0",
        "role": role, "ca_cert_pem": CA, "api_address": "10.0.0.5:6443", "bootstrap_token": "abcdef.0123456789abcdef",
    }
    args.update(kw)
    return NodeBoot(**args)  # type: ignore[arg-type]


def test_master_user_data_is_cloud_config_with_the_ca_and_kubeadm_init() -> None:
    text = render_user_data(boot("master", labels={"kube_tag": "v1.29.1"}))
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    assert files["/etc/kubernetes/pki/ca.crt"]["content"].strip() == CA.strip()
    env = files["/etc/cove/node.env"]["content"]
    assert 'COVE_ROLE="master"' in env and 'KUBE_API_ADDRESS="10.0.0.5:6443"' in env
    command = doc["runcmd"][0][2]
    assert command.startswith("kubeadm init --control-plane-endpoint 10.0.0.5:6443")
    assert "--kubernetes-version v1.29.1" in command and "--token abcdef.0123456789abcdef" in command
    assert doc["hostname"] == "demo-5d12f6fd-master-0"


def test_worker_joins_with_the_ca_public_key_pin() -> None:
    doc = yaml.safe_load(render_user_data(boot("worker")))
    command = doc["runcmd"][0][2]
    pin = ca_cert_hash(CA)
    assert command.startswith("kubeadm join 10.0.0.5:6443 --token abcdef.0123456789abcdef")
    assert f"--discovery-token-ca-cert-hash {pin}" in command
    # the pin is SHA-256 over the DER SubjectPublicKeyInfo, as kubeadm computes it
    spki = x509.load_pem_x509_certificate(CA.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pin == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_rendering_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="role"):
        render_user_data(boot("etcd"))
    with pytest.raises(ValueError, match="PEM"):
        render_user_data(boot("master", ca_cert_pem="not a cert"))


def test_bootstrap_token_is_kubeadm_shaped_stable_and_secret_dependent() -> None:
    t1 = bootstrap_token(b"s1", "cluster-a")
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t1)
    assert bootstrap_token(b"s1", "cluster-a") == t1
    assert bootstrap_token(b"s2", "cluster-a") != t1
    assert bootstrap_token(b"s1", "cluster-b") != t1


# ------------------------------------------------------------------------------------------ reconcile decisions

CID = "5d12f6fd-a196-4bf0-ae4c-1f639a523a52"


def test_names() -> None:
    prefix = rc.cluster_prefix("my cluster", CID)
    assert prefix == "my-cluster-5d12f6fd"
    nodes = rc.desired_nodes(prefix, 1, 2)
    assert [n.name for n in nodes] == [
        "my-cluster-5d12f6fd-master-0", "my-cluster-5d12f6fd-node-0", "my-cluster-5d12f6fd-node-1",
    ]
    assert rc.node_metadata(CID, nodes[1]) == {
        "cove_cluster_id": CID, "cove_role": "worker", "cove_node": "my-cluster-5d12f6fd-node-0",
    }
    assert re.match(rc.server_name_filter("a.b-5d12f6fd"), "a.b-5d12f6fd-node-0")
    assert not re.match(rc.server_name_filter("a.b-5d12f6fd"), "axb-5d12f6fd-node-0")


def sv(name: str, status: str, sid: str | None = None, fault: str | None = None) -> rc.ServerView:
    role = "master" if "-master-" in name else "worker"
    return rc.ServerView(id=sid or f"id-{name}", name=name, status=status, fault=fault,
                         metadata={"cove_cluster_id": CID, "cove_role": role})


def test_plan_create_creates_only_what_is_missing_and_records_unknown_servers() -> None:
    desired = rc.desired_nodes("c-1", 1, 2)
    servers = [sv("c-1-master-0", "BUILD")]  # created just before a crash: no NodeCreated yet
    plan = rc.plan_create(desired, servers, {})
    assert [n.name for n in plan.to_create] == ["c-1-node-0", "c-1-node-1"]
    assert [s.name for s in plan.to_record] == ["c-1-master-0"]
    assert not plan.complete and not plan.failed


def test_plan_create_never_duplicates_a_node_even_if_the_cloud_has_two() -> None:
    desired = rc.desired_nodes("c-1", 1, 0)
    servers = [sv("c-1-master-0", "ACTIVE", "b"), sv("c-1-master-0", "ACTIVE", "a")]
    plan = rc.plan_create(desired, servers, {})
    assert plan.to_create == [] and [s.id for s in plan.to_record] == ["a"]


def test_plan_create_active_failed_and_complete() -> None:
    desired = rc.desired_nodes("c-1", 1, 1)
    known = {
        "id-c-1-master-0": rc.KnownNode("id-c-1-master-0", "c-1-master-0", "master", rc.NODE_ACTIVE),
        "id-c-1-node-0": rc.KnownNode("id-c-1-node-0", "c-1-node-0", "worker", rc.NODE_CREATED),
    }
    ok = rc.plan_create(desired, [sv("c-1-master-0", "ACTIVE"), sv("c-1-node-0", "ACTIVE")], known)
    assert [s.name for s in ok.became_active] == ["c-1-node-0"] and ok.complete
    bad = rc.plan_create(desired, [sv("c-1-master-0", "ACTIVE"), sv("c-1-node-0", "ERROR", fault="No valid host")],
                         known)
    assert [s.name for s in bad.failed] == ["c-1-node-0"] and not bad.complete
    assert rc.node_failure_reason("c-1-node-0", "No valid host") == "Node c-1-node-0 failed: No valid host"


def test_owned_servers_checks_metadata() -> None:
    mine = sv("c-1-master-0", "ACTIVE")
    other = rc.ServerView(id="x", name="c-1-master-0", status="ACTIVE", metadata={"cove_cluster_id": "other"})
    assert rc.owned_servers([mine, other], CID) == [mine]


def test_plan_delete() -> None:
    known = {
        "a": rc.KnownNode("a", "c-1-master-0", "master", rc.NODE_ACTIVE),
        "b": rc.KnownNode("b", "c-1-node-0", "worker", rc.NODE_ACTIVE),
        "c": rc.KnownNode("c", "c-1-node-1", "worker", rc.NODE_DELETED),
    }
    plan = rc.plan_delete([sv("c-1-master-0", "ACTIVE", "a")], known, requested=set())
    assert [s.id for s in plan.to_delete] == ["a"]
    assert [n.server_id for n in plan.gone] == ["b"]
    assert plan.servers_left == 1
    again = rc.plan_delete([sv("c-1-master-0", "ACTIVE", "a")], known, requested={"a"})
    assert again.to_delete == []


def test_addresses_and_api_address() -> None:
    raw = {"c-1-net": [{"addr": "10.0.0.5", "version": 4}, {"addr": "172.24.4.9", "version": 4}]}
    assert rc.addresses_of(raw) == {"c-1-net": ["10.0.0.5", "172.24.4.9"]}
    assert rc.api_address("10.0.0.5", None) == "https://10.0.0.5:6443"
    assert rc.api_address(None, 6443) == ""
