"""The labels each COE's driver reads, and what values it accepts: one definition for the API and the drivers.

The API refuses a template or cluster whose labels a driver would refuse (400, before anything is built); the
driver resolves the same labels to the values it renders (``resolved``), defaults included, so both sides agree.
Labels no rule names are passed through untouched, as Magnum does.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_VERSION_RE = re.compile(r"^v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
MIN_KUBE_MINOR = 24
"""The oldest Kubernetes minor version with packages on pkgs.k8s.io (where the nodes install kubeadm from)."""


@dataclass(frozen=True)
class LabelRule:
    """One label a driver reads: the values it accepts (``accepted``, for people), its default (``None``: unset
    means "not used"), and the check (``valid``) that says whether a value is one of them."""

    name: str
    accepted: str
    default: str | None
    valid: Callable[[str], bool]
    description: str


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda value: value in choices


def _version(value: str) -> bool:
    return _VERSION_RE.fullmatch(value) is not None


def _kube_version(value: str) -> bool:
    m = _VERSION_RE.fullmatch(value)
    return m is not None and int(m.group(1)) == 1 and int(m.group(2)) >= MIN_KUBE_MINOR


def bool_value(raw: str) -> bool | None:
    """A boolean label's value (Horizon sends ``True``/``False``, the CLI ``true``/``false``); None when ``raw`` is
    no boolean word. The one boolean parser: the API's check, ``proto.clusterspec`` and the drivers use it."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def _bool(value: str) -> bool:
    return bool_value(value) is not None


def _ipv4_cidr(value: str) -> bool:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return net.version == 4 and 8 <= net.prefixlen <= 28


MAX_VOLUME_GB = 16384


def size_value(raw: str) -> int | None:
    """A size label's value in GiB: None for empty or 0 (no volume), else 1 to 16384; ``ValueError`` otherwise.
    The one size parser: the API's check and ``proto.clusterspec`` use it."""
    value = raw.strip()
    if value in ("", "0"):
        return None
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= MAX_VOLUME_GB:
        raise ValueError(f"a size in GiB from 1 to {MAX_VOLUME_GB} is expected, not {raw!r}")
    return int(value)


def _size(value: str) -> bool:
    try:
        size_value(value)
    except ValueError:
        return False
    return True


def _anything(value: str) -> bool:
    return True


def as_bool(value: str) -> bool:
    """A boolean label's value, already validated (anything but a true word is false)."""
    return bool_value(value) is True


ADDONS_LABEL = "addons"
"""The label that switches site add-ons on: comma-separated names of the operator's cloud-init fragments."""
ADDON_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
"""An add-on's name: its file in the provisioner's add-on directory is ``<name>.yaml``."""


def addon_names(labels: Mapping[str, str]) -> list[str]:
    """The add-ons ``labels`` switch on, in order, each once (spaces around names and empty items ignored)."""
    out: list[str] = []
    for item in labels.get(ADDONS_LABEL, "").split(","):
        name = item.strip()
        if name and name not in out:
            out.append(name)
    return out


def _addon_list(value: str) -> bool:
    return all(ADDON_NAME_RE.fullmatch(name) and len(name) <= 64 for name in addon_names({ADDONS_LABEL: value}))


_ADDONS = LabelRule(
    ADDONS_LABEL, "comma-separated add-on names (lowercase letters, digits, '_' and '-')", None, _addon_list,
    "the site add-ons (the operator's cloud-init fragments) every node gets")
_CIDR = "an IPv4 network in CIDR notation with a prefix of /8 to /28 (e.g. 10.100.0.0/16)"
AUTO_HEALING_LABEL = "auto_healing_enabled"
_AUTO_HEALING = LabelRule(
    AUTO_HEALING_LABEL, "true or false", None, _bool,
    "replace a node whose server went to ERROR or vanished (the provisioner's watch; at most "
    "COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP nodes of a nodegroup at a time)")

KUBERNETES_LABELS: dict[str, LabelRule] = {
    rule.name: rule
    for rule in (
        LabelRule("kube_tag", f"a Kubernetes version vX.Y.Z, v1.{MIN_KUBE_MINOR}.0 or newer (e.g. v1.30.4)",
                  "v1.30.4", _kube_version, "the Kubernetes version every node installs"),
        LabelRule("container_runtime", "containerd", "containerd", _one_of("containerd"),
                  "the container runtime (Cove's nodes run containerd only)"),
        LabelRule("cgroup_driver", "systemd or cgroupfs", "systemd", _one_of("systemd", "cgroupfs"),
                  "the cgroup driver of the kubelet and containerd"),
        LabelRule("kube_dashboard_enabled", "true or false", "true", _bool,
                  "install the Kubernetes dashboard"),
        LabelRule("calico_tag", "a calico release vX.Y.Z (e.g. v3.28.2)", "v3.28.2", _version,
                  "the calico release installed when the network driver is calico"),
        LabelRule("flannel_tag", "a flannel release vX.Y.Z (e.g. v0.26.1)", "v0.26.1", _version,
                  "the flannel release installed when the network driver is flannel"),
        LabelRule("calico_ipv4pool", _CIDR, "10.100.0.0/16", _ipv4_cidr,
                  "the pod network when the network driver is calico"),
        LabelRule("flannel_network_cidr", _CIDR, "10.100.0.0/16", _ipv4_cidr,
                  "the pod network when the network driver is flannel"),
        LabelRule("service_cluster_ip_range", _CIDR, "10.254.0.0/16", _ipv4_cidr,
                  "the network of Kubernetes services' cluster IPs"),
        LabelRule("availability_zone", "any Nova availability zone", None, _anything,
                  "where the nodes are booted (read by the provisioner, not by the nodes)"),
        LabelRule("etcd_volume_size", "a size in GiB from 1 to 16384, or 0 for none", "0", _size,
                  "a Cinder volume for etcd's data on each master, mounted at /var/lib/etcd"),
        _ADDONS,
        _AUTO_HEALING,
    )
}

_PLAIN_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_WORK_DIR_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+/?$")
MESOS_ISOLATORS = (
    "filesystem/posix", "filesystem/linux", "filesystem/shared", "posix/cpu", "posix/mem", "posix/disk",
    "cgroups/cpu", "cgroups/mem", "docker/runtime", "namespaces/pid",
)
"""The isolators Magnum's Mesos driver accepted in ``mesos_slave_isolation``."""
MESOS_IMAGE_PROVIDERS = ("appc", "docker")


def _plain_version(value: str) -> bool:
    return _PLAIN_VERSION_RE.fullmatch(value) is not None


def _volume_type(value: str) -> bool:
    """A Cinder volume type's name: printable, no control characters, at most 255 characters."""
    return 0 < len(value) <= 255 and value.isprintable()


def _comma_list_of(*choices: str) -> Callable[[str], bool]:
    def valid(value: str) -> bool:
        items = [item.strip() for item in value.split(",")]
        return all(item in choices for item in items) and len(set(items)) == len(items)

    return valid


def _work_dir(value: str) -> bool:
    """An absolute path of plain names (no ``..``): it lands in the agent's command line and systemd unit."""
    return (_WORK_DIR_RE.fullmatch(value) is not None and len(value) <= 255
            and ".." not in value.split("/"))


def _env_object(value: str) -> bool:
    """A JSON object of environment variable names to string values (Mesos's ``--executor_environment_variables``)."""
    try:
        data = json.loads(value)
    except ValueError:
        return False
    return isinstance(data, dict) and all(
        _ENV_NAME_RE.fullmatch(k) is not None and isinstance(v, str) and "\x00" not in v for k, v in data.items()
    )


_DOCKER_VOLUME_TYPE = LabelRule(
    "docker_volume_type", "the name of a Cinder volume type", None, _volume_type,
    "the Cinder volume type of each node's container-storage volume (docker_volume_size)")
_AVAILABILITY_ZONE = KUBERNETES_LABELS["availability_zone"]

SWARM_LABELS: dict[str, LabelRule] = {
    rule.name: rule
    for rule in (
        _DOCKER_VOLUME_TYPE,
        _AVAILABILITY_ZONE,
        _ADDONS,
        _AUTO_HEALING,
        LabelRule("swarm_strategy", "spread, binpack or random", "spread", _one_of("spread", "binpack", "random"),
                  "how Swarm places containers on the nodes (Magnum's swarm_strategy)"),
    )
}
"""The labels of Docker Swarm clusters (coe ``swarm-mode``, also accepted as ``swarm``)."""

MESOS_LABELS: dict[str, LabelRule] = {
    rule.name: rule
    for rule in (
        _DOCKER_VOLUME_TYPE,
        _AVAILABILITY_ZONE,
        _ADDONS,
        _AUTO_HEALING,
        LabelRule("mesos_slave_isolation", f"a comma-separated list of: {', '.join(MESOS_ISOLATORS)}", None,
                  _comma_list_of(*MESOS_ISOLATORS), "the agents' isolators (--isolation)"),
        LabelRule("mesos_slave_image_providers", "docker, appc, or both comma-separated", None,
                  _comma_list_of(*MESOS_IMAGE_PROVIDERS), "the container image kinds agents run (--image_providers)"),
        LabelRule("mesos_slave_work_dir", "an absolute path such as /var/lib/mesos", "/var/lib/mesos", _work_dir,
                  "the agents' working directory (--work_dir)"),
        LabelRule("mesos_slave_executor_env_variables",
                  'a JSON object of environment variable names to strings (e.g. {"PATH": "/bin"})', None,
                  _env_object, "the environment of the agents' executors (--executor_environment_variables)"),
        LabelRule("mesos_tag", "a Mesos release X.Y.Z (e.g. 1.11.0)", "1.11.0", _plain_version,
                  "the Mesos release the masters and agents run"),
        LabelRule("marathon_tag", "a Marathon release X.Y.Z (e.g. 1.11.24)", "1.11.24", _plain_version,
                  "the Marathon release the masters run"),
    )
}
"""The labels of Mesos clusters (coe ``mesos``)."""

RULES: dict[str, dict[str, LabelRule]] = {
    "kubernetes": KUBERNETES_LABELS, "swarm-mode": SWARM_LABELS, "swarm": SWARM_LABELS, "mesos": MESOS_LABELS,
}
"""Every COE's label rules, by COE (``swarm`` is Magnum's other name for ``swarm-mode``)."""

POD_NETWORK_LABEL = {"calico": "calico_ipv4pool", "flannel": "flannel_network_cidr"}
"""Which label holds the pod network for each Kubernetes network driver."""
NETWORK_DRIVERS = ("flannel", "calico")
"""The network drivers a Kubernetes template may name (the API's 400, the driver's CNI)."""
DEFAULT_NETWORK_DRIVER = "flannel"

COE_NETWORK_DRIVERS: dict[str, tuple[str, ...]] = {
    "kubernetes": NETWORK_DRIVERS, "swarm-mode": ("docker",), "swarm": ("docker",), "mesos": ("docker",),
}
"""The network drivers each COE's template may name (``docker``: the engine's own overlay networks). Magnum's
validator also listed flannel for Swarm, which only its classic-Swarm driver used; Cove's Swarm-mode driver
refuses it, so the API does too."""
DEFAULT_NETWORK_DRIVERS: dict[str, str] = {
    "kubernetes": DEFAULT_NETWORK_DRIVER, "swarm-mode": "docker", "swarm": "docker", "mesos": "docker",
}
"""The network driver a template of each COE gets when it names none (Magnum's ``*_default_network_driver``)."""


def rules_for(coe: str) -> dict[str, LabelRule]:
    try:
        return RULES[coe]
    except KeyError:
        raise ValueError(f"no label rules for COE {coe!r}; known: {', '.join(sorted(RULES))}") from None


def problem(rule: LabelRule, value: str) -> str:
    """The user-facing sentence for a refused value: the label, the value and what is accepted."""
    return f"Label {rule.name} has the value {value!r}, which is not accepted: expected {rule.accepted}."


def validate_labels(coe: str, labels: Mapping[str, str], *, network_driver: str | None = None) -> list[str]:
    """Every problem with ``labels`` for ``coe``, as sentences for the user; empty when they are acceptable.

    Unknown labels are accepted. With ``network_driver`` only that driver's pod network is checked against the
    service network; without it, both pod network labels are."""
    rules = rules_for(coe)
    problems = [problem(rules[name], value) for name, value in labels.items()
                if name in rules and not rules[name].valid(value)]
    if coe == "kubernetes" and not problems:
        service = ipaddress.ip_network(resolved(coe, labels)["service_cluster_ip_range"])
        drivers = [network_driver] if network_driver in POD_NETWORK_LABEL else sorted(POD_NETWORK_LABEL)
        for driver in drivers:
            name = POD_NETWORK_LABEL[driver]
            pods = ipaddress.ip_network(resolved(coe, labels)[name])
            if pods.overlaps(service):
                problems.append(
                    f"Label {name} ({pods}) overlaps label service_cluster_ip_range ({service}): the pod and "
                    "service networks must be disjoint."
                )
    return problems


def resolved(coe: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The value of every label ``coe``'s rules name: the given one, else the default (labels without a default
    that are not given are left out). Does not validate: call ``validate_labels`` first."""
    out: dict[str, str] = {}
    for name, rule in rules_for(coe).items():
        value = labels.get(name, rule.default)
        if value is not None:
            out[name] = value
    return out
