"""Magnum's input validation for templates and clusters, as pure functions over the JSON body.

Checks that need the cloud (image, flavors, keypair) are done by the resource modules through ``Keystone``.
"""

from __future__ import annotations

import random
import re
from typing import Any

from proto.labels import COE_NETWORK_DRIVERS, DEFAULT_NETWORK_DRIVERS, validate_labels
from services.api.errors import bad_request
from services.api.microversion import Microversion

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")
COES = ("kubernetes", "swarm-mode", "swarm", "mesos")
"""Magnum's API accepted ``swarm`` and ``swarm-mode`` for Docker Swarm; Cove keeps the value the user gave and builds
both with its Swarm-mode driver."""
SERVER_TYPES = ("vm", "bm")
"""What Magnum's validators accepted for every COE; whether a driver provides the pair is ``CLUSTER_TYPES``'s say."""
VOLUME_DRIVERS: dict[str, tuple[str, ...]] = {
    "kubernetes": ("cinder",), "swarm-mode": ("rexray",), "swarm": ("rexray",), "mesos": ("rexray",),
}
"""Magnum's ``supported_volume_driver`` per COE."""
DISTROS: dict[str, tuple[str, ...]] = {
    "kubernetes": ("ubuntu", "debian", "fedora-coreos"),
    "swarm-mode": ("ubuntu", "debian"),
    "swarm": ("ubuntu", "debian"),
    "mesos": ("ubuntu",),
}
"""The image ``os_distro`` values Cove's drivers boot on. The nodes are Debian/Ubuntu; Kubernetes also keeps
``fedora-coreos``, which the API accepted before it checked distros (the devcloud's default image)."""
CLUSTER_TYPES: frozenset[tuple[str, str, str]] = frozenset(
    [("vm", os, coe) for coe, distros in DISTROS.items() for os in distros]
    + [("bm", os, "kubernetes") for os in DISTROS["kubernetes"]]
)
"""Magnum's driver look-up key, (server_type, os_distro, coe): one entry per combination a driver provides. Bare
metal only for Kubernetes, as Magnum only ever had a bare-metal Kubernetes driver."""
_WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "juniper")

TEMPLATE_STR_FIELDS = (
    "name", "image_id", "flavor_id", "master_flavor_id", "keypair_id", "external_network_id", "fixed_network",
    "fixed_subnet", "network_driver", "volume_driver", "docker_storage_driver", "dns_nameserver", "http_proxy",
    "https_proxy", "no_proxy", "insecure_registry", "cluster_distro", "coe", "server_type", "driver",
)
TEMPLATE_BOOL_FIELDS = (
    "tls_disabled", "public", "hidden", "registry_enabled", "master_lb_enabled", "floating_ip_enabled",
)
TEMPLATE_INT_FIELDS = ("docker_volume_size", "apiserver_port")
TEMPLATE_FIELDS = frozenset(
    TEMPLATE_STR_FIELDS + TEMPLATE_BOOL_FIELDS + TEMPLATE_INT_FIELDS + ("labels", "tags")
)

CLUSTER_FIELDS = frozenset({
    "name", "cluster_template_id", "keypair", "node_count", "master_count", "docker_volume_size", "labels",
    "master_flavor_id", "flavor_id", "create_timeout", "discovery_url", "fixed_network", "fixed_subnet",
    "floating_ip_enabled", "master_lb_enabled", "merge_labels", "uuid",
})


def random_name(kind: str) -> str:
    return f"{random.choice(_WORDS)}-{random.randint(0, 999)}-{kind}"


def _invalid(field: str, value: Any, why: str = "") -> Exception:
    suffix = f" {why}" if why else ""
    return bad_request(f"Invalid input for field/attribute {field}. Value: '{value}'.{suffix}")


def require_object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request(f"Invalid input for {what}: the request body must be a JSON object.")
    return body


def reject_unknown(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"Unknown attribute for argument {what}: {', '.join(unknown)}")


def as_str(body: dict[str, Any], field: str, *, max_len: int = 255, min_len: int = 1) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(field, value, "Wrong type. Expected 'str'.")
    if not min_len <= len(value) <= max_len:
        raise _invalid(field, value, f"Length must be between {min_len} and {max_len}.")
    return value


def as_bool(body: dict[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise _invalid(field, value, "Wrong type. Expected 'bool'.")


SQL_INT_MAX = 2**31 - 1
"""The largest value an ``integer`` column (and Magnum's) holds: every count, size and timeout the API accepts is
bounded by it, so an accepted write can always be stored by the projections that apply it."""


def as_int(
    body: dict[str, Any], field: str, *, minimum: int | None = None, maximum: int | None = SQL_INT_MAX
) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid(field, value, "Wrong type. Expected 'int'.")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _invalid(field, value, "Wrong type. Expected 'int'.") from None
    if not isinstance(value, int):
        raise _invalid(field, value, "Wrong type. Expected 'int'.")
    if minimum is not None and value < minimum:
        raise _invalid(field, value, f"Value should be greater or equal to {minimum}")
    if maximum is not None and value > maximum:
        raise _invalid(field, value, f"Value should be lower or equal to {maximum}")
    return value


def as_labels(body: dict[str, Any], field: str = "labels") -> dict[str, str] | None:
    """Magnum stores labels as a dict of strings (Horizon sends bools and ints)."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(field, value, "Wrong type. Expected 'dict'.")
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[str(key)] = str(item)  # Magnum (oslo String.coerce): True -> "True"
        elif isinstance(item, (str, int, float)):
            out[str(key)] = str(item)
        else:
            raise _invalid(field, value, "Label values must be strings, numbers or booleans.")
    return out


def template_fields(body: Any) -> dict[str, Any]:
    """Validated, defaulted fields of a template create request (no cloud checks)."""
    body = require_object(body, "cluster_template")
    reject_unknown(body, TEMPLATE_FIELDS, "cluster_template")
    out: dict[str, Any] = {}
    for f in TEMPLATE_STR_FIELDS:
        value = as_str(body, f)
        if value is not None:
            out[f] = value
    for f in TEMPLATE_BOOL_FIELDS:
        flag = as_bool(body, f)
        if flag is not None:
            out[f] = flag
    size = as_int(body, "docker_volume_size", minimum=1)
    if size is not None:
        out["docker_volume_size"] = size
    port = as_int(body, "apiserver_port", minimum=1024, maximum=65535)
    if port is not None:
        out["apiserver_port"] = port
    labels = as_labels(body)
    out["labels"] = labels or {}
    tags = body.get("tags")
    if tags is not None:
        if isinstance(tags, str):
            out["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
        elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            out["tags"] = list(tags)
        else:
            raise _invalid("tags", tags)
    coe = out.get("coe")
    if coe is None:
        raise bad_request("Mandatory field missing: coe")
    if coe not in COES:
        raise _invalid("coe", coe, f"Value should be one of: {', '.join(COES)}")
    if "image_id" not in out:
        raise bad_request("Mandatory field missing: image_id")
    server_type = out.setdefault("server_type", "vm")
    if server_type not in SERVER_TYPES:
        raise bad_request(f"Server type {server_type} is not supported, expecting a "
                          f"{'/'.join((*SERVER_TYPES, 'unspecified'))} server type.")
    driver = out.setdefault("network_driver", DEFAULT_NETWORK_DRIVERS[coe])
    if driver not in COE_NETWORK_DRIVERS[coe]:
        raise bad_request(f"Network driver type {driver} is not supported, expecting a "
                          f"{'/'.join((*COE_NETWORK_DRIVERS[coe], 'unspecified'))} network driver.")
    check_labels(coe, out["labels"], driver)
    volume_driver = out.get("volume_driver")
    if volume_driver is not None and volume_driver not in VOLUME_DRIVERS[coe]:
        raise bad_request(f"Volume driver type {volume_driver} is not supported, expecting a "
                          f"{'/'.join((*VOLUME_DRIVERS[coe], 'unspecified'))} volume driver.")
    dns = out.get("dns_nameserver")
    if dns is not None and not all(_ip(a.strip()) for a in dns.split(",")):
        raise _invalid("dns_nameserver", dns, "Expected comma-separated IP addresses.")
    if "name" not in out:
        out["name"] = random_name("template")
    out.pop("driver", None)
    return out


def check_cluster_type(server_type: str, os_distro: str | None, coe: str) -> None:
    """400 with Magnum's ClusterTypeNotSupported words unless a driver provides (server_type, os_distro, coe)."""
    if (server_type, os_distro, coe) not in CLUSTER_TYPES:
        raise bad_request(f"Cluster type ({server_type}, {os_distro}, {coe}) not supported.")


def image_distro(image: dict[str, Any], ident: str) -> str:
    """The Glance image's ``os_distro`` (Magnum: 400 when the image has none)."""
    os_distro = image.get("os_distro")
    if not os_distro or not isinstance(os_distro, str):
        raise bad_request(f"Image {ident} doesn't contain os_distro field.")
    return os_distro


def check_template_type(server_type: str, coe: str, os_distro: str, cluster_distro: str | None) -> None:
    """A template's image and its ``cluster_distro`` (the image's ``os_distro`` unless the user named one) must each
    make a cluster type a driver provides."""
    check_cluster_type(server_type, os_distro, coe)
    if cluster_distro is not None and cluster_distro != os_distro:
        check_cluster_type(server_type, cluster_distro, coe)


def check_labels(coe: str, labels: dict[str, str], network_driver: str | None) -> None:
    """400 when the COE's driver would refuse a label's value (``proto/labels.py``); unknown labels pass."""
    problems = validate_labels(coe, labels, network_driver=network_driver)
    if problems:
        raise bad_request("Invalid input for field/attribute labels. " + " ".join(problems))


def _ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def cluster_fields(body: Any, version: Microversion) -> dict[str, Any]:
    """Validated fields of a cluster create request (template inheritance happens later)."""
    body = require_object(body, "cluster")
    reject_unknown(body, CLUSTER_FIELDS, "cluster")
    out: dict[str, Any] = {}
    template = body.get("cluster_template_id")
    if not isinstance(template, str) or not template:
        raise bad_request("Mandatory field missing: cluster_template_id")
    out["cluster_template_id"] = template
    name = as_str(body, "name", max_len=242)
    if name is not None and not NAME_RE.match(name):
        raise bad_request(
            f"Cluster name {name} not valid: the name must start with a letter and contain only letters, "
            "digits, '_', '.' and '-'."
        )
    out["name"] = name or random_name("cluster")
    node_count = as_int(body, "node_count", minimum=0)
    if node_count is None:
        node_count = 1
    if node_count == 0 and not version.at_least(1, 10):
        raise bad_request("node_count must be greater than 0 before API version 1.10.")
    out["node_count"] = node_count
    master_count = as_int(body, "master_count", minimum=1)
    out["master_count"] = 1 if master_count is None else master_count
    # Odd for every COE: Magnum's rule for Kubernetes (etcd's quorum), and the same quorum arithmetic for Swarm's
    # Raft managers and Mesos's ZooKeeper ensemble: an even count tolerates no more failures than one fewer.
    if out["master_count"] % 2 == 0:
        raise bad_request(f"Master node count must be odd: {out['master_count']} requested.")
    for f in ("keypair", "master_flavor_id", "flavor_id", "fixed_network", "fixed_subnet"):
        value = as_str(body, f)
        if value is not None:
            out[f] = value
    discovery = body.get("discovery_url")
    if discovery is not None:
        if not isinstance(discovery, str):
            raise _invalid("discovery_url", discovery, "Wrong type. Expected 'str'.")
        out["discovery_url"] = discovery
    size = as_int(body, "docker_volume_size", minimum=1)
    if size is not None:
        out["docker_volume_size"] = size
    timeout = as_int(body, "create_timeout", minimum=0)
    out["create_timeout"] = 60 if timeout is None else timeout
    for f in ("floating_ip_enabled", "master_lb_enabled", "merge_labels"):
        flag = as_bool(body, f)
        if flag is not None:
            out[f] = flag
    labels = as_labels(body)
    if labels:
        out["labels"] = labels
    return out


