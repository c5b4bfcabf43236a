"""Magnum's JSON-patch (RFC 6902 subset: add, replace, remove) as pure functions over plain dicts.

Magnum's rules on top of the RFC (``magnum/api/controllers/v1/types.py::JsonPatchType`` and
``api/utils.py::apply_jsonpatch``):

* ``path`` matches ``^(/[\\w-]+)+$``; ``op`` is one of add, replace, remove; add and replace need a ``value``.
* internal paths (``/uuid``, ``/project_id``...) can never be patched; non-removable ones can't be removed.
* ``add`` on a root attribute that exists and is not null is refused ("use replace"); ``add`` of an unknown
  root attribute is refused; ``replace`` of an unknown attribute fails as in jsonpatch.
* ``replace /labels`` (and ``/health_status_reason``, ``/node_labels``, ``/node_taints``) accepts a
  Python-literal string, as python-magnumclient sends ``str(dict)``.
* ``remove`` of a root attribute sets it to null (Magnum saves the unset field as None).

One leniency past Magnum (docs/api-compatibility.md): openstacksdk's ``update_cluster(<uuid>, node_count=3)``
and ``update_cluster_template(<uuid>, ...)`` (every release to this day; Ansible's openstack.cloud collection 2.5,
which needs openstacksdk < 4.15, calls them so) diff an object that holds only the uuid against the one wanted,
and send ``[{"op": "move", "from": "/uuid", "path": "/id"}, {"op": "add", "path": "/node_count", "value": 3}]``.
Magnum refuses both operations (400), so those users cannot resize a cluster. The meaning is unambiguous: the
move renames the uuid to the SDK's own alias and changes nothing; the ``add`` of an attribute the SDK did not
hold is, in RFC 6902, a replace. So exactly that move is dropped as the no-op it is, and only in a patch that
carries it, a root ``add`` of an attribute that exists replaces it as the RFC says. Any other ``move``, and every
``add`` on an existing attribute in a patch without the SDK's move, stays Magnum's 400.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterable
from typing import Any

from services.api.errors import ApiError, bad_request

PATH_RE = re.compile(r"^(/[\w-]+)+$")
OPS = ("add", "replace", "remove")
BASE_INTERNAL = frozenset({"/created_at", "/id", "/links", "/updated_at", "/uuid", "/project_id", "/user_id"})
LITERAL_PATHS = frozenset({"/labels", "/health_status_reason", "/node_labels", "/node_taints"})
SDK_ID_ALIAS_MOVE = {"op": "move", "from": "/uuid", "path": "/id"}
"""What openstacksdk < 4.15 prepends to every Magnum PATCH; see the module's docstring."""

TEMPLATE_INTERNAL = BASE_INTERNAL
TEMPLATE_NON_REMOVABLE = frozenset({
    "/coe", "/image_id", "/network_driver", "/external_network_id", "/tls_disabled", "/public", "/server_type",
    "/registry_enabled", "/cluster_distro", "/hidden",
})
CLUSTER_INTERNAL = BASE_INTERNAL | frozenset({
    "/api_address", "/node_addresses", "/master_addresses", "/stack_id", "/cluster_id", "/ca_cert_ref",
    "/magnum_cert_ref", "/trust_id", "/trustee_user_name", "/trustee_password", "/trustee_user_id",
    "/etcd_ca_cert_ref", "/front_proxy_ca_cert_ref",
})
CLUSTER_NON_REMOVABLE: frozenset[str] = frozenset()


class PatchError(ApiError):
    """Magnum's PatchError: 400 "Couldn't apply patch '<patch>'. Reason: <why>"."""

    def __init__(self, patch: Any, reason: str) -> None:
        super().__init__(400, f"Couldn't apply patch '{_render(patch)}'. Reason: {reason}")


def _render(patch: Any) -> str:
    try:
        return json.dumps(patch)
    except (TypeError, ValueError):
        return repr(patch)


def parse_patch(body: Any, *, internal: Iterable[str], non_removable: Iterable[str]) -> list[dict[str, Any]]:
    """Validate the request body as Magnum's ``[JsonPatchType]``; returns normalised operations."""
    internal, non_removable = frozenset(internal), frozenset(non_removable)
    if isinstance(body, dict):
        body = [body]  # WSME accepts a single object where a list is expected
    if not isinstance(body, list) or not body:
        raise bad_request("Invalid input for field/attribute patch. Value: a non-empty JSON-patch list is required.")
    sdk_diff = SDK_ID_ALIAS_MOVE in body
    if sdk_diff:
        body = [item for item in body if item != SDK_ID_ALIAS_MOVE]
    ops: list[dict[str, Any]] = []
    for item in body:
        if not isinstance(item, dict):
            raise bad_request(f"Invalid input for field/attribute patch. Value: '{item}'.")
        unknown = sorted(set(item) - {"op", "path", "value"})
        if unknown:
            raise bad_request(f"Unknown attribute for argument patch: {', '.join(unknown)}")
        path, op = item.get("path"), item.get("op")
        if not isinstance(path, str) or not PATH_RE.match(path):
            raise bad_request(
                f"Invalid input for field/attribute path. Value: '{path}'. "
                f"Value should match the pattern {PATH_RE.pattern}"
            )
        if op not in OPS:
            raise bad_request(
                f"Invalid input for field/attribute op. Value: '{op}'. Value should be one of: {', '.join(OPS)}"
            )
        if path in internal:
            raise bad_request(f"'{path}' is an internal attribute and can not be updated")
        if op == "remove" and path in non_removable:
            raise bad_request(f"'{path}' is a mandatory attribute and can not be removed")
        normalised: dict[str, Any] = {"op": op, "path": path}
        if sdk_diff and op == "add":
            normalised["rfc_add"] = True  # RFC 6902: an add on an existing member replaces it
        if op != "remove":
            if "value" not in item:
                raise bad_request("'add' and 'replace' operations needs value")
            value = item["value"]
            if isinstance(value, (list, float)) or (isinstance(value, dict) and path not in LITERAL_PATHS):
                # Magnum's value type is MultiType(text, int); dicts only where a literal dict is expected.
                raise bad_request(f"Invalid input for field/attribute value. Value: '{value}'. Wrong type.")
            normalised["value"] = value
        elif "value" in item:
            normalised["value"] = item["value"]
        ops.append(normalised)
    return ops


def _literal_dict(value: Any, patch: Any) -> Any:
    if isinstance(value, dict):
        return value
    if value is None:
        return None
    if not isinstance(value, str):
        raise PatchError(patch, f"malformed value {value!r}: a dict is expected")
    try:
        parsed = ast.literal_eval(value)
    except (SyntaxError, ValueError) as exc:
        raise PatchError(patch, str(exc) or "malformed node or string") from None
    if not isinstance(parsed, dict):
        raise PatchError(patch, f"malformed value {value!r}: a dict is expected")
    return parsed


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A patched deep copy of ``doc`` (the source is never changed). Raises ``ApiError(400)``."""
    out = copy.deepcopy(doc)
    for p in ops:
        op, path = p["op"], p["path"]
        parts = path.lstrip("/").split("/")
        root = parts[0]
        if op == "add" and len(parts) == 1:
            if root not in out:
                raise bad_request(f"Adding a new attribute {path} to the root of the resource is not allowed.")
            if out[root] is not None and not p.get("rfc_add"):
                raise bad_request(f"The attribute {path} has existed, please use 'replace' operation instead.")
        value = p.get("value")
        if op == "replace" and path in LITERAL_PATHS:
            value = _literal_dict(value, ops)
        if len(parts) == 1:
            if root not in out:
                raise PatchError(ops, f"can't {op} a non-existent object '{root}'")
            out[root] = None if op == "remove" else value
            continue
        # nested: walk dicts down to the parent of the last part
        parent: Any = out
        for part in parts[:-1]:
            if not isinstance(parent, dict) or parent.get(part) is None:
                if op == "add" and isinstance(parent, dict) and part == root and parent.get(part) is None:
                    parent[part] = {}
                else:
                    raise PatchError(ops, f"can't {op} a non-existent object '{part}'")
            parent = parent[part]
        if not isinstance(parent, dict):
            raise PatchError(ops, f"can't {op} inside a non-object at '{path}'")
        leaf = parts[-1]
        if op == "add":
            parent[leaf] = value
        elif leaf not in parent:
            raise PatchError(ops, f"can't {op} a non-existent object '{leaf}'")
        elif op == "replace":
            parent[leaf] = value
        else:
            del parent[leaf]
    return out


def changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Root attributes whose value differs."""
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
