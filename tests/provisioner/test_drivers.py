"""The COE drivers (pure): the Kubernetes driver's port rules, user data, health checks and its refusals.

Every rendered document is checked by cloud-init's own schema check (``cloud-init schema``) and every shell text in
it by shellcheck, both from Debian's packages that ``make venv`` unpacks into .venv/tools (no root needed). Hostile
names, labels and proxies must arrive on the node as data: the environment files are sourced by bash here and
give back exactly the inputs, and no command substitution in them runs.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proto.labels import KUBERNETES_LABELS
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import NodeContext, PortRule
from services.provisioner.drivers.kubernetes import (
    BOOTSTRAP_SCRIPT,
    CA_KEY_PATH,
    ENV_PATH,
    KUBEADM_CONFIG_PATH,
    SCRIPT_PATH,
    KubernetesDriver,
    bootstrap_token,
    ca_cert_hash,
    certificate_key,
    kube_node_name,
)
from services.provisioner.drivers.render import PROXY_ENV_PATH
from tests.provisioner.userdata_checks import cloud_init_schema, files, hostile, parse, shellcheck, source

DRIVER = KubernetesDriver()


def make_ca(cn: str = "demo") -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


CA, CA_KEY = make_ca()
CLUSTER = "5d12f6fd-a196-4bf0-ae4c-1f639a523a52"
TOKEN = bootstrap_token(b"provisioner-secret", CLUSTER)


def node(kind: str, **kw: Any) -> NodeContext:
    """``kind``: ``first`` (the master that inits), ``master`` (a master that joins) or ``worker``."""
    role = "worker" if kind == "worker" else "master"
    args: dict[str, Any] = {
        "cluster_id": CLUSTER, "cluster_name": "demo", "node_name": f"demo-5d12f6fd-{kind}-0", "role": role,
        "nodegroup": f"default-{role}", "is_first_master": kind == "first", "api_host": "10.0.0.5",
        "api_port": 6443, "ca_cert_pem": CA, "bootstrap_token": TOKEN, "network_driver": "flannel",
        "master_addresses": ("10.0.0.5", "10.0.0.6", "10.0.0.7"),
        "ca_key_pem": CA_KEY if role == "master" else None,
    }
    args.update(kw)
    return NodeContext(**args)


# --------------------------------------------------------------------------- the tools


def test_the_tools_reject_what_is_wrong(tmp_path: Path) -> None:
    """The checks below mean something: both tools refuse a bad input."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nruncmd: 5\nwrite_files:\n  - path: /x\n    bogus: 1\n")
    result = cloud_init_schema(bad)
    assert result.returncode != 0 and "bogus" in result.stdout + result.stderr
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\nrm -rf $DIR/*\n")
    assert shellcheck(script).returncode != 0


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "volumes": {"docker_volume_device": "/dev/vdb", "etcd_volume_device": "/dev/vdc"},
    "proxies": {"http_proxy": "http://proxy.example:3128", "https_proxy": "http://user:p%40ss@proxy:3128",
                "no_proxy": "169.254.169.254,.example"},
    "calico": {"network_driver": "calico", "labels": {"calico_tag": "v3.27.0", "calico_ipv4pool": "10.96.0.0/16",
                                                      "service_cluster_ip_range": "10.254.0.0/16"}},
    "lb-hostname": {"api_host": "k8s-api.example.com", "api_port": 443},
    "ipv6-address": {"api_host": "fd00::5"},
    "everything": {"docker_volume_device": "/dev/vdb", "etcd_volume_device": "/dev/vdc",
                   "http_proxy": "http://proxy:3128", "https_proxy": "http://proxy:3128", "no_proxy": ".local",
                   "network_driver": "calico", "api_host": "10.0.0.100",
                   "labels": {"kube_tag": "v1.29.8", "cgroup_driver": "cgroupfs", "kube_dashboard_enabled": "False",
                              "container_runtime": "containerd", "availability_zone": "nova",
                              "etcd_volume_size": "10"}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ["first", "master", "worker"])
def test_user_data_passes_cloud_init_schema_and_shellcheck(kind: str, variant: str, tmp_path: Path) -> None:
    options = dict(VARIANTS[variant])
    if kind == "worker":
        options.pop("etcd_volume_device", None)
    text = DRIVER.user_data(node(kind, **options))
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = cloud_init_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    written = files(parse(text))
    script = tmp_path / "bootstrap.sh"
    script.write_text(written[SCRIPT_PATH]["content"])
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout
    # the environment files are shell too: sourced by the script (node.env) or readable by bash (proxy.env)
    for path_on_node in (ENV_PATH, PROXY_ENV_PATH):
        if path_on_node in written:
            env = tmp_path / Path(path_on_node).name
            env.write_text(written[path_on_node]["content"])
            result = shellcheck(env, "--shell=bash", "--exclude=SC2034")
            assert result.returncode == 0, result.stdout
    assert parse(text)["runcmd"] == [[SCRIPT_PATH]]


# --------------------------------------------------------------------------- roles, certificates, volumes


def kubeadm_docs(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(files(parse(text))[KUBEADM_CONFIG_PATH]["content"]))


def test_the_first_master_inits_with_the_ca_key_and_uploads_the_certificates() -> None:
    text = DRIVER.user_data(node("first"))
    written = files(parse(text))
    assert written[CA_KEY_PATH]["content"] == CA_KEY and written[CA_KEY_PATH]["permissions"] == "0600"
    assert written["/etc/kubernetes/pki/ca.crt"]["content"] == CA
    assert written[KUBEADM_CONFIG_PATH]["permissions"] == "0600" and written[ENV_PATH]["permissions"] == "0600"
    init, cluster, kubelet = kubeadm_docs(text)
    assert init["kind"] == "InitConfiguration" and init["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    assert init["bootstrapTokens"][0]["token"] == TOKEN and init["bootstrapTokens"][0]["ttl"] == "0s"
    assert init["certificateKey"] == certificate_key(CA_KEY, CLUSTER)
    assert init["nodeRegistration"]["name"] == "demo-5d12f6fd-first-0"
    assert cluster["controlPlaneEndpoint"] == "10.0.0.5:6443" and cluster["kubernetesVersion"] == "v1.30.4"
    assert cluster["networking"] == {"podSubnet": "10.100.0.0/16", "serviceSubnet": "10.254.0.0/16"}
    assert cluster["apiServer"]["certSANs"] == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    # the floating IP in front of the API is in the API server's certificate, or a kubeconfig naming it fails TLS
    (_, with_fip, _) = kubeadm_docs(DRIVER.user_data(node("first", api_sans=("127.24.4.9",))))
    assert with_fip["apiServer"]["certSANs"] == ["10.0.0.5", "127.24.4.9", "10.0.0.6", "10.0.0.7"]
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd"}
    assert "kubeadm init --config \"$KUBEADM_CONFIG\" --upload-certs" in BOOTSTRAP_SCRIPT


def test_other_masters_join_the_control_plane_with_the_certificate_key_and_not_the_ca_key() -> None:
    text = DRIVER.user_data(node("master"))
    assert CA_KEY_PATH not in files(parse(text))
    assert "PRIVATE KEY" not in text
    (join,) = kubeadm_docs(text)
    assert join["kind"] == "JoinConfiguration"
    assert join["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.0.5:6443", "token": TOKEN, "caCertHashes": [ca_cert_hash(CA)]}
    assert join["controlPlane"] == {"certificateKey": certificate_key(CA_KEY, CLUSTER),
                                    "localAPIEndpoint": {"bindPort": 6443}}
    assert "FileAvailable--etc-kubernetes-pki-ca.crt" in join["nodeRegistration"]["ignorePreflightErrors"]


def test_workers_get_neither_the_ca_key_nor_the_certificate_key() -> None:
    text = DRIVER.user_data(node("worker"))
    assert "PRIVATE KEY" not in text and certificate_key(CA_KEY, CLUSTER) not in text
    (join,) = kubeadm_docs(text)
    assert "controlPlane" not in join and join["discovery"]["bootstrapToken"]["token"] == TOKEN
    with pytest.raises(ValueError, match="never receives"):
        DRIVER.user_data(node("worker", ca_key_pem=CA_KEY))


def test_the_certificate_key_comes_from_the_ca_key_not_the_token() -> None:
    key = certificate_key(CA_KEY, CLUSTER)
    assert len(key) == 64 and int(key, 16) >= 0
    assert certificate_key(CA_KEY, CLUSTER) == key, "deterministic: every render agrees"
    assert certificate_key(CA_KEY, "another-cluster") != key
    assert certificate_key(make_ca()[1], CLUSTER) != key, "the same cluster and token with another CA key differ"


def test_refusals() -> None:
    with pytest.raises(ValueError, match="needs the cluster CA's key"):
        DRIVER.user_data(node("first", ca_key_pem=None))
    with pytest.raises(ValueError, match="not the key of ca_cert_pem"):
        DRIVER.user_data(node("first", ca_key_pem=make_ca()[1]))
    with pytest.raises(ValueError, match="network driver 'cilium'"):
        DRIVER.user_data(node("worker", network_driver="cilium"))
    with pytest.raises(ValueError, match="bootstrap_token"):
        DRIVER.user_data(node("worker", bootstrap_token="abcdef.0123456789abcdef\n"))
    with pytest.raises(ValueError, match="ca_cert_pem"):
        DRIVER.user_data(node("worker", ca_cert_pem="not a certificate"))
    with pytest.raises(ValueError, match="etcd volume"):
        DRIVER.user_data(node("worker", etcd_volume_device="/dev/vdc"))
    with pytest.raises(ValueError, match="first master"):
        DRIVER.user_data(node("worker", is_first_master=True))
    with pytest.raises(ValueError, match="'dcos'"):
        driver_for("dcos")
    assert isinstance(driver_for("kubernetes"), KubernetesDriver)


@pytest.mark.parametrize(("label", "value"), [
    ("kube_tag", "latest"), ("container_runtime", "docker"), ("cgroup_driver", "cgroupv2"),
    ("kube_dashboard_enabled", "perhaps"), ("calico_tag", "$(id)"), ("flannel_tag", "main"),
    ("calico_ipv4pool", "10.0.0.0/33"), ("flannel_network_cidr", "x"), ("service_cluster_ip_range", ""),
    ("etcd_volume_size", "lots"),
])
def test_a_label_with_an_invalid_value_is_refused_by_name(label: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        DRIVER.user_data(node("first", labels={label: value}))
    message = str(info.value)
    assert label in message and repr(value) in message and KUBERNETES_LABELS[label].accepted in message


def test_labels_reach_the_node() -> None:
    labels = {"kube_tag": "v1.31.2", "cgroup_driver": "cgroupfs", "calico_tag": "v3.28.0",
              "calico_ipv4pool": "172.16.0.0/16", "service_cluster_ip_range": "10.96.0.0/12",
              "kube_dashboard_enabled": "False"}
    text = DRIVER.user_data(node("first", network_driver="calico", labels=labels))
    init, cluster, kubelet = kubeadm_docs(text)
    assert init["apiVersion"] == "kubeadm.k8s.io/v1beta4", "kubeadm 1.31 reads v1beta4"
    assert cluster["kubernetesVersion"] == "v1.31.2" and kubelet["cgroupDriver"] == "cgroupfs"
    assert cluster["networking"] == {"podSubnet": "172.16.0.0/16", "serviceSubnet": "10.96.0.0/12"}
    env = source(files(parse(text))[ENV_PATH]["content"], ["KUBE_VERSION", "KUBE_MINOR", "CNI_TAG", "POD_CIDR",
                                                          "DASHBOARD_ENABLED", "NETWORK_DRIVER"])
    assert env == {"KUBE_VERSION": "1.31.2", "KUBE_MINOR": "v1.31", "CNI_TAG": "v3.28.0",
                   "POD_CIDR": "172.16.0.0/16", "DASHBOARD_ENABLED": "false", "NETWORK_DRIVER": "calico"}
    flannel = source(files(parse(DRIVER.user_data(node("worker", labels={"flannel_network_cidr": "10.20.0.0/16"}))))
                     [ENV_PATH]["content"], ["POD_CIDR", "CNI_TAG"])
    assert flannel == {"POD_CIDR": "10.20.0.0/16", "CNI_TAG": "v0.26.1"}


def test_volumes_are_mounted_where_kubernetes_keeps_its_data() -> None:
    doc = parse(DRIVER.user_data(node("master", docker_volume_device="/dev/vdb", etcd_volume_device="/dev/vdc")))
    assert [m[:3] for m in doc["mounts"]] == [["/dev/vdb", "/var/lib/containerd", "ext4"],
                                             ["/dev/vdc", "/var/lib/etcd", "ext4"]]
    assert {f["device"] for f in doc["fs_setup"]} == {"/dev/vdb", "/dev/vdc"}
    (join,) = kubeadm_docs(DRIVER.user_data(node("master", etcd_volume_device="/dev/vdc")))
    assert "DirAvailable--var-lib-etcd" in join["nodeRegistration"]["ignorePreflightErrors"]
    doc = parse(DRIVER.user_data(node("worker", docker_volume_device="/dev/vdb")))
    assert doc["mounts"] == [["/dev/vdb", "/var/lib/containerd", "ext4",
                              "defaults,nofail,x-systemd.device-timeout=120", "0", "2"]]
    assert "mounts" not in parse(DRIVER.user_data(node("worker")))


def test_proxies_reach_containerd_and_the_kubelet() -> None:
    text = DRIVER.user_data(node("worker", http_proxy="http://proxy:3128", no_proxy="10.1.0.0/16"))
    written = files(parse(text))
    for unit in ("containerd", "kubelet"):
        assert written[f"/etc/systemd/system/{unit}.service.d/cove-proxy.conf"]["content"] == (
            f"[Service]\nEnvironmentFile={PROXY_ENV_PATH}\n")
    env = source(written[PROXY_ENV_PATH]["content"], ["HTTP_PROXY", "http_proxy", "NO_PROXY", "HTTPS_PROXY"])
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://proxy:3128" and env["HTTPS_PROXY"] == ""
    assert env["NO_PROXY"].split(",")[:3] == ["10.1.0.0/16", "localhost", "127.0.0.1"]
    assert {"10.0.0.5", "10.100.0.0/16", "10.254.0.0/16"} <= set(env["NO_PROXY"].split(","))
    assert PROXY_ENV_PATH not in files(parse(DRIVER.user_data(node("worker"))))


def test_the_api_endpoint_for_a_host_name_and_an_ipv6_address() -> None:
    (join,) = kubeadm_docs(DRIVER.user_data(node("worker", api_host="k8s.example.com", api_port=443)))
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "k8s.example.com:443"
    (join,) = kubeadm_docs(DRIVER.user_data(node("worker", api_host="fd00::5")))
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "[fd00::5]:6443"


def test_the_helpers() -> None:
    spki = x509.load_pem_x509_certificate(CA.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ca_cert_hash(CA) == "sha256:" + hashlib.sha256(spki).hexdigest()
    token = bootstrap_token(b"s", CLUSTER)
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    assert token == bootstrap_token(b"s", CLUSTER) != bootstrap_token(b"t", CLUSTER)
    assert kube_node_name("My_Cluster.x-MASTER-0") == "my-cluster-x-master-0"
    assert kube_node_name("a" * 80) == "a" * 63
    with pytest.raises(ValueError):
        kube_node_name("$()")


# --------------------------------------------------------------------------- hostile input


def test_hostile_names_and_proxies_arrive_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = hostile(marker)
    n = node("first", cluster_name=evil, node_name=f"demo{evil}", nodegroup=evil, http_proxy=evil,
             https_proxy=evil, no_proxy=evil, labels={"availability_zone": evil, "unknown": evil})
    text = DRIVER.user_data(n)
    doc = parse(text)  # valid YAML, whatever the values
    written = files(doc)
    holders = {path for path, f in written.items() if "$(touch" in f["content"] or "`touch" in f["content"]}
    assert holders == {ENV_PATH, PROXY_ENV_PATH}, "the hostile text is only in the two environment files"
    assert written[SCRIPT_PATH]["content"] == BOOTSTRAP_SCRIPT, "the script is a constant"
    assert doc["hostname"] == kube_node_name(f"demo{evil}") and "$(" not in str(kubeadm_docs(text))
    env = source(written[ENV_PATH]["content"], ["COVE_CLUSTER_NAME", "COVE_NODE_NAME", "COVE_NODEGROUP",
                                                 "HTTP_PROXY", "HTTPS_PROXY", "KUBE_NODE_NAME"], tmp_path)
    assert env["COVE_CLUSTER_NAME"] == evil and env["COVE_NODE_NAME"] == f"demo{evil}"
    assert env["COVE_NODEGROUP"] == evil and env["HTTP_PROXY"] == evil and env["HTTPS_PROXY"] == evil
    assert env["KUBE_NODE_NAME"] == kube_node_name(f"demo{evil}")
    proxy = source(written[PROXY_ENV_PATH]["content"], ["HTTP_PROXY", "https_proxy", "NO_PROXY"], tmp_path)
    assert proxy["HTTP_PROXY"] == proxy["https_proxy"] == evil
    assert proxy["NO_PROXY"].startswith(evil.split(",")[0])
    assert not marker.exists(), "no command substitution ran"
    # the whole document still passes cloud-init's schema check and the env file shellcheck
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = cloud_init_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hostile_label_values_are_refused_or_never_rendered(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = hostile(marker)
    for label in ("kube_tag", "calico_tag", "flannel_tag", "cgroup_driver", "calico_ipv4pool"):
        with pytest.raises(ValueError, match=label):
            DRIVER.user_data(node("worker", labels={label: evil}))
    text = DRIVER.user_data(node("worker", labels={"availability_zone": evil, "anything": evil}))
    assert "touch" not in text and "pwned" not in text and not marker.exists()


def test_a_nul_in_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        DRIVER.user_data(node("worker", cluster_name="a\0b"))


# --------------------------------------------------------------------------- port rules and health


def rules(role: str, driver: str | None, api_port: int = 6443) -> set[tuple[Any, ...]]:
    return {(r.protocol, r.port_min, r.port_max, r.source)
            for r in DRIVER.port_rules(role, api_port=api_port, network_driver=driver)}  # type: ignore[arg-type]


def test_port_rules_per_role_and_network_driver() -> None:
    master = {("tcp", 6443, 6443, "allowed"), ("tcp", 6443, 6443, "cluster"), ("tcp", 22, 22, "allowed"),
              ("tcp", 2379, 2380, "cluster"), ("tcp", 10250, 10250, "cluster"), ("tcp", 10257, 10257, "cluster"),
              ("tcp", 10259, 10259, "cluster")}
    worker = {("tcp", 22, 22, "allowed"), ("tcp", 10250, 10250, "cluster"), ("tcp", 30000, 32767, "allowed")}
    flannel = {("udp", 8472, 8472, "cluster")}
    calico = {("tcp", 179, 179, "cluster"), ("ipip", None, None, "cluster")}
    assert rules("master", "flannel") == master | flannel
    assert rules("master", None) == master | flannel, "flannel is the default network driver"
    assert rules("master", "calico") == master | calico
    assert rules("worker", "flannel") == worker | flannel
    assert rules("worker", "calico") == worker | calico
    assert ("tcp", 8443, 8443, "allowed") in rules("master", "calico", api_port=8443)
    assert all(isinstance(r, PortRule) and r.description
               for r in DRIVER.port_rules("master", api_port=6443, network_driver="calico"))
    with pytest.raises(ValueError, match="cilium"):
        DRIVER.port_rules("worker", api_port=6443, network_driver="cilium")
    with pytest.raises(ValueError):
        DRIVER.port_rules("worker", api_port=70000, network_driver=None)


def test_health_checks_and_cluster_config() -> None:
    checks = {(c.name, c.role): c for c in DRIVER.health_checks()}
    assert checks[("kube-apiserver", "cluster")].path == "/healthz"
    assert checks[("kubelet", "worker")].port == checks[("kubelet", "master")].port == 10248
    assert checks[("etcd", "master")].path == "/health" and ("etcd", "worker") not in checks
    assert "api_address" in DRIVER.cluster_config() and "CA" in DRIVER.cluster_config()
    assert DRIVER.api_address("10.0.0.5", 6443) == "https://10.0.0.5:6443"
    assert DRIVER.api_address("fd00::5", 6443) == "https://[fd00::5]:6443"
    assert DRIVER.load_balancer_ports(6443) == [6443] and not DRIVER.needs_server_certificate("master")


def test_contexts_are_plain_data() -> None:
    n = node("worker")
    assert replace(n, node_name="other").node_name == "other" and n.ca_key_pem is None
