"""Writes the clouds.yaml through which `openstack --os-cloud cove-demo ...` and `openstack.connect(cloud=...)`
reach the devcloud with no other set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deploy.devcloud.config import CloudConfig


def clouds(config: CloudConfig, public_url: str) -> dict[str, Any]:
    users = {u.name: u for u in config.users}
    entries: dict[str, Any] = {}
    for name, entry in config.clouds.items():
        user = users[entry.user]
        entries[name] = {
            "auth": {
                "auth_url": f"{public_url.rstrip('/')}/identity",
                "username": user.name,
                "password": user.password,
                "project_name": entry.project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": config.region,
            "interface": "public",
            "identity_api_version": 3,
        }
    return {"clouds": entries}


def write_clouds_yaml(path: str | Path, config: CloudConfig, public_url: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(clouds(config, public_url), sort_keys=False))
    return target
