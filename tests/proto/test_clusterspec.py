"""The resolved cluster (proto/clusterspec.py): the one place where "the request's value, else the template's,
else a default" is decided."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from proto.clusterspec import DEFAULT_FLAVOR, SpecError, resolve_cluster, spec_of
from proto.events import ClusterCreateRequested, ClusterTemplate
from proto.nodegroups import DEFAULT_MASTER, DEFAULT_WORKER


def template(**kw: object) -> ClusterTemplate:
    base: dict[str, object] = {"uuid": "t", "project_id": "p", "user_id": "u", "image_id": "fedora-coreos",
                               "created_at": datetime.now(UTC), "labels": {"a": "1", "b": "2"}}
    return ClusterTemplate(**{**base, **kw})  # type: ignore[arg-type]


def test_flavors_request_then_template_then_default_and_the_groups_agree() -> None:
    spec = resolve_cluster(template(), master_count=3, node_count=2)
    assert (spec.master_flavor_id, spec.flavor_id) == (DEFAULT_FLAVOR, DEFAULT_FLAVOR)
    spec = resolve_cluster(template(flavor_id="m1.large"))
    assert (spec.master_flavor_id, spec.flavor_id) == (DEFAULT_FLAVOR, "m1.large"), \
        "a template without a master flavor does not give masters the worker flavor (Magnum's default)"
    spec = resolve_cluster(template(flavor_id="m1.large", master_flavor_id="m1.xlarge"), master_count=3,
                           node_count=5, flavor_id="m1.medium")
    assert (spec.master_flavor_id, spec.flavor_id) == ("m1.xlarge", "m1.medium")
    master, worker = spec.nodegroups
    assert (master.name, master.role, master.node_count, master.flavor_id, master.image_id) == (
        DEFAULT_MASTER, "master", 3, "m1.xlarge", "fedora-coreos")
    assert (worker.name, worker.role, worker.node_count, worker.flavor_id) == (DEFAULT_WORKER, "worker", 5, "m1.medium")
    assert spec.nodegroup(DEFAULT_WORKER) is worker and spec.nodegroup("nope") is None


def test_labels_follow_merge_labels_exactly() -> None:
    t = template()
    assert resolve_cluster(t).labels == {"a": "1", "b": "2"}, "no labels: the template's"
    assert resolve_cluster(t, labels={"b": "3"}).labels == {"b": "3"}, "merge_labels false: replaced"
    assert resolve_cluster(t, labels={"b": "3", "c": "4"}, merge_labels=True).labels == {"a": "1", "b": "3", "c": "4"}
    assert all(g.labels == {"b": "3"} for g in resolve_cluster(t, labels={"b": "3"}).nodegroups)


def test_options_from_labels_and_the_template() -> None:
    t = template(labels={"master_lb_allowed_cidrs": "192.0.2.0/24, 198.51.100.7/32", "etcd_volume_size": "5",
                         "fixed_subnet_cidr": "10.9.0.0/24", "availability_zone": "az1"},
                 master_lb_enabled=True, floating_ip_enabled=False, docker_volume_size=10, apiserver_port=8443)
    spec = resolve_cluster(t)
    assert spec.master_lb_allowed_cidrs == ["192.0.2.0/24", "198.51.100.7/32"]
    assert spec.etcd_volume_size == 5 and spec.docker_volume_size == 10
    assert spec.fixed_subnet_cidr == "10.9.0.0/24" and spec.availability_zone == "az1"
    assert spec.master_lb_enabled and not spec.floating_ip_enabled and not spec.master_lb_floating_ip_enabled
    assert spec.apiserver_port == 8443
    assert all(g.docker_volume_size == 10 for g in spec.nodegroups)
    over = resolve_cluster(t, floating_ip_enabled=True, master_lb_enabled=False, docker_volume_size=20)
    assert over.floating_ip_enabled and over.master_lb_floating_ip_enabled and not over.master_lb_enabled
    assert over.docker_volume_size == 20
    assert resolve_cluster(template()).apiserver_port == 6443


@pytest.mark.parametrize(("labels", "fragment"), [
    ({"master_lb_allowed_cidrs": "192.0.2.0/24,not-a-cidr"}, "Invalid CIDR 'not-a-cidr'"),
    ({"etcd_volume_size": "lots"}, "etcd_volume_size"),
    ({"etcd_volume_size": "-1"}, "etcd_volume_size"),
    ({"master_lb_floating_ip_enabled": "maybe"}, "master_lb_floating_ip_enabled"),
    ({"fixed_subnet_cidr": "10.0.0.0/24,10.1.0.0/24"}, "takes one CIDR"),
])
def test_bad_option_labels_are_refused(labels: dict[str, str], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        resolve_cluster(template(labels=labels))


def test_an_old_event_without_a_spec_resolves_as_the_api_would_now() -> None:
    t = template(master_flavor_id="m1.xlarge")
    old = ClusterCreateRequested(uuid="c", name="n", project_id="p", user_id="u", template=t, master_count=1,
                                 node_count=2, labels={"z": "9"}, merge_labels=True)
    assert old.spec is None
    new = msgspec.structs.replace(old, spec=resolve_cluster(t, master_count=1, node_count=2, labels={"z": "9"},
                                                           merge_labels=True))
    assert spec_of(old) == spec_of(new) == new.spec
    decoded = msgspec.json.decode(msgspec.json.encode(new), type=ClusterCreateRequested)
    assert decoded.spec == new.spec
