"""What every COE driver's user data is made of: serialisers that keep values as data, and the document's dump.

One definition each for the drivers (``kubernetes.py``, ``swarm.py``, ``mesos.py``): a ``write_files`` entry, a
shell environment file (``shlex.quote``d values), a systemd ``EnvironmentFile``, a host name from a node name, the
``host:port`` form of an endpoint, the filesystems and mounts of attached volumes, and the ``#cloud-config`` document
dumped by PyYAML (multi-line strings as literal blocks, so scripts stay readable on the node).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

ENV_PATH = "/etc/cove/node.env"
"""Every driver's shell environment file (0600): the node's facts, sourced by its constant bootstrap script."""
CA_PATH = "/etc/cove/ca.pem"
"""The cluster CA's certificate on every node (0644), whatever the COE."""
PROXY_ENV_PATH = "/etc/cove/proxy.env"
"""The proxies as a systemd ``EnvironmentFile`` (0600), for the units that fetch images."""

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def write_file(path: str, content: str, permissions: str) -> dict[str, str]:
    """One ``write_files`` entry, owned by root."""
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


def shell_env(values: dict[str, str]) -> str:
    """``NAME='value'`` lines for ``.`` in a shell: every value quoted by ``shlex.quote``."""
    for name, value in values.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"bad environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"{name} contains a NUL character")
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def systemd_env(values: dict[str, str]) -> str:
    """``NAME="value"`` lines that systemd's ``EnvironmentFile=`` and a POSIX shell both read as the same value:
    double quotes, with the four characters special inside them (``\\ " $ ```) escaped by a backslash."""
    out = []
    for name, value in values.items():
        if "\0" in value:
            raise ValueError(f"{name} contains a NUL character")
        escaped = re.sub(r'([\\"$`])', r"\\\1", value)
        out.append(f'{name}="{escaped}"\n')
    return "".join(out)


def host_name(name: str) -> str:
    """The host name for a server name: a DNS-1123 label (lowercase letters, digits and '-', at most 63
    characters), other characters replaced by '-'. Kubernetes' node names and Docker's and Mesos' node host
    names alike."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not label:
        raise ValueError(f"node name {name!r} has no letter or digit to make a host name from")
    return label


def endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def check_host(what: str, host: str) -> None:
    """``ValueError`` unless ``host`` can be a host name or an address (no space, comma or control character)."""
    if not host or any(c.isspace() or c == "," or ord(c) < 32 for c in host):
        raise ValueError(f"{what} {host!r} is not a host name or address")


def ca_keys_given(node: Any) -> list[str]:
    """The CA private keys a ``NodeContext`` carries (``ca_key_pem`` and any other ``*_ca_key_pem``), by field name:
    for drivers whose nodes must never hold one."""
    return [f.name for f in dataclasses.fields(node)
            if f.name.endswith("_key_pem") and f.name != "server_key_pem" and getattr(node, f.name) is not None]


def volume_mounts(volumes: Iterable[tuple[str | None, str, str]]) -> dict[str, Any]:
    """cloud-init's ``fs_setup`` and ``mounts`` for ``(device, mount point, filesystem label)``: each given device
    formatted ext4 once (never over an existing filesystem) and mounted before the bootstrap runs; none: ``{}``."""
    given = [(device, path, label) for device, path, label in volumes if device]
    if not given:
        return {}
    return {
        "fs_setup": [
            {"label": label, "filesystem": "ext4", "device": device, "partition": "none", "overwrite": False}
            for device, _, label in given
        ],
        "mounts": [
            [device, path, "ext4", "defaults,nofail,x-systemd.device-timeout=120", "0", "2"]
            for device, path, _ in given
        ],
    }


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with multi-line strings as literal blocks where YAML allows it (readable scripts)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """One YAML document, by PyYAML's safe dumper (literal blocks for multi-line strings, ASCII only)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000,
                     allow_unicode=False)


def dump_yaml_all(docs: Iterable[Any]) -> str:
    """Several YAML documents in one stream (kubeadm's configuration)."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000)


def cloud_config(doc: dict[str, Any]) -> str:
    """The user data: ``#cloud-config`` and the document."""
    return "#cloud-config\n" + dump_yaml(doc)


SHELL_HELPERS = r"""log() {
  printf 'cove-bootstrap: %s\n' "$*" >&2
}

# retry ATTEMPTS DELAY COMMAND...: run COMMAND until it succeeds, at most ATTEMPTS times, DELAY seconds apart.
retry() {
  local attempts=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    if [ "$n" -ge "$attempts" ]; then
      log "giving up after $n attempts: $*"
      return 1
    fi
    n=$((n + 1))
    sleep "$delay"
  done
}

use_proxy() {
  if [ -n "${HTTP_PROXY}${HTTPS_PROXY}" ]; then
    export HTTP_PROXY HTTPS_PROXY NO_PROXY
    export http_proxy="$HTTP_PROXY" https_proxy="$HTTPS_PROXY" no_proxy="$NO_PROXY"
  fi
}
"""
"""Shell functions every driver's bootstrap script starts with (spliced into the constant scripts, never fed any
value): ``log``, ``retry ATTEMPTS DELAY COMMAND...`` and ``use_proxy`` (exports the env file's proxies)."""

ENGINE_HELPERS = r"""install_engine() {
  export DEBIAN_FRONTEND=noninteractive
  retry 10 10 apt-get update -q
  retry 10 10 apt-get install -y -q ca-certificates docker.io
  systemctl daemon-reload
  systemctl enable docker
  systemctl restart docker
}

engine_up() {
  docker info >/dev/null 2>&1
}
"""
"""Debian's Docker engine for the drivers that run on it (Swarm, Mesos): ``install_engine`` and ``engine_up``."""


PROXY_DROP_IN = f"[Service]\nEnvironmentFile={PROXY_ENV_PATH}\n"
"""The systemd drop-in that hands a unit the node's proxies (``PROXY_ENV_PATH``)."""


def proxy_files(proxy: Mapping[str, str], units: Iterable[str]) -> list[dict[str, Any]]:
    """The proxy environment file (upper- and lower-case names, as tools read either) and a drop-in for each of
    ``units`` (e.g. ``docker.service``) that makes the unit read it."""
    env = {**proxy, **{k.lower(): v for k, v in proxy.items()}}
    return [write_file(PROXY_ENV_PATH, systemd_env(env), "0600"),
            *(write_file(f"/etc/systemd/system/{unit}.d/cove-proxy.conf", PROXY_DROP_IN, "0644") for unit in units)]


def node_document(hostname: str, files: list[dict[str, Any]], volumes: Iterable[tuple[str | None, str, str]],
                  script_path: str) -> str:
    """A node's whole ``#cloud-config``: its host name, its files (the bootstrap script last, already in
    ``files``), its volumes formatted and mounted, then the script run once."""
    doc: dict[str, Any] = {"hostname": hostname, "preserve_hostname": False, "write_files": files,
                           **volume_mounts(volumes), "runcmd": [[script_path]]}
    return cloud_config(doc)
