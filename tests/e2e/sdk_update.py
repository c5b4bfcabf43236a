"""Run by tests/e2e/test_client_paging_and_updates.py under a chosen openstacksdk (PYTHONPATH): the update
calls as Ansible's openstack.cloud collection makes them, by uuid. Prints one JSON line: the SDK's version, the
PATCH body it sent, and the updated resource's node_count or name.

    python sdk_update.py cluster <uuid> <node_count>
    python sdk_update.py template <uuid> <name>
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openstack
import openstack.version
from keystoneauth1 import session as ks_session

sent: list[Any] = []
_request = ks_session.Session.request


def _recording(self: ks_session.Session, url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    if method == "PATCH":
        sent.append(kwargs.get("json"))
    return _request(self, url, method, *args, **kwargs)


ks_session.Session.request = _recording  # type: ignore[method-assign]


def main(kind: str, ident: str, value: str) -> None:
    coe = openstack.connect(cloud="cove-demo").container_infrastructure_management
    out: dict[str, Any] = {"sdk": openstack.version.__version__}
    if kind == "cluster":
        out["node_count"] = coe.update_cluster(ident, node_count=int(value)).node_count
    else:
        out["name"] = coe.update_cluster_template(ident, name=value).name
    out["patch"] = sent[-1]
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
