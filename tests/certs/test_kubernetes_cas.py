"""The Kubernetes driver places the cluster's etcd and front-proxy CAs where kubeadm looks for them, on the first
master only, and binds the groups the certs service puts in users' certificates (pure rendering, real CAs from
the certs service's own ``generate_ca``, checked by cloud-init's schema check)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.certs import ca
from services.provisioner.drivers import kubernetes
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.kubernetes import KubernetesDriver, bootstrap_token
from tests.provisioner.userdata_checks import assert_valid_cloud_config, files, parse

CLUSTER = "5d12f6fd-a196-4bf0-ae4c-1f639a523a52"
CA, CA_KEY = ca.generate_ca("demo")
ETCD, ETCD_KEY = ca.generate_ca("demo-etcd")
PROXY, PROXY_KEY = ca.generate_ca("demo-front-proxy")


def node(kind: str, **kw: Any) -> NodeContext:
    role = "worker" if kind == "worker" else "master"
    args: dict[str, Any] = {
        "cluster_id": CLUSTER, "cluster_name": "demo", "node_name": f"demo-{kind}-0", "role": role,
        "nodegroup": f"default-{role}", "is_first_master": kind == "first", "api_host": "10.0.0.5",
        "api_port": 6443, "ca_cert_pem": CA, "bootstrap_token": bootstrap_token(b"s", CLUSTER),
        "network_driver": "flannel", "ca_key_pem": CA_KEY.decode() if role == "master" else None,
    }
    if kind == "first":
        args.update(etcd_ca_cert_pem=ETCD, etcd_ca_key_pem=ETCD_KEY.decode(), front_proxy_ca_cert_pem=PROXY,
                     front_proxy_ca_key_pem=PROXY_KEY.decode())
    args.update(kw)
    return NodeContext(**args)


def test_first_master_gets_the_three_cas_where_kubeadm_expects_them(tmp_path: Path) -> None:
    text = KubernetesDriver().user_data(node("first"))
    assert_valid_cloud_config(text, tmp_path)
    written = files(parse(text))
    expected = {
        "/etc/kubernetes/pki/ca.crt": (CA, "0644"),
        "/etc/kubernetes/pki/ca.key": (CA_KEY.decode(), "0600"),
        "/etc/kubernetes/pki/etcd/ca.crt": (ETCD, "0644"),
        "/etc/kubernetes/pki/etcd/ca.key": (ETCD_KEY.decode(), "0600"),
        "/etc/kubernetes/pki/front-proxy-ca.crt": (PROXY, "0644"),
        "/etc/kubernetes/pki/front-proxy-ca.key": (PROXY_KEY.decode(), "0600"),
    }
    for path, (content, mode) in expected.items():
        assert written[path]["content"] == content and written[path]["permissions"] == mode, path


def test_the_first_master_binds_the_user_groups_after_kubeadm_init() -> None:
    written = files(parse(KubernetesDriver().user_data(node("first"))))
    docs = list(yaml.safe_load_all(written[kubernetes.RBAC_PATH]["content"]))
    bound = {(d["subjects"][0]["kind"], d["subjects"][0]["name"]): d["roleRef"]["name"] for d in docs}
    # the groups are the ones the certs service writes into O; the provisioner's health check reads the nodes
    assert bound == {("Group", ca.ADMIN_GROUP): "cluster-admin", ("Group", ca.VIEW_GROUP): "view",
                     ("User", kubernetes.HEALTH_USER): kubernetes.HEALTH_ROLE}
    assert all(d["kind"] == "ClusterRoleBinding" for d in docs)
    script = kubernetes.BOOTSTRAP_SCRIPT
    init = script[script.index("init_control_plane() {"):]
    assert init.index("kubeadm init") < init.index(f"apply -f {kubernetes.RBAC_PATH}") < init.index("install_cni")


@pytest.mark.parametrize("kind", ["master", "worker"])
def test_no_other_node_gets_the_etcd_or_front_proxy_ca(kind: str) -> None:
    written = files(parse(KubernetesDriver().user_data(node(kind))))
    assert not any("etcd/ca" in p or "front-proxy-ca" in p for p in written)
    assert kubernetes.RBAC_PATH not in written
    with pytest.raises(ValueError, match="only the first master"):
        KubernetesDriver().user_data(node(kind, etcd_ca_cert_pem=ETCD, etcd_ca_key_pem=ETCD_KEY.decode()))


def test_a_cluster_from_before_has_only_the_cluster_ca_and_kubeadm_makes_the_others() -> None:
    old = replace(node("first"), etcd_ca_cert_pem=None, etcd_ca_key_pem=None, front_proxy_ca_cert_pem=None,
                  front_proxy_ca_key_pem=None)
    written = files(parse(KubernetesDriver().user_data(old)))
    assert "/etc/kubernetes/pki/ca.key" in written
    assert not any("etcd/ca" in p or "front-proxy-ca" in p for p in written)
    with pytest.raises(ValueError, match="both its certificate and its key"):
        KubernetesDriver().user_data(replace(old, etcd_ca_cert_pem=ETCD))
