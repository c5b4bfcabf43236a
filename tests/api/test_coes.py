"""Swarm and Mesos beside Kubernetes at the API (issue 12): the COEs, server types, network and volume drivers and
image distros Magnum accepted (refusals in Magnum's words), each COE's labels and default API port, and the site
add-on names the API checks with the provisioner over NATS request-reply.

The pure rules are tested directly; the HTTP tests run the API in-process against a real nats-server, PostgreSQL
and the devcloud (tests/api/conftest.py), whose public images are ``ubuntu-22.04`` (os_distro ubuntu) and
``fedora-coreos``. The provisioner's side of the add-on RPC is its real handler (``Catalog.answer`` over the shipped
``deploy/addons/``), served on the session's NATS by the test so it can also be taken away.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.subscription import Subscription

from proto import subjects
from proto.clusterspec import DEFAULT_API_PORTS, resolve_cluster
from proto.events import ClusterTemplate
from proto.labels import COE_NETWORK_DRIVERS, DEFAULT_NETWORK_DRIVERS, RULES, validate_labels
from proto.requests import Message
from services.api import validation
from services.api.addons import ADDONS, AddonCatalogClient
from services.api.errors import ApiError
from services.provisioner.drivers import DRIVERS
from services.provisioner.drivers.addons import DEFAULT_DIR, Catalog
from services.runtime import rpc
from tests.api.conftest import RunningApi, user_token
from tests.api.test_api_integration import Client

LATEST = {"OpenStack-API-Version": "container-infra latest"}
UBUNTU, FEDORA = "ubuntu-22.04", "fedora-coreos"


def _fields(**body: Any) -> dict[str, Any]:
    return validation.template_fields({"image_id": UBUNTU, **body})


def _refused(**body: Any) -> str:
    with pytest.raises(ApiError) as info:
        _fields(**body)
    assert info.value.status == 400
    return info.value.detail


# ----------------------------------------------------------------------------- pure rules


def test_each_coe_is_accepted_with_its_value_kept_and_its_default_network_driver() -> None:
    for coe, driver in (("kubernetes", "flannel"), ("swarm-mode", "docker"), ("swarm", "docker"),
                        ("mesos", "docker")):
        out = _fields(coe=coe)
        assert out["coe"] == coe and out["network_driver"] == driver and out["server_type"] == "vm"
    assert _fields(coe="kubernetes", network_driver="calico")["network_driver"] == "calico"
    assert _fields(coe="kubernetes", volume_driver="cinder")["volume_driver"] == "cinder"
    for coe in ("swarm-mode", "swarm", "mesos"):
        assert _fields(coe=coe, volume_driver="rexray", network_driver="docker")["volume_driver"] == "rexray"
    assert "Value should be one of: kubernetes, swarm-mode, swarm, mesos" in _refused(coe="dcos")


@pytest.mark.parametrize(("body", "detail"), [
    ({"coe": "kubernetes", "network_driver": "docker"},
     "Network driver type docker is not supported, expecting a flannel/calico/unspecified network driver."),
    ({"coe": "swarm-mode", "network_driver": "flannel"},
     "Network driver type flannel is not supported, expecting a docker/unspecified network driver."),
    ({"coe": "swarm", "network_driver": "calico"},
     "Network driver type calico is not supported, expecting a docker/unspecified network driver."),
    ({"coe": "mesos", "network_driver": "flannel"},
     "Network driver type flannel is not supported, expecting a docker/unspecified network driver."),
    ({"coe": "kubernetes", "volume_driver": "rexray"},
     "Volume driver type rexray is not supported, expecting a cinder/unspecified volume driver."),
    ({"coe": "swarm-mode", "volume_driver": "cinder"},
     "Volume driver type cinder is not supported, expecting a rexray/unspecified volume driver."),
    ({"coe": "mesos", "volume_driver": "cinder"},
     "Volume driver type cinder is not supported, expecting a rexray/unspecified volume driver."),
    ({"coe": "mesos", "server_type": "container"},
     "Server type container is not supported, expecting a vm/bm/unspecified server type."),
])
def test_refusals_in_magnums_words(body: dict[str, Any], detail: str) -> None:
    assert _refused(**body) == detail


def test_cluster_types_are_what_the_drivers_provide() -> None:
    provided = {
        ("vm", "ubuntu", "kubernetes"), ("vm", "debian", "kubernetes"), ("vm", "fedora-coreos", "kubernetes"),
        ("bm", "ubuntu", "kubernetes"), ("bm", "debian", "kubernetes"), ("bm", "fedora-coreos", "kubernetes"),
        ("vm", "ubuntu", "swarm-mode"), ("vm", "debian", "swarm-mode"),
        ("vm", "ubuntu", "swarm"), ("vm", "debian", "swarm"),
        ("vm", "ubuntu", "mesos"),
    }
    assert validation.CLUSTER_TYPES == provided
    for triple in provided:
        validation.check_cluster_type(*triple)
    for server_type, os, coe in (("vm", "debian", "mesos"), ("bm", "ubuntu", "swarm-mode"), ("bm", "ubuntu", "mesos"),
                                 ("vm", "fedora-coreos", "swarm"), ("vm", "centos", "kubernetes"),
                                 ("vm", None, "kubernetes")):
        with pytest.raises(ApiError) as info:
            validation.check_cluster_type(server_type, os, coe)
        assert info.value.detail == f"Cluster type ({server_type}, {os}, {coe}) not supported."
    # A template's image and its cluster_distro (when the user names another) are both checked.
    validation.check_template_type("vm", "mesos", "ubuntu", "ubuntu")
    with pytest.raises(ApiError, match=r"Cluster type \(vm, debian, mesos\) not supported."):
        validation.check_template_type("vm", "mesos", "ubuntu", "debian")
    with pytest.raises(ApiError, match="doesn't contain os_distro field"):
        validation.image_distro({"name": "x"}, "x")


def test_the_api_and_the_drivers_agree_on_coes_network_drivers_and_api_ports() -> None:
    assert set(validation.COES) == set(COE_NETWORK_DRIVERS) == set(DEFAULT_NETWORK_DRIVERS) == set(RULES)
    assert set(validation.COES) == set(DEFAULT_API_PORTS) == set(validation.VOLUME_DRIVERS) == set(validation.DISTROS)
    assert DEFAULT_API_PORTS == {"kubernetes": 6443, "swarm-mode": 2376, "swarm": 2376, "mesos": 8080}
    assert "kubernetes" in DRIVERS
    for coe, driver in DRIVERS.items():
        assert coe in validation.COES, f"the API refuses {coe}, which a driver builds"
        assert driver().default_api_port == DEFAULT_API_PORTS[coe], coe


def _template(coe: str, **kw: Any) -> ClusterTemplate:
    return ClusterTemplate(uuid="t", project_id="p", user_id="u", name="t", coe=coe, image_id=UBUNTU,
                           created_at=datetime.now(UTC), **kw)


def test_the_resolved_spec_has_each_coes_default_api_port_unless_the_template_names_one() -> None:
    for coe, port in DEFAULT_API_PORTS.items():
        assert resolve_cluster(_template(coe)).apiserver_port == port
        assert resolve_cluster(_template(coe, apiserver_port=9443)).apiserver_port == 9443


@pytest.mark.parametrize(("coe", "label", "value"), [
    ("swarm-mode", "swarm_strategy", "binpack"), ("swarm", "swarm_strategy", "random"),
    ("swarm-mode", "docker_volume_type", "ssd"), ("mesos", "docker_volume_type", "ceph-hdd"),
    ("mesos", "availability_zone", "nova"), ("swarm", "addons", "cvmfs, eos"),
    ("mesos", "mesos_slave_isolation", "filesystem/linux,docker/runtime, cgroups/mem"),
    ("mesos", "mesos_slave_image_providers", "docker"), ("mesos", "mesos_slave_image_providers", "appc,docker"),
    ("mesos", "mesos_slave_work_dir", "/var/lib/mesos"),
    ("mesos", "mesos_slave_executor_env_variables", '{"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}'),
    ("mesos", "mesos_slave_executor_env_variables", "{}"),
    ("mesos", "swarm_strategy", "anything: not a Mesos label"),
])
def test_swarm_and_mesos_labels_accepted(coe: str, label: str, value: str) -> None:
    assert validate_labels(coe, {label: value}) == []


@pytest.mark.parametrize(("coe", "label", "value"), [
    ("swarm-mode", "swarm_strategy", "fastest"), ("swarm", "swarm_strategy", ""),
    ("swarm-mode", "docker_volume_type", ""), ("mesos", "docker_volume_type", "a\nb"),
    ("swarm-mode", "addons", "CVMFS"), ("mesos", "addons", "cvmfs;reboot"),
    ("mesos", "mesos_slave_isolation", "posix/cpu,gpu/nvidia"), ("mesos", "mesos_slave_isolation", "posix/cpu,posix/cpu"),
    ("mesos", "mesos_slave_image_providers", "oci"),
    ("mesos", "mesos_slave_work_dir", "tmp/mesos"), ("mesos", "mesos_slave_work_dir", "/var/../etc"),
    ("mesos", "mesos_slave_work_dir", "/var/lib/mesos;reboot"),
    ("mesos", "mesos_slave_executor_env_variables", "PATH=/bin"),
    ("mesos", "mesos_slave_executor_env_variables", '["PATH"]'),
    ("mesos", "mesos_slave_executor_env_variables", '{"PATH": 1}'),
    ("mesos", "mesos_slave_executor_env_variables", '{"$(reboot)": "x"}'),
])
def test_swarm_and_mesos_labels_refused_name_label_value_and_what_is_accepted(coe: str, label: str,
                                                                             value: str) -> None:
    problems = validate_labels(coe, {label: value})
    assert len(problems) == 1 and label in problems[0] and repr(value) in problems[0]
    assert RULES[coe][label].accepted in problems[0]
    assert _refused(coe=coe, labels={label: value}).startswith("Invalid input for field/attribute labels. ")


def test_master_count_is_odd_for_every_coe() -> None:
    from services.api.microversion import Microversion

    with pytest.raises(ApiError, match="Master node count must be odd: 2 requested."):
        validation.cluster_fields({"cluster_template_id": "t", "master_count": 2}, Microversion(1, 1))
    assert validation.cluster_fields({"cluster_template_id": "t", "master_count": 3},
                                     Microversion(1, 1))["master_count"] == 3


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
async def demo(api: RunningApi) -> Client:
    return Client(api.url, await user_token(api.devcloud, "demo", "demo-pass", "demo"))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _body(coe: str, image: str = UBUNTU, **kw: Any) -> dict[str, Any]:
    return {"name": _name(coe), "coe": coe, "image_id": image, "flavor_id": "m1.small",
            "master_flavor_id": "m1.small", "external_network_id": "public", **kw}


def _error(status: int, body: Any, expected_status: int, detail: str) -> None:
    assert status == expected_status, body
    (err,) = body["errors"]
    assert err["status"] == expected_status and err["detail"] == detail, err


@pytest.mark.integration
async def test_templates_of_each_coe_over_http(demo: Client) -> None:
    for coe, driver in (("kubernetes", "flannel"), ("swarm-mode", "docker"), ("swarm", "docker"),
                        ("mesos", "docker")):
        status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body(coe))
        assert status == 201, t
        assert t["coe"] == coe and t["network_driver"] == driver and t["cluster_distro"] == "ubuntu"
        status, shown, _ = await demo.call("GET", f"/v1/clustertemplates/{t['uuid']}")
        assert status == 200 and shown["coe"] == coe, "the value the user gave is kept"
    # Kubernetes still takes the devcloud's fedora-coreos image, as before distros were checked.
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body("kubernetes", FEDORA))
    assert status == 201 and t["cluster_distro"] == "fedora-coreos", t

    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm-mode", FEDORA))
    _error(status, body, 400, "Cluster type (vm, fedora-coreos, swarm-mode) not supported.")
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("mesos", server_type="bm"))
    _error(status, body, 400, "Cluster type (bm, ubuntu, mesos) not supported.")
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("mesos", cluster_distro="debian"))
    _error(status, body, 400, "Cluster type (vm, debian, mesos) not supported.")
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm", network_driver="flannel"))
    _error(status, body, 400, "Network driver type flannel is not supported, expecting a docker/unspecified "
                              "network driver.")
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("mesos", volume_driver="cinder"))
    _error(status, body, 400, "Volume driver type cinder is not supported, expecting a rexray/unspecified "
                              "volume driver.")
    status, body, _ = await demo.call("POST", "/v1/clustertemplates",
                                      _body("mesos", labels={"mesos_slave_image_providers": "oci"}))
    assert status == 400 and "mesos_slave_image_providers" in body["errors"][0]["detail"], body


@pytest.mark.integration
async def test_template_patch_rechecks_the_cluster_type(demo: Client) -> None:
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm-mode"))
    assert status == 201, t
    path = f"/v1/clustertemplates/{t['uuid']}"
    status, body, _ = await demo.call("PATCH", path, [{"op": "replace", "path": "/image_id", "value": FEDORA}])
    _error(status, body, 400, "Cluster type (vm, fedora-coreos, swarm-mode) not supported.")
    status, body, _ = await demo.call("PATCH", path, [{"op": "replace", "path": "/server_type", "value": "bm"}])
    _error(status, body, 400, "Cluster type (bm, ubuntu, swarm-mode) not supported.")
    status, shown, _ = await demo.call("GET", path)
    assert status == 200 and shown["image_id"] == UBUNTU and shown["server_type"] == "vm", "unchanged"
    # To Mesos on the same Ubuntu image: a cluster type a driver provides.
    status, body, _ = await demo.call("PATCH", path, [{"op": "replace", "path": "/coe", "value": "mesos"}])
    assert status == 200 and body["coe"] == "mesos", body

    status, k, _ = await demo.call("POST", "/v1/clustertemplates", _body("kubernetes", FEDORA))
    assert status == 201, k
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{k['uuid']}",
                                      [{"op": "replace", "path": "/coe", "value": "mesos"},
                                       {"op": "replace", "path": "/network_driver", "value": "docker"}])
    _error(status, body, 400, "Cluster type (vm, fedora-coreos, mesos) not supported.")
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{k['uuid']}",
                                      [{"op": "replace", "path": "/image_id", "value": UBUNTU}])
    assert status == 200 and body["cluster_distro"] == "ubuntu", body


@pytest.mark.integration
async def test_cluster_of_a_mesos_template_keeps_the_rules(demo: Client) -> None:
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body("mesos", master_lb_enabled=True))
    assert status == 201, t
    status, body, _ = await demo.call("POST", "/v1/clusters", {"cluster_template_id": t["uuid"], "master_count": 2},
                                      headers=LATEST)
    _error(status, body, 400, "Master node count must be odd: 2 requested.")
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "cluster_template_id": t["uuid"], "labels": {"mesos_slave_work_dir": "relative"}, "merge_labels": True},
        headers=LATEST)
    assert status == 400 and "mesos_slave_work_dir" in body["errors"][0]["detail"], body


class Provisioner:
    """The provisioner's side of ``cove.rpc.provisioner.addons``: its real handler, counted, on the real NATS."""

    def __init__(self, api: RunningApi) -> None:
        self.api = api
        self.catalog = Catalog.load(DEFAULT_DIR)
        self.asked = 0
        self.sub: Subscription | None = None

    async def answer(self, request: Message) -> Message:
        self.asked += 1
        return await self.catalog.answer(request)

    async def start(self) -> None:
        self.sub = await rpc.serve(self.api.bus.nc, subjects.PROVISIONER_ADDONS, "provisioner", self.answer)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None


def _client(api: RunningApi) -> AddonCatalogClient:
    runner = api.server._runner
    assert runner is not None
    return runner.app[ADDONS]


@pytest.fixture
async def provisioner(api: RunningApi) -> AsyncIterator[Provisioner]:
    """The cache made to last the test (no clock in the assertions), and a missing name always asked again."""
    p = Provisioner(api)
    await p.start()
    client = _client(api)
    saved = client.ttl, client.recheck
    client.forget()
    client.ttl, client.recheck = 3600.0, 0.0
    try:
        yield p
    finally:
        await p.stop()
        client.ttl, client.recheck = saved
        client.forget()


UNKNOWN = "Invalid input for field/attribute labels. Unknown add-on 'x'; this cloud offers: cvmfs, eos."


@pytest.mark.integration
async def test_addon_names_are_checked_with_the_provisioner(api: RunningApi, demo: Client,
                                                            provisioner: Provisioner) -> None:
    for coe in ("kubernetes", "swarm-mode", "mesos"):
        status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body(coe, labels={"addons": "cvmfs,eos"}))
        assert status == 201 and t["labels"]["addons"] == "cvmfs,eos", t
    assert provisioner.asked == 1, "the answer is cached: three creates, one question"

    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm", labels={"addons": "cvmfs, x"}))
    _error(status, body, 400, UNKNOWN)
    assert provisioner.asked == 2, "an unknown name is asked about once more before the refusal"

    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body("mesos", labels={"addons": "eos"}))
    assert status == 201, t
    path = f"/v1/clustertemplates/{t['uuid']}"
    status, body, _ = await demo.call("PATCH", path, [{"op": "replace", "path": "/labels",
                                                        "value": {"addons": "eos,x"}}])
    _error(status, body, 400, UNKNOWN)
    status, shown, _ = await demo.call("GET", path)
    assert shown["labels"] == {"addons": "eos"}
    status, body, _ = await demo.call("PATCH", path, [{"op": "replace", "path": "/labels",
                                                        "value": {"addons": "cvmfs"}}])
    assert status == 200 and body["labels"] == {"addons": "cvmfs"}, body

    cluster = {"cluster_template_id": t["uuid"], "name": _name("c"), "labels": {"addons": "x"}, "merge_labels": True}
    status, body, _ = await demo.call("POST", "/v1/clusters", cluster, headers=LATEST)
    _error(status, body, 400, UNKNOWN)
    status, _, _ = await demo.call("GET", f"/v1/clusters/{cluster['name']}", headers=LATEST)
    assert status == 404, "no cluster is left behind"
    cluster = {**cluster, "labels": {"addons": "cvmfs,eos"}}
    status, body, _ = await demo.call("POST", "/v1/clusters", cluster, headers=LATEST)
    assert status == 202, body


@pytest.mark.integration
async def test_without_the_provisioner_an_addon_write_is_refused_with_503(api: RunningApi, demo: Client,
                                                                         provisioner: Provisioner) -> None:
    await provisioner.stop()
    _client(api).forget()
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm-mode", labels={"addons": "cvmfs"}))
    assert status == 503, body
    assert "provisioner did not say which add-ons" in body["errors"][0]["detail"]
    # A write without the label never asks, so it is accepted.
    status, t, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm-mode", labels={"other": "x"}))
    assert status == 201, t
    status, body, _ = await demo.call("POST", "/v1/clusters", {
        "cluster_template_id": t["uuid"], "labels": {"addons": "cvmfs"}}, headers=LATEST)
    assert status == 503, body
    status, body, _ = await demo.call("PATCH", f"/v1/clustertemplates/{t['uuid']}",
                                      [{"op": "replace", "path": "/labels", "value": {"other": "x", "addons": "eos"}}])
    assert status == 503, body
    # Back again: the failure was not cached.
    await provisioner.start()
    status, body, _ = await demo.call("POST", "/v1/clustertemplates", _body("swarm-mode", labels={"addons": "cvmfs"}))
    assert status == 201, body
