"""The labels each COE's driver reads, and what values it accepts: one definition for the API and the drivers.

The API refuses a template or cluster whose labels a driver would refuse (400, before anything is built); the
driver resolves the same labels to the values it renders (``resolved``), defaults included, so both sides agree.
Labels no rule names are passed through untouched, as Magnum does.
"""

from __future__ import annotations

import ipaddress
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


def _bool(value: str) -> bool:
    return value.lower() in _TRUE | _FALSE


def _ipv4_cidr(value: str) -> bool:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return net.version == 4 and 8 <= net.prefixlen <= 28


def _size(value: str) -> bool:
    """As ``proto.clusterspec`` reads a size label: empty or 0 for none, else 1 to 16384 (GiB)."""
    value = value.strip()
    return value == "" or (value.isascii() and value.isdigit() and int(value) <= 16384)


def _anything(value: str) -> bool:
    return True


def as_bool(value: str) -> bool:
    """A boolean label's value (Horizon sends ``True``/``False``, the CLI ``true``/``false``)."""
    return value.lower() in _TRUE


_CIDR = "an IPv4 network in CIDR notation with a prefix of /8 to /28 (e.g. 10.100.0.0/16)"

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
    )
}

RULES: dict[str, dict[str, LabelRule]] = {"kubernetes": KUBERNETES_LABELS}
"""Every COE's label rules, by COE."""

POD_NETWORK_LABEL = {"calico": "calico_ipv4pool", "flannel": "flannel_network_cidr"}
"""Which label holds the pod network for each Kubernetes network driver."""
NETWORK_DRIVERS = ("flannel", "calico")
"""The network drivers a template may name (the API's 400, the driver's CNI)."""
DEFAULT_NETWORK_DRIVER = "flannel"


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
