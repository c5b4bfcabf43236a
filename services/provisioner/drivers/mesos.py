"""The Mesos driver (coe ``mesos``): ZooKeeper, a Mesos master and Marathon on every master, a Mesos agent on every
worker, each a container on the host's network under a systemd unit, on Debian/Ubuntu's ``docker.io`` engine.

The Mesosphere apt repositories are gone, so the services run from their images: ``zookeeper`` (Docker's official
image), ``mesosphere/mesos-master``, ``mesosphere/mesos-slave`` and ``mesosphere/marathon``, tagged from the labels
``mesos_tag`` and ``marathon_tag`` (``proto.labels.MESOS_LABELS``; ZooKeeper's tag is fixed here, ``ZOOKEEPER_TAG``).

Rendering follows the Kubernetes driver: two constant scripts (the bootstrap, and ``cove-mesos-service``, which one
systemd template unit ``cove-mesos@<service>`` runs) and every varying value written as data: the ``shlex.quote``d
environment file, the executors' environment as JSON (``json.dumps``), the proxies' systemd environment file, and
the whole document by PyYAML. The scripts pass values to ``docker run`` as quoted words, never as shell text.

The ZooKeeper ensemble is the masters' addresses (``NodeContext.master_addresses``, plus a master's own
``node_address``), in the order given, so every node must be rendered with the same list of every master; with none
known, ``api_host`` stands for the only master (without a load balancer it is the first master's fixed IP). The
ensemble's size is the master count (``MASTER_COUNT``) and the Mesos masters' quorum its majority; when
``NodeContext`` says how many masters the cluster has (a ``master_count`` field), an ensemble of another size is a
``ValueError`` rather than a split brain. A master finds its ZooKeeper id at boot: its own address's place in the
list (its ``node_address``, else the address it has that the list names).

Labels mapped onto the agents' flags: ``mesos_slave_isolation`` (``--isolation``), ``mesos_slave_image_providers``
(``--image_providers``; the isolators container images need, ``filesystem/linux`` and for Docker images
``docker/runtime``, are added when missing, where Magnum refused the template), ``mesos_slave_work_dir``
(``--work_dir``), ``mesos_slave_executor_env_variables`` (``--executor_environment_variables``, as a file).
``rexray_preempt`` is ignored: Cove installs no REX-Ray. ``docker_volume_type`` and ``availability_zone`` are read by
the provisioner.

Security groups: masters open Marathon (the API port) and the Mesos master (5050) to the allow-list and, from the
cluster only, ZooKeeper (2181, 2888, 3888), 5050 (agents, frameworks, the masters' replicated log), the API port
(a Marathon that is not the leader proxies requests to the one that is) and Marathon's scheduler port
(``MARATHON_LIBPROCESS_PORT``: the leading Mesos master sends it offers there); workers open the agent (5051) to the
cluster and the tasks' ports (31000-32000, the agents' default port resources) to the allow-list. SSH on both.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping

from proto import labels as label_rules
from services.provisioner.drivers.base import (
    Answer,
    CoeHealth,
    HealthCheck,
    NodeContext,
    PortRule,
    Probe,
    Role,
)
from services.provisioner.drivers.render import (
    CA_PATH,
    ENGINE_HELPERS,
    ENV_PATH,
    SHELL_HELPERS,
    ca_keys_given,
    check_host,
    endpoint,
    host_name,
    node_document,
    proxy_files,
    shell_env,
    write_file,
)

COE = "mesos"
MARATHON_PORT = 8080
MESOS_MASTER_PORT = 5050
MESOS_AGENT_PORT = 5051
MARATHON_LIBPROCESS_PORT = 5052
"""Marathon's scheduler driver listens here (``LIBPROCESS_PORT``) instead of a random port, so the security group
can let the leading Mesos master reach it."""
ZOOKEEPER_PORTS = (2181, 2888, 3888)
TASK_PORTS = (31000, 32000)
NETWORK_DRIVERS = ("docker",)
DEFAULT_NETWORK_DRIVER = "docker"

ZOOKEEPER_IMAGE = "zookeeper"
ZOOKEEPER_TAG = "3.8.4"
MESOS_MASTER_IMAGE = "mesosphere/mesos-master"
MESOS_AGENT_IMAGE = "mesosphere/mesos-slave"
MARATHON_IMAGE = "mesosphere/marathon"

MESOS_DIR = "/etc/cove/mesos"
EXECUTOR_ENV_PATH = f"{MESOS_DIR}/executor-env.json"
SCRIPT_PATH = "/usr/local/sbin/cove-bootstrap"
SERVICE_SCRIPT_PATH = "/usr/local/sbin/cove-mesos-service"
UNIT_PATH = "/etc/systemd/system/cove-mesos@.service"
PROXY_DROP_IN_PATH = "/etc/systemd/system/docker.service.d/cove-proxy.conf"
"""Where ``render.proxy_files`` puts the Docker engine's proxy drop-in."""
DOCKER_DIR = "/var/lib/docker"

_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

UNIT = f"""[Unit]
Description=Cove: Mesos cluster service %i (a container on the host's network)
After=docker.service network-online.target
Wants=network-online.target
Requires=docker.service

[Service]
ExecStart={SERVICE_SCRIPT_PATH} %i
Restart=always
RestartSec=5
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
"""

SERVICE_SCRIPT = r"""#!/bin/bash
# Runs one of Cove's Mesos cluster services as a container on the host's network, in the foreground, for the
# systemd unit cove-mesos@<service>. A constant: the values come from /etc/cove/node.env (written by cloud-init)
# and /etc/cove/mesos-node.env (the node's address and ZooKeeper id, found at boot), passed to docker as words.
set -euo pipefail
# shellcheck source=/dev/null
. /etc/cove/node.env
# shellcheck source=/dev/null
. /etc/cove/mesos-node.env

service=${1:?usage: cove-mesos-service zookeeper|master|marathon|agent}
name="cove-${service}"
docker rm --force "$name" >/dev/null 2>&1 || true
run=(docker run --rm --name "$name" --net=host)

case "$service" in
  zookeeper)
    exec "${run[@]}" \
      -e "ZOO_MY_ID=${ZOO_MY_ID}" -e "ZOO_SERVERS=${ZOO_SERVERS}" -e "ZOO_4LW_COMMANDS_WHITELIST=ruok,srvr,mntr" \
      -v /var/lib/cove/zookeeper/data:/data -v /var/lib/cove/zookeeper/datalog:/datalog \
      "$ZOOKEEPER_IMAGE"
    ;;
  master)
    exec "${run[@]}" \
      -e "MESOS_ZK=${ZK_MESOS}" -e "MESOS_QUORUM=${MESOS_QUORUM}" -e "MESOS_IP=${NODE_IP}" \
      -e "MESOS_HOSTNAME=${NODE_IP}" -e "MESOS_PORT=${MESOS_MASTER_PORT}" -e MESOS_WORK_DIR=/var/lib/mesos \
      -e MESOS_LOG_DIR=/var/log/mesos -v /var/lib/cove/mesos-master:/var/lib/mesos \
      "$MESOS_MASTER_IMAGE"
    ;;
  marathon)
    exec "${run[@]}" \
      -e "MARATHON_MASTER=${ZK_MESOS}" -e "MARATHON_ZK=${ZK_MARATHON}" -e "MARATHON_HTTP_PORT=${API_PORT}" \
      -e "MARATHON_HOSTNAME=${NODE_IP}" -e "LIBPROCESS_IP=${NODE_IP}" \
      -e "LIBPROCESS_PORT=${MARATHON_LIBPROCESS_PORT}" \
      "$MARATHON_IMAGE"
    ;;
  agent)
    args=(
      --privileged --pid=host
      -e "MESOS_MASTER=${ZK_MESOS}" -e "MESOS_IP=${NODE_IP}" -e "MESOS_HOSTNAME=${NODE_IP}"
      -e "MESOS_PORT=${MESOS_AGENT_PORT}" -e "MESOS_WORK_DIR=${MESOS_WORK_DIR}" -e MESOS_LOG_DIR=/var/log/mesos
      -e "MESOS_CONTAINERIZERS=docker,mesos" -e MESOS_SYSTEMD_ENABLE_SUPPORT=false
      -e "MESOS_DOCKER_MESOS_IMAGE=${MESOS_AGENT_IMAGE}"
      -v "${MESOS_WORK_DIR}:${MESOS_WORK_DIR}" -v /var/run/docker.sock:/var/run/docker.sock
      -v /usr/bin/docker:/usr/bin/docker:ro -v /sys/fs/cgroup:/sys/fs/cgroup
    )
    if [ -n "$MESOS_ISOLATION" ]; then
      args+=(-e "MESOS_ISOLATION=${MESOS_ISOLATION}")
    fi
    if [ -n "$MESOS_IMAGE_PROVIDERS" ]; then
      args+=(-e "MESOS_IMAGE_PROVIDERS=${MESOS_IMAGE_PROVIDERS}")
    fi
    if [ -s /etc/cove/mesos/executor-env.json ]; then
      args+=(-v /etc/cove/mesos:/etc/cove/mesos:ro
        -e MESOS_EXECUTOR_ENVIRONMENT_VARIABLES=file:///etc/cove/mesos/executor-env.json)
    fi
    exec "${run[@]}" "${args[@]}" "$MESOS_AGENT_IMAGE"
    ;;
  *)
    printf 'cove-mesos-service: unknown service %s\n' "$service" >&2
    exit 2
    ;;
esac
"""

BOOTSTRAP_SCRIPT = r"""#!/bin/bash
# Cove's Mesos node bootstrap: the Docker engine, then ZooKeeper, the Mesos master and Marathon on a master or the
# Mesos agent on a worker, each a container under the systemd unit cove-mesos@<service>. A constant: everything it
# depends on is read from the environment file that cloud-init wrote beside it.
set -euo pipefail
umask 022
# shellcheck source=/dev/null
. /etc/cove/node.env

""" + SHELL_HELPERS + r"""
""" + ENGINE_HELPERS + r"""
# This node's address: its fixed IP when the provisioner knew it; else, on a master, the address it has that the
# ensemble names; else the source address of its route to the API host.
own_address() {
  local address target
  if [ -n "$NODE_ADDRESS" ]; then
    printf '%s\n' "$NODE_ADDRESS"
    return 0
  fi
  if [ "$COVE_ROLE" = master ]; then
    for address in $(hostname --all-ip-addresses); do
      if zookeeper_id "$address" >/dev/null; then
        printf '%s\n' "$address"
        return 0
      fi
    done
  fi
  target=$(getent ahosts "$API_HOST" | awk 'NR == 1 { print $1 }')
  ip -o route get "$target" | sed -n 's/.* src \([^ ]*\).*/\1/p'
}

# zookeeper_id ADDRESS: the ZooKeeper server id of the master at ADDRESS (its place in MESOS_MASTERS, from 1).
zookeeper_id() {
  local id=1 master
  local -a masters
  read -r -a masters <<<"$MESOS_MASTERS"
  for master in "${masters[@]}"; do
    if [ "$master" = "$1" ]; then
      printf '%s\n' "$id"
      return 0
    fi
    id=$((id + 1))
  done
  return 1
}

main() {
  local address zoo_id=0 image
  local -a services images
  log "bootstrapping ${COVE_NODE_NAME} (${COVE_ROLE}) of cluster ${COVE_CLUSTER_ID}"
  use_proxy
  install_engine
  retry 30 2 engine_up
  address=$(own_address)
  if [ -z "$address" ]; then
    log "cannot tell this node's address"
    return 1
  fi
  if [ "$COVE_ROLE" = master ]; then
    if ! zoo_id=$(zookeeper_id "$address"); then
      log "this master's address ${address} is not in the ZooKeeper ensemble: ${MESOS_MASTERS}"
      return 1
    fi
    services=(zookeeper master marathon)
    images=("$ZOOKEEPER_IMAGE" "$MESOS_MASTER_IMAGE" "$MARATHON_IMAGE")
    install -d -m 0755 /var/lib/cove/zookeeper/data /var/lib/cove/zookeeper/datalog /var/lib/cove/mesos-master
  else
    services=(agent)
    images=("$MESOS_AGENT_IMAGE")
    install -d -m 0755 "$MESOS_WORK_DIR"
  fi
  printf 'NODE_IP=%q\nZOO_MY_ID=%q\n' "$address" "$zoo_id" >/etc/cove/mesos-node.env
  for image in "${images[@]}"; do
    retry 10 10 docker pull "$image"
  done
  systemctl daemon-reload
  for service in "${services[@]}"; do
    systemctl enable --now "cove-mesos@${service}.service"
  done
  log "done"
}

main "$@"
"""


def mesos_network_driver(value: str | None) -> str:
    driver = value or DEFAULT_NETWORK_DRIVER
    if driver not in NETWORK_DRIVERS:
        raise ValueError(f"network driver {driver!r} is not supported by the Mesos driver; supported: docker")
    return driver


def image_tag(label: str, value: str) -> str:
    """A Docker image tag from a label (``ValueError`` unless it is one)."""
    if not _TAG_RE.fullmatch(value):
        raise ValueError(f"Label {label} has the value {value!r}, which is not a Docker image tag")
    return value


def agent_isolation(labels: dict[str, str]) -> str:
    """The agents' ``--isolation``: the label's isolators, with those its image providers need added (container
    images need ``filesystem/linux``, Docker images ``docker/runtime`` too); empty for Mesos's default."""
    isolators = [i.strip() for i in labels.get("mesos_slave_isolation", "").split(",") if i.strip()]
    providers = image_providers(labels).split(",") if image_providers(labels) else []
    needed = (["filesystem/linux"] if providers else []) + (["docker/runtime"] if "docker" in providers else [])
    return ",".join(dict.fromkeys(isolators + needed))


def image_providers(labels: dict[str, str]) -> str:
    return ",".join(p.strip().lower() for p in labels.get("mesos_slave_image_providers", "").split(",") if p.strip())


def executor_env(labels: dict[str, str]) -> str | None:
    """``--executor_environment_variables`` as a JSON file's content (None without the label)."""
    raw = labels.get("mesos_slave_executor_env_variables")
    if raw is None or not raw.strip():
        return None
    return json.dumps(json.loads(raw), sort_keys=True) + "\n"


def _address(what: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not an IP address or a host name") from None
        return value


def ensemble(node: NodeContext) -> list[str]:
    """The ZooKeeper ensemble (the masters' addresses, in the order given, without repeats): ``master_addresses``
    and a master's own ``node_address``; ``[api_host]`` when none is known (the only master, without a load
    balancer)."""
    masters = [_address("master address", a) for a in node.master_addresses if a]
    if node.role == "master" and node.node_address:
        masters.append(_address("node_address", node.node_address))
    masters = list(dict.fromkeys(masters)) or [_address("api_host", node.api_host)]
    expected = node.master_count
    if expected is not None and expected != len(masters):
        raise ValueError(f"the cluster has {expected} masters but {len(masters)} master addresses are known "
                         f"({', '.join(masters)}): every Mesos node needs every master's address")
    return masters


def _no_proxy(node: NodeContext, masters: list[str]) -> str:
    given = [p.strip() for p in (node.no_proxy or "").split(",") if p.strip()]
    ours = ["localhost", "127.0.0.1", node.api_host, *node.api_sans, *masters]
    if node.node_address:
        ours.append(node.node_address)
    return ",".join(dict.fromkeys(given + ours))


class MesosDriver:
    coe = COE
    default_api_port = MARATHON_PORT

    def api_address(self, host: str, port: int) -> str:
        return f"http://{endpoint(host, port)}"  # Marathon's API and UI

    def load_balancer_ports(self, api_port: int) -> list[int]:
        return [api_port, MESOS_MASTER_PORT]

    def needs_ca_key(self, role: Role) -> bool:
        return False

    def needs_all_master_addresses(self) -> bool:
        return True  # the ZooKeeper ensemble

    def needs_server_certificate(self, role: Role) -> bool:
        return False  # Marathon and Mesos serve plain HTTP here, as Magnum's Mesos driver did

    def port_rules(self, role: Role, *, api_port: int, network_driver: str | None) -> list[PortRule]:
        if not 1 <= api_port <= 65535:
            raise ValueError(f"API port {api_port} is not a TCP port")
        mesos_network_driver(network_driver)
        if role == "master":
            return [
                PortRule("tcp", api_port, api_port, "allowed", "Marathon API and UI"),
                PortRule("tcp", api_port, api_port, "cluster", "Marathon from the other masters (to the leader)"),
                PortRule("tcp", MESOS_MASTER_PORT, MESOS_MASTER_PORT, "allowed", "Mesos master API and UI"),
                PortRule("tcp", MESOS_MASTER_PORT, MESOS_MASTER_PORT, "cluster",
                         "Mesos master from agents, frameworks and the other masters"),
                PortRule("tcp", MARATHON_LIBPROCESS_PORT, MARATHON_LIBPROCESS_PORT, "cluster",
                         "Marathon's scheduler, from the leading Mesos master"),
                *(PortRule("tcp", p, p, "cluster", f"ZooKeeper ({what})")
                  for p, what in zip(ZOOKEEPER_PORTS, ("clients", "followers", "leader election"), strict=True)),
                PortRule("tcp", 22, 22, "allowed", "SSH"),
            ]
        if role == "worker":
            return [
                PortRule("tcp", MESOS_AGENT_PORT, MESOS_AGENT_PORT, "cluster", "Mesos agent from the masters"),
                PortRule("tcp", TASK_PORTS[0], TASK_PORTS[1], "allowed", "tasks' ports (the agents' port resources)"),
                PortRule("tcp", 22, 22, "allowed", "SSH"),
            ]
        raise ValueError(f"unknown node role {role!r}")

    def user_data(self, node: NodeContext) -> str:
        labels = _labels(node)
        mesos_network_driver(node.network_driver)
        _check_node(node)
        masters = ensemble(node)
        first = node.role == "master" and node.is_first_master
        zk_hosts = ",".join(endpoint(m, ZOOKEEPER_PORTS[0]) for m in masters)
        proxied = bool(node.http_proxy or node.https_proxy)
        proxy = {
            "HTTP_PROXY": node.http_proxy or "",
            "HTTPS_PROXY": node.https_proxy or "",
            "NO_PROXY": _no_proxy(node, masters) if proxied else (node.no_proxy or ""),
        }
        mesos_tag = image_tag("mesos_tag", labels["mesos_tag"])
        marathon_tag = image_tag("marathon_tag", labels["marathon_tag"])
        env = {
            "COVE_COE": COE,
            "COVE_CLUSTER_ID": node.cluster_id,
            "COVE_CLUSTER_NAME": node.cluster_name,
            "COVE_NODE_NAME": node.node_name,
            "COVE_NODEGROUP": node.nodegroup,
            "COVE_ROLE": node.role,
            "COVE_FIRST_MASTER": "true" if first else "false",
            "API_HOST": node.api_host,
            "API_PORT": str(node.api_port),
            "NODE_ADDRESS": node.node_address or "",
            "MASTER_COUNT": str(len(masters)),
            "MESOS_MASTERS": " ".join(masters),
            "MESOS_QUORUM": str(len(masters) // 2 + 1),
            "ZOO_SERVERS": " ".join(
                f"server.{i}={endpoint(m, ZOOKEEPER_PORTS[1])}:{ZOOKEEPER_PORTS[2]};{ZOOKEEPER_PORTS[0]}"
                for i, m in enumerate(masters, start=1)),
            "ZK_MESOS": f"zk://{zk_hosts}/mesos",
            "ZK_MARATHON": f"zk://{zk_hosts}/marathon",
            "MESOS_MASTER_PORT": str(MESOS_MASTER_PORT),
            "MESOS_AGENT_PORT": str(MESOS_AGENT_PORT),
            "MARATHON_LIBPROCESS_PORT": str(MARATHON_LIBPROCESS_PORT),
            "ZOOKEEPER_IMAGE": f"{ZOOKEEPER_IMAGE}:{ZOOKEEPER_TAG}",
            "MESOS_MASTER_IMAGE": f"{MESOS_MASTER_IMAGE}:{mesos_tag}",
            "MESOS_AGENT_IMAGE": f"{MESOS_AGENT_IMAGE}:{mesos_tag}",
            "MARATHON_IMAGE": f"{MARATHON_IMAGE}:v{marathon_tag}",
            "MESOS_WORK_DIR": labels["mesos_slave_work_dir"],
            "MESOS_ISOLATION": agent_isolation(labels),
            "MESOS_IMAGE_PROVIDERS": image_providers(labels),
            "NETWORK_DRIVER": DEFAULT_NETWORK_DRIVER,
            "DOCKER_VOLUME_DEVICE": node.docker_volume_device or "",
            **proxy,
        }
        files = [
            write_file(CA_PATH, node.ca_cert_pem, "0644"),
            write_file(ENV_PATH, shell_env(env), "0600"),
        ]
        executor = executor_env(labels) if node.role == "worker" else None
        if executor is not None:
            files.append(write_file(EXECUTOR_ENV_PATH, executor, "0644"))
        files += [
            write_file(UNIT_PATH, UNIT, "0644"),
            write_file(SERVICE_SCRIPT_PATH, SERVICE_SCRIPT, "0755"),
        ]
        if proxied or node.no_proxy:
            files += proxy_files(proxy, ["docker.service"])
        files.append(write_file(SCRIPT_PATH, BOOTSTRAP_SCRIPT, "0755"))
        return node_document(host_name(node.node_name), files, [(node.docker_volume_device, DOCKER_DIR, "docker")],
                             SCRIPT_PATH)

    def health_checks(self) -> list[HealthCheck]:
        return [
            HealthCheck("marathon", "cluster", "Marathon's /ping through the cluster's api_address", port=None,
                        path="/ping"),
            HealthCheck("mesos-master", "master", "the Mesos master's /health on the master", port=MESOS_MASTER_PORT,
                        path="/health"),
            HealthCheck("zookeeper", "master", "ZooKeeper answers `ruok` with `imok` on the master",
                        port=ZOOKEEPER_PORTS[0]),
            HealthCheck("mesos-agent", "worker", "the Mesos agent's /health on the worker", port=MESOS_AGENT_PORT,
                        path="/health"),
        ]

    def health_probes(self) -> list[Probe]:
        """Marathon's ``/ping`` at the API port and the Mesos master's ``/master/slaves`` (each agent ``active``),
        plain HTTP as both serve by default."""
        return [Probe("api", "/ping", tls=False), Probe("nodes", "/master/slaves", MESOS_MASTER_PORT, tls=False)]

    def read_health(self, answers: Mapping[str, Answer]) -> CoeHealth:
        return mesos_health(answers)

    def cluster_config(self) -> str:
        return (
            "Nothing: python-magnumclient's `cluster config` returns None for a Mesos cluster and writes no file. "
            "Marathon's API and UI are at the cluster's api_address (http://host:8080), the Mesos master's UI on "
            "port 5050 of the same host."
        )


def _labels(node: NodeContext) -> dict[str, str]:
    problems = label_rules.validate_labels(COE, node.labels, network_driver=node.network_driver)
    if problems:
        raise ValueError(" ".join(problems))
    return {**node.labels, **label_rules.resolved(COE, node.labels)}


def _check_node(node: NodeContext) -> None:
    if node.role not in ("master", "worker"):
        raise ValueError(f"unknown node role {node.role!r}")
    if node.role == "worker" and node.is_first_master:
        raise ValueError("a worker cannot be the first master")
    if ca_keys_given(node):
        raise ValueError(f"a Mesos node never receives a CA's key ({', '.join(ca_keys_given(node))})")
    if node.etcd_volume_device:
        raise ValueError("an etcd volume is for Kubernetes masters only; Mesos's masters keep ZooKeeper's data")
    check_host("api_host", node.api_host)
    if not 1 <= node.api_port <= 65535:
        raise ValueError(f"api_port {node.api_port} is not a TCP port")
    if node.api_port in (MESOS_MASTER_PORT, MARATHON_LIBPROCESS_PORT, *ZOOKEEPER_PORTS):
        raise ValueError(f"api_port {node.api_port} is taken on the masters by Mesos or ZooKeeper")
    if node.node_address:
        try:
            ipaddress.ip_address(node.node_address)
        except ValueError:
            raise ValueError(f"node_address {node.node_address!r} is not an IP address") from None


def mesos_health(answers: Mapping[str, Answer]) -> CoeHealth:
    """Marathon's ``/ping`` must answer 200; each agent ``/master/slaves`` lists is ready while ``active``."""
    ping = answers.get("api") or Answer(error="not asked")
    api = ping.failure()
    listed = answers.get("nodes")
    nodes: dict[str, tuple[bool, str]] = {}
    if api is None and listed is not None and listed.failure() is None:
        try:
            slaves = json.loads(listed.body).get("slaves") or []
        except (ValueError, AttributeError):
            slaves = []
        for agent in slaves:
            if isinstance(agent, dict) and agent.get("hostname"):
                nodes[str(agent["hostname"])] = (True, "") if agent.get("active", True) else (
                    False, "Mesos reports the agent deactivated")
    return CoeHealth(api=api, nodes=nodes)

