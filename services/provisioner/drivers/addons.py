"""Site add-ons: named cloud-init fragments the operator supplies, merged into a driver's user data by label.

The operator puts one ``<name>.yaml`` per add-on in the provisioner's add-on directory (``COVE_PROVISIONER_ADDONS_DIR``,
default the repository's ``deploy/addons/``): a ``#cloud-config`` document whose top level is a mapping. A template or
cluster label ``addons`` (comma-separated names, ``proto.labels.addon_names``) switches add-ons on; the API refuses a
name the catalog does not hold (it asks the provisioner over ``cove.rpc.provisioner.addons``).

``apply`` merges the fragments into a driver's rendered ``#cloud-config``, in the order the label names them:
lists (``write_files``, ``runcmd``, ``bootcmd``, ``packages``, ``mounts``, ...) are appended after the driver's,
mappings are merged key by key, and a scalar that differs from the driver's (or an earlier add-on's) value is a
``ValueError`` naming the add-on and the key: an add-on adds to a node, it never silently changes what the driver
decided. The catalog is loaded once, when the provisioner starts; a file that is not a cloud-config mapping stops the
start with the file named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from proto.labels import ADDON_NAME_RE, addon_names
from proto.requests import AddonCatalog, ListAddons, Message
from services.provisioner.drivers.render import cloud_config

log = structlog.get_logger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "deploy" / "addons"
"""The repository's examples (CVMFS, EOS): the default when ``COVE_PROVISIONER_ADDONS_DIR`` is not set."""
HEADER = "#cloud-config"
MAX_FRAGMENT_BYTES = 16 * 1024
"""A fragment's size limit: Nova refuses user data over 64 KiB, and the driver's own document needs most of it."""


@dataclass(frozen=True)
class Fragment:
    """One add-on: its name, the file it came from, and its cloud-config mapping."""

    name: str
    path: Path
    config: Mapping[str, Any]


class Catalog:
    """The add-ons this cloud offers, by name (loaded once at start)."""

    def __init__(self, fragments: Iterable[Fragment] = ()) -> None:
        self.fragments: dict[str, Fragment] = {f.name: f for f in fragments}

    @classmethod
    def load(cls, directory: Path | str) -> Catalog:
        """Every ``<name>.yaml`` in ``directory``; ``ValueError`` naming the file for one that is not an add-on.
        A missing directory is an empty catalog (the cloud offers no add-ons)."""
        directory = Path(directory)
        if not directory.is_dir():
            log.warning("addons_directory_missing", directory=str(directory))
            return cls()
        fragments = [load_fragment(path) for path in sorted(directory.glob("*.yaml"))]
        log.info("addons_loaded", directory=str(directory), names=[f.name for f in fragments])
        return cls(fragments)

    @property
    def names(self) -> list[str]:
        return sorted(self.fragments)

    def select(self, labels: Mapping[str, str]) -> list[Fragment]:
        """The fragments the ``addons`` label names, in its order; ``ValueError`` for a name not in the catalog
        (the API refuses those, so this means the catalog changed since)."""
        out = []
        for name in addon_names(labels):
            fragment = self.fragments.get(name)
            if fragment is None:
                raise ValueError(f"Unknown add-on {name!r}; this cloud offers: {', '.join(self.names) or 'none'}.")
            out.append(fragment)
        return out

    def render(self, user_data: str, labels: Mapping[str, str]) -> str:
        """``user_data`` with the add-ons ``labels`` switch on merged in (unchanged when none is)."""
        fragments = self.select(labels)
        return apply(user_data, fragments) if fragments else user_data

    async def answer(self, request: Message) -> Message:
        """The RPC ``cove.rpc.provisioner.addons``: the names on offer."""
        if not isinstance(request, ListAddons):
            raise TypeError(f"expected ListAddons, got {type(request).__name__}")
        return AddonCatalog(names=self.names)


def directory_of(extra: Mapping[str, str]) -> Path:
    """The add-on directory of the provisioner's configuration (``COVE_PROVISIONER_ADDONS_DIR``)."""
    configured = extra.get("COVE_PROVISIONER_ADDONS_DIR")
    return Path(configured) if configured else DEFAULT_DIR


def load_fragment(path: Path) -> Fragment:
    """One add-on file; ``ValueError`` naming ``path`` when its name or content is not an add-on's."""
    name = path.name.removesuffix(".yaml")
    if not ADDON_NAME_RE.fullmatch(name):
        raise ValueError(f"add-on file {path}: the name {name!r} must match {ADDON_NAME_RE.pattern}")
    raw = path.read_bytes()
    if len(raw) > MAX_FRAGMENT_BYTES:
        raise ValueError(f"add-on file {path}: {len(raw)} bytes, more than {MAX_FRAGMENT_BYTES}")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"add-on file {path}: not UTF-8 text") from None
    if text.splitlines()[:1] != [HEADER]:
        raise ValueError(f"add-on file {path}: the first line must be {HEADER!r}")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"add-on file {path}: not YAML: {exc}") from None
    if not isinstance(config, dict) or not config or not all(isinstance(k, str) for k in config):
        raise ValueError(f"add-on file {path}: a cloud-config document must be a mapping of module keys")
    return Fragment(name=name, path=path, config=config)


def parse_cloud_config(user_data: str) -> dict[str, Any]:
    """A driver's rendered ``#cloud-config`` as a mapping (``ValueError`` for anything else)."""
    if not user_data.startswith(HEADER + "\n"):
        raise ValueError("add-ons merge only into a #cloud-config document")
    doc = yaml.safe_load(user_data)
    if isinstance(doc, dict):
        return doc
    raise ValueError("the driver's user data is not a cloud-config mapping")


def apply(user_data: str, fragments: Sequence[Fragment]) -> str:
    """``user_data`` (a driver's ``#cloud-config``) with ``fragments`` merged in, in order (see the module's rules)."""
    doc = parse_cloud_config(user_data)
    for fragment in fragments:
        doc = _merge(doc, fragment.config, fragment.name, ())
    return cloud_config(doc)


def _merge(base: dict[str, Any], extra: Mapping[str, Any], addon: str, where: tuple[str, ...]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        path = (*where, str(key))
        if key not in out or out[key] is None:
            out[key] = value
        elif isinstance(out[key], list) and isinstance(value, list):
            out[key] = [*out[key], *value]
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, addon, path)
        elif isinstance(out[key], (list, dict)) or isinstance(value, (list, dict)):
            raise ValueError(f"add-on {addon!r}: key {'.'.join(path)} is a {type(value).__name__} where the user "
                             f"data has a {type(out[key]).__name__}")
        elif out[key] != value:
            raise ValueError(f"add-on {addon!r}: key {'.'.join(path)} is {value!r} where the user data already says "
                             f"{out[key]!r}")
    return out
