"""proto/labels.py: the labels a COE's driver reads and the values it accepts (pure)."""

from __future__ import annotations

import pytest

from proto.labels import KUBERNETES_LABELS, as_bool, resolved, rules_for, validate_labels


def test_defaults_and_no_labels_are_accepted() -> None:
    assert validate_labels("kubernetes", {}) == []
    defaults = {name: rule.default for name, rule in KUBERNETES_LABELS.items() if rule.default is not None}
    assert validate_labels("kubernetes", defaults) == []
    assert resolved("kubernetes", {}) == defaults
    assert resolved("kubernetes", {"kube_tag": "v1.31.0", "other": "x"})["kube_tag"] == "v1.31.0"
    assert "other" not in resolved("kubernetes", {"other": "x"})


def test_unknown_labels_pass_through() -> None:
    assert validate_labels("kubernetes", {"auto_scaling_enabled": "banana", "x": "$(reboot)"}) == []


@pytest.mark.parametrize("coe", ["kubernetes", "swarm-mode", "mesos"])
def test_auto_healing_is_a_boolean_label_of_every_coe(coe: str) -> None:
    assert validate_labels(coe, {"auto_healing_enabled": "True"}) == []
    assert len(validate_labels(coe, {"auto_healing_enabled": "banana"})) == 1


@pytest.mark.parametrize(("label", "value"), [
    ("kube_tag", "latest"), ("kube_tag", "v1.30"), ("kube_tag", "1.30.4"), ("kube_tag", "v1.23.0"),
    ("kube_tag", "v2.0.0"), ("kube_tag", "v1.30.4\n"), ("kube_tag", ""),
    ("container_runtime", "docker"), ("container_runtime", "host-docker"),
    ("cgroup_driver", "systemd "), ("cgroup_driver", "cgroupfs2"),
    ("kube_dashboard_enabled", "maybe"),
    ("calico_tag", "master"), ("flannel_tag", "v0.26"),
    ("calico_ipv4pool", "10.100.0.1/16"), ("calico_ipv4pool", "fd00::/64"), ("calico_ipv4pool", "10.0.0.0/30"),
    ("flannel_network_cidr", "banana"), ("service_cluster_ip_range", "10.254.0.0"),
    ("etcd_volume_size", "-1"), ("etcd_volume_size", "ten"), ("etcd_volume_size", "16385"),
])
def test_a_refused_value_names_the_label_the_value_and_what_is_accepted(label: str, value: str) -> None:
    problems = validate_labels("kubernetes", {label: value})
    assert len(problems) == 1
    assert label in problems[0] and repr(value) in problems[0]
    assert KUBERNETES_LABELS[label].accepted in problems[0]


@pytest.mark.parametrize(("label", "value"), [
    ("kube_tag", "v1.24.0"), ("kube_tag", "v1.31.12"), ("container_runtime", "containerd"),
    ("cgroup_driver", "cgroupfs"), ("kube_dashboard_enabled", "True"), ("kube_dashboard_enabled", "false"),
    ("calico_ipv4pool", "192.168.0.0/16"), ("etcd_volume_size", "0"), ("etcd_volume_size", "20"),
    ("etcd_volume_size", ""), ("availability_zone", "any 'zone'"),
])
def test_accepted_values(label: str, value: str) -> None:
    assert validate_labels("kubernetes", {label: value}) == []


def test_pod_and_service_networks_must_be_disjoint() -> None:
    labels = {"calico_ipv4pool": "10.254.0.0/24"}
    assert validate_labels("kubernetes", labels, network_driver="flannel") == []
    problems = validate_labels("kubernetes", labels, network_driver="calico")
    assert len(problems) == 1 and "calico_ipv4pool" in problems[0] and "service_cluster_ip_range" in problems[0]
    assert validate_labels("kubernetes", labels) == problems, "without a driver both pod networks are checked"


def test_booleans_and_unknown_coes() -> None:
    assert as_bool("True") and as_bool("yes") and not as_bool("False") and not as_bool("0")
    with pytest.raises(ValueError, match="dcos"):
        rules_for("dcos")
