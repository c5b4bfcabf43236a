"""The Mesos driver (pure): port rules, API address, user data per role, the ZooKeeper ensemble, labels, refusals.

Every rendered document passes cloud-init's own schema check and its two scripts shellcheck (the real tools from
.venv/tools); hostile names, labels and proxies arrive on the node as data, read back by a real bash.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from proto.labels import MESOS_LABELS
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.mesos import (
    BOOTSTRAP_SCRIPT,
    EXECUTOR_ENV_PATH,
    PROXY_DROP_IN_PATH,
    SCRIPT_PATH,
    SERVICE_SCRIPT,
    SERVICE_SCRIPT_PATH,
    UNIT,
    UNIT_PATH,
    MesosDriver,
)
from services.provisioner.drivers.render import CA_PATH, ENV_PATH, PROXY_ENV_PATH
from tests.provisioner.userdata_checks import (
    assert_shellcheck_clean,
    assert_valid_cloud_config,
    files,
    hostile,
    parse,
    source,
)

DRIVER = MesosDriver()
CLUSTER = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
CA = "-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n"
MASTERS = ("10.0.0.5", "10.0.0.6", "10.0.0.7")


def node(kind: str, **kw: Any) -> NodeContext:
    """``kind``: ``first`` (the first master), ``master`` (another master) or ``worker``."""
    role = "worker" if kind == "worker" else "master"
    args: dict[str, Any] = {
        "cluster_id": CLUSTER, "cluster_name": "demo", "node_name": f"demo-0f1e2d3c-{kind}-0", "role": role,
        "nodegroup": f"default-{role}", "is_first_master": kind == "first", "api_host": "10.0.0.100",
        "api_port": 8080, "ca_cert_pem": CA, "bootstrap_token": "", "network_driver": "docker",
        "master_addresses": MASTERS, "node_address": {"first": "10.0.0.5", "master": "10.0.0.6"}.get(kind, "10.0.0.20"),
    }
    args.update(kw)
    return NodeContext(**args)


ENV_NAMES = ["COVE_COE", "COVE_CLUSTER_ID", "COVE_CLUSTER_NAME", "COVE_NODE_NAME", "COVE_NODEGROUP", "COVE_ROLE",
             "COVE_FIRST_MASTER", "API_HOST", "API_PORT", "NODE_ADDRESS", "MASTER_COUNT", "MESOS_MASTERS",
             "MESOS_QUORUM", "ZOO_SERVERS", "ZK_MESOS", "ZK_MARATHON", "ZOOKEEPER_IMAGE", "MESOS_MASTER_IMAGE",
             "MESOS_AGENT_IMAGE", "MARATHON_IMAGE", "MESOS_WORK_DIR", "MESOS_ISOLATION", "MESOS_IMAGE_PROVIDERS",
             "DOCKER_VOLUME_DEVICE"]


def env_of(n: NodeContext, names: list[str] = ENV_NAMES, tmp: Path | None = None) -> dict[str, str]:
    return source(files(parse(DRIVER.user_data(n)))[ENV_PATH]["content"], names, tmp)


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "volume": {"docker_volume_device": "/dev/vdb"},
    "proxies": {"http_proxy": "http://proxy.example:3128", "https_proxy": "http://user:p%40ss@proxy:3128",
                "no_proxy": "169.254.169.254,.example"},
    "single-master-no-addresses": {"master_addresses": (), "node_address": None, "network_driver": None},
    "agent-labels": {"labels": {"mesos_slave_isolation": "cgroups/cpu,cgroups/mem",
                                "mesos_slave_image_providers": "appc,docker", "mesos_slave_work_dir": "/srv/mesos",
                                "mesos_slave_executor_env_variables": '{"PATH": "/bin:/usr/bin", "LANG": "C"}',
                                "mesos_tag": "1.9.0", "marathon_tag": "1.10.17", "rexray_preempt": "true"},
                     "docker_volume_device": "/dev/vdb", "http_proxy": "http://proxy:3128"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ["first", "master", "worker"])
def test_user_data_passes_cloud_init_schema_and_shellcheck(kind: str, variant: str, tmp_path: Path) -> None:
    text = DRIVER.user_data(node(kind, **VARIANTS[variant]))
    assert_valid_cloud_config(text, tmp_path)
    doc = parse(text)
    written = files(doc)
    assert_shellcheck_clean(written[SCRIPT_PATH]["content"], tmp_path, "bootstrap.sh")
    assert_shellcheck_clean(written[SERVICE_SCRIPT_PATH]["content"], tmp_path, "cove-mesos-service.sh")
    for path_on_node in (ENV_PATH, PROXY_ENV_PATH):
        if path_on_node in written:
            assert_shellcheck_clean(written[path_on_node]["content"], tmp_path, Path(path_on_node).name,
                                    "--shell=bash", "--exclude=SC2034")
    assert written[SCRIPT_PATH]["content"] == BOOTSTRAP_SCRIPT and written[SERVICE_SCRIPT_PATH]["content"] == \
        SERVICE_SCRIPT and written[UNIT_PATH]["content"] == UNIT, "the scripts and the unit are constants"
    assert doc["runcmd"] == [[SCRIPT_PATH]]


def test_the_common_files_and_their_permissions() -> None:
    for kind in ("first", "master", "worker"):
        written = files(parse(DRIVER.user_data(node(kind))))
        assert (written[CA_PATH]["content"], written[CA_PATH]["permissions"]) == (CA, "0644")
        assert written[ENV_PATH]["permissions"] == "0600"
        assert (written[SCRIPT_PATH]["permissions"], written[SERVICE_SCRIPT_PATH]["permissions"]) == ("0755", "0755")
        assert "PRIVATE KEY" not in str(written)


def test_masters_run_an_ensemble_of_every_master_with_a_majority_quorum() -> None:
    first = env_of(node("first"))
    assert first == {
        "COVE_COE": "mesos", "COVE_CLUSTER_ID": CLUSTER, "COVE_CLUSTER_NAME": "demo",
        "COVE_NODE_NAME": "demo-0f1e2d3c-first-0", "COVE_NODEGROUP": "default-master", "COVE_ROLE": "master",
        "COVE_FIRST_MASTER": "true", "API_HOST": "10.0.0.100", "API_PORT": "8080", "NODE_ADDRESS": "10.0.0.5",
        "MASTER_COUNT": "3", "MESOS_MASTERS": "10.0.0.5 10.0.0.6 10.0.0.7", "MESOS_QUORUM": "2",
        "ZOO_SERVERS": "server.1=10.0.0.5:2888:3888;2181 server.2=10.0.0.6:2888:3888;2181 "
                       "server.3=10.0.0.7:2888:3888;2181",
        "ZK_MESOS": "zk://10.0.0.5:2181,10.0.0.6:2181,10.0.0.7:2181/mesos",
        "ZK_MARATHON": "zk://10.0.0.5:2181,10.0.0.6:2181,10.0.0.7:2181/marathon",
        "ZOOKEEPER_IMAGE": "zookeeper:3.8.4", "MESOS_MASTER_IMAGE": "mesosphere/mesos-master:1.11.0",
        "MESOS_AGENT_IMAGE": "mesosphere/mesos-slave:1.11.0", "MARATHON_IMAGE": "mesosphere/marathon:v1.11.24",
        "MESOS_WORK_DIR": "/var/lib/mesos", "MESOS_ISOLATION": "", "MESOS_IMAGE_PROVIDERS": "",
        "DOCKER_VOLUME_DEVICE": ""}
    other = env_of(node("master"))
    assert other["COVE_FIRST_MASTER"] == "false" and other["ZOO_SERVERS"] == first["ZOO_SERVERS"]
    worker = env_of(node("worker"))
    assert worker["COVE_ROLE"] == "worker" and worker["ZK_MESOS"] == first["ZK_MESOS"]
    # a master not yet among the known addresses adds its own; five masters need three
    five = env_of(node("master", master_addresses=("10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"),
                       node_address="10.0.0.9"), ["MASTER_COUNT", "MESOS_QUORUM", "MESOS_MASTERS"])
    assert five == {"MASTER_COUNT": "5", "MESOS_QUORUM": "3", "MESOS_MASTERS": "10.0.0.5 10.0.0.6 10.0.0.7 10.0.0.8 "
                                                                               "10.0.0.9"}
    # one master, no load balancer, no address known yet: API_HOST is that master
    alone = env_of(node("first", master_addresses=(), node_address=None, api_host="10.0.0.5"),
                   ["MASTER_COUNT", "MESOS_QUORUM", "ZK_MESOS"])
    assert alone == {"MASTER_COUNT": "1", "MESOS_QUORUM": "1", "ZK_MESOS": "zk://10.0.0.5:2181/mesos"}


def test_an_ensemble_short_of_the_master_count_is_refused_rather_than_split() -> None:
    """When NodeContext says how many masters there are, an ensemble of another size is refused: three masters
    each rendered with only its own address would make three single-node ZooKeepers, each with its own leading
    Mesos master."""

    def counted(kind: str, count: int, **kw: Any) -> NodeContext:
        return dataclasses.replace(node(kind, **kw), master_count=count)

    assert DRIVER.needs_all_master_addresses()
    assert env_of(counted("master", 3), ["MASTER_COUNT"]) == {"MASTER_COUNT": "3"}
    with pytest.raises(ValueError, match="3 masters but 1 master addresses"):
        DRIVER.user_data(counted("master", 3, master_addresses=()))
    with pytest.raises(ValueError, match="3 masters but 2 master addresses"):
        DRIVER.user_data(counted("worker", 3, master_addresses=MASTERS[:2]))


def _function(script: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", script, re.DOTALL | re.MULTILINE)
    assert match, name
    return match.group(0)


def test_a_master_finds_its_zookeeper_id_at_boot() -> None:
    """The bootstrap's own ``zookeeper_id`` (run by bash) over the rendered ensemble: each master's place from 1."""
    env_text = files(parse(DRIVER.user_data(node("first"))))[ENV_PATH]["content"]
    program = env_text + _function(BOOTSTRAP_SCRIPT, "zookeeper_id") + (
        'set -u; for a in 10.0.0.5 10.0.0.6 10.0.0.7; do zookeeper_id "$a"; done; '
        'zookeeper_id 10.0.0.50 || echo none')
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.split() == ["1", "2", "3", "none"]


def test_agent_labels_map_onto_the_agents_flags(tmp_path: Path) -> None:
    labels = {"mesos_slave_isolation": "cgroups/cpu,cgroups/mem", "mesos_slave_image_providers": "docker",
              "mesos_slave_work_dir": "/srv/mesos", "mesos_slave_executor_env_variables": '{"PATH": "/bin"}',
              "mesos_tag": "1.9.0", "marathon_tag": "1.10.17"}
    text = DRIVER.user_data(node("worker", labels=labels))
    env = env_of(node("worker", labels=labels), ["MESOS_ISOLATION", "MESOS_IMAGE_PROVIDERS", "MESOS_WORK_DIR",
                                                 "MESOS_AGENT_IMAGE", "MARATHON_IMAGE"])
    assert env == {"MESOS_ISOLATION": "cgroups/cpu,cgroups/mem,filesystem/linux,docker/runtime",
                   "MESOS_IMAGE_PROVIDERS": "docker", "MESOS_WORK_DIR": "/srv/mesos",
                   "MESOS_AGENT_IMAGE": "mesosphere/mesos-slave:1.9.0", "MARATHON_IMAGE": "mesosphere/marathon:v1.10.17"}
    executor = files(parse(text))[EXECUTOR_ENV_PATH]
    assert json.loads(executor["content"]) == {"PATH": "/bin"} and executor["permissions"] == "0644"
    appc = env_of(node("worker", labels={"mesos_slave_image_providers": "appc"}), ["MESOS_ISOLATION"])
    assert appc == {"MESOS_ISOLATION": "filesystem/linux"}, "container images need filesystem/linux"
    assert EXECUTOR_ENV_PATH not in files(parse(DRIVER.user_data(node("worker"))))
    assert EXECUTOR_ENV_PATH not in files(parse(DRIVER.user_data(node("first", labels=labels)))), "agents only"
    assert '"MESOS_ISOLATION=${MESOS_ISOLATION}"' in SERVICE_SCRIPT
    assert "MESOS_EXECUTOR_ENVIRONMENT_VARIABLES=file:///etc/cove/mesos/executor-env.json" in SERVICE_SCRIPT


@pytest.mark.parametrize(("label", "value"), [
    ("mesos_slave_isolation", "cgroups/cpu,posix/gpu"), ("mesos_slave_image_providers", "rkt"),
    ("mesos_slave_work_dir", "relative/dir"), ("mesos_slave_work_dir", "/var/lib/../etc"),
    ("mesos_slave_executor_env_variables", "[1, 2]"), ("mesos_slave_executor_env_variables", '{"A B": "x"}'),
    ("mesos_tag", "latest"), ("marathon_tag", "v1.11.24; id"), ("docker_volume_type", ""),
])
def test_a_label_with_an_invalid_value_is_refused_by_name(label: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        DRIVER.user_data(node("worker", labels={label: value}))
    assert label in str(info.value) and MESOS_LABELS[label].accepted in str(info.value)


def test_the_container_volume_is_mounted_where_docker_keeps_its_data() -> None:
    doc = parse(DRIVER.user_data(node("first", docker_volume_device="/dev/vdb")))
    assert doc["mounts"] == [["/dev/vdb", "/var/lib/docker", "ext4", "defaults,nofail,x-systemd.device-timeout=120",
                              "0", "2"]]
    assert "mounts" not in parse(DRIVER.user_data(node("worker")))


def test_proxies_reach_the_engine_that_pulls_the_images() -> None:
    written = files(parse(DRIVER.user_data(node("worker", https_proxy="http://proxy:3128"))))
    assert written[PROXY_DROP_IN_PATH]["content"] == f"[Service]\nEnvironmentFile={PROXY_ENV_PATH}\n"
    env = source(written[PROXY_ENV_PATH]["content"], ["HTTPS_PROXY", "http_proxy", "NO_PROXY"])
    assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["http_proxy"] == ""
    assert {"localhost", "127.0.0.1", "10.0.0.100", *MASTERS, "10.0.0.20"} == set(env["NO_PROXY"].split(","))


def test_hostile_names_labels_and_proxies_arrive_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = hostile(marker)
    n = node("worker", cluster_name=evil, node_name=f"demo{evil}", nodegroup=evil, http_proxy=evil,
             https_proxy=evil, no_proxy=evil,
             labels={"availability_zone": evil, "unknown": evil, "rexray_preempt": evil,
                     "mesos_slave_executor_env_variables": json.dumps({"EVIL": evil})})
    text = DRIVER.user_data(n)
    assert_valid_cloud_config(text, tmp_path)
    written = files(parse(text))
    holders = {path for path, f in written.items() if "$(touch" in f["content"] or "`touch" in f["content"]}
    assert holders == {ENV_PATH, PROXY_ENV_PATH, EXECUTOR_ENV_PATH}, \
        "the hostile text is only in the two environment files and the executors' JSON"
    assert json.loads(written[EXECUTOR_ENV_PATH]["content"]) == {"EVIL": evil}
    env = env_of(n, ["COVE_CLUSTER_NAME", "COVE_NODE_NAME", "COVE_NODEGROUP", "HTTP_PROXY", "HTTPS_PROXY"], tmp_path)
    assert env == {"COVE_CLUSTER_NAME": evil, "COVE_NODE_NAME": f"demo{evil}", "COVE_NODEGROUP": evil,
                   "HTTP_PROXY": evil, "HTTPS_PROXY": evil}
    proxy = source(written[PROXY_ENV_PATH]["content"], ["HTTP_PROXY", "https_proxy"], tmp_path)
    assert proxy == {"HTTP_PROXY": evil, "https_proxy": evil}
    # SC2016 says "expressions don't expand in single quotes": exactly what keeps them data
    assert_shellcheck_clean(written[ENV_PATH]["content"], tmp_path, "node.env", "--shell=bash",
                            "--exclude=SC2034,SC2016")
    assert not marker.exists(), "no command substitution ran"
    for label in ("mesos_slave_isolation", "mesos_slave_work_dir", "mesos_tag", "marathon_tag",
                  "mesos_slave_image_providers"):
        with pytest.raises(ValueError, match=label):
            DRIVER.user_data(node("worker", labels={label: evil}))
    with pytest.raises(ValueError, match="master address"):
        DRIVER.user_data(node("worker", master_addresses=("10.0.0.5", evil)))
    with pytest.raises(ValueError, match="api_host"):
        DRIVER.user_data(node("worker", api_host=evil))


def test_refusals() -> None:
    with pytest.raises(ValueError, match=r"never receives a CA's key \(ca_key_pem\)"):
        DRIVER.user_data(node("first", ca_key_pem="key"))
    with pytest.raises(ValueError, match="'flannel'"):
        DRIVER.user_data(node("worker", network_driver="flannel"))
    with pytest.raises(ValueError, match="first master"):
        DRIVER.user_data(node("worker", is_first_master=True))
    with pytest.raises(ValueError, match="etcd volume"):
        DRIVER.user_data(node("master", etcd_volume_device="/dev/vdc"))
    with pytest.raises(ValueError, match="node_address"):
        DRIVER.user_data(node("master", node_address="10.0.0.6 10.0.0.9"))
    with pytest.raises(ValueError, match="api_port 5050"):
        DRIVER.user_data(node("master", api_port=5050))
    with pytest.raises(ValueError, match="NUL"):
        DRIVER.user_data(node("worker", cluster_name="a\0b"))
    assert isinstance(driver_for("mesos"), MesosDriver)
    assert not DRIVER.needs_ca_key("master") and not DRIVER.needs_server_certificate("worker")


# --------------------------------------------------------------------------- port rules, API address, health


def rules(role: str, api_port: int = 8080, network_driver: str | None = "docker") -> set[tuple[Any, ...]]:
    return {(r.protocol, r.port_min, r.port_max, r.source)
            for r in DRIVER.port_rules(role, api_port=api_port, network_driver=network_driver)}  # type: ignore[arg-type]


def test_port_rules_per_role() -> None:
    assert rules("master") == {
        ("tcp", 8080, 8080, "allowed"), ("tcp", 5050, 5050, "allowed"), ("tcp", 22, 22, "allowed"),
        ("tcp", 8080, 8080, "cluster"), ("tcp", 5050, 5050, "cluster"), ("tcp", 5052, 5052, "cluster"),
        ("tcp", 2181, 2181, "cluster"), ("tcp", 2888, 2888, "cluster"), ("tcp", 3888, 3888, "cluster")}
    assert rules("worker") == {("tcp", 5051, 5051, "cluster"), ("tcp", 31000, 32000, "allowed"),
                               ("tcp", 22, 22, "allowed")}
    assert rules("master", network_driver=None) == rules("master"), "docker is the default network driver"
    assert len(DRIVER.port_rules("master", api_port=8080, network_driver=None)) == 9, "no rule twice"
    moved = rules("master", api_port=18080)
    assert ("tcp", 18080, 18080, "allowed") in moved and ("tcp", 8080, 8080, "allowed") not in moved
    assert all(r.description for r in DRIVER.port_rules("master", api_port=8080, network_driver=None))
    with pytest.raises(ValueError, match="flannel"):
        DRIVER.port_rules("master", api_port=8080, network_driver="flannel")
    with pytest.raises(ValueError, match="role"):
        DRIVER.port_rules("minion", api_port=8080, network_driver=None)  # type: ignore[arg-type]


def test_api_address_and_load_balancer() -> None:
    assert DRIVER.default_api_port == 8080
    assert DRIVER.api_address("127.24.4.9", 8080) == "http://127.24.4.9:8080"
    assert DRIVER.api_address("fd00::9", 8080) == "http://[fd00::9]:8080"
    assert DRIVER.load_balancer_ports(8080) == [8080, 5050]


def test_health_checks_and_cluster_config() -> None:
    checks = {(c.name, c.role): c for c in DRIVER.health_checks()}
    assert set(checks) == {("marathon", "cluster"), ("mesos-master", "master"), ("zookeeper", "master"),
                           ("mesos-agent", "worker")}
    assert (checks[("mesos-master", "master")].port, checks[("mesos-agent", "worker")].port) == (5050, 5051)
    config = DRIVER.cluster_config()
    assert "returns None" in config and "api_address" in config and "Marathon" in config
