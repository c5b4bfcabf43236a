"""Image (Glance v2) through real openstacksdk and the `openstack` CLI: discovery, seeded images, list filters,
find by name, get with custom properties, `next` paging, and create/upload/delete of a private image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack import exceptions

from deploy.devcloud.image import image_id
from tests.conftest import Devcloud

OPENSTACK = str(Path(sys.executable).with_name("openstack"))


def cli(*args: str) -> Any:
    out = subprocess.run([OPENSTACK, "--os-cloud", "cove-demo", *args, "-f", "json"], check=False,
                         capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_discovery_and_seeded_images(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    assert conn.image.get_endpoint() == f"{devcloud.url}/image/v2/"
    images = {i.name: i for i in conn.image.images()}
    assert {"fedora-coreos", "ubuntu-22.04"} <= set(images)
    ubuntu = images["ubuntu-22.04"]
    assert ubuntu.id == image_id("ubuntu-22.04")  # stable across restarts
    assert ubuntu.status == "active" and ubuntu.visibility == "public"
    assert ubuntu.os_distro == "ubuntu"
    admin = openstack.connect(cloud="cove-admin")
    assert ubuntu.owner_id == admin.current_project_id
    raw = conn.image.get(f"/images/{ubuntu.id}").json()
    assert raw["os_distro"] == "ubuntu" and raw["min_disk"] == 3  # unwrapped, properties top-level


def test_find_get_and_filters(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    found = conn.image.find_image("fedora-coreos", ignore_missing=False)
    assert conn.image.get_image(found.id).name == "fedora-coreos"
    with pytest.raises(exceptions.NotFoundException):
        conn.image.find_image("no-such-image", ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image("7b0f4b8e-0000-4000-8000-000000000000")
    ids = [image_id("fedora-coreos"), image_id("ubuntu-22.04")]
    by_ids = conn.image.get(f"/images?id=in:{','.join(ids)}").json()
    assert sorted(i["id"] for i in by_ids["images"]) == sorted(ids)
    assert by_ids["first"] == "/v2/images" and by_ids["schema"] == "/v2/schemas/images"
    assert [i.name for i in conn.image.images(os_distro="fedora-coreos")] == ["fedora-coreos"]
    assert [i.name for i in conn.image.images(name="ubuntu-22.04", status="active")] == ["ubuntu-22.04"]
    assert list(conn.image.images(visibility="private")) == []
    names = [i.name for i in conn.image.images(sort_key="name", sort_dir="asc")]
    assert names == sorted(names)


def test_paging_follows_next(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    first = conn.image.get("/images?limit=1").json()
    assert first["next"].startswith("/v2/images?") and "marker=" in first["next"]
    everything = {i.id for i in conn.image.images()}
    paged = [i.id for i in conn.image.images(limit=1)]
    assert len(paged) == len(everything) and set(paged) == everything
    bad = conn.image.get("/images?marker=nope", raise_exc=False)
    assert bad.status_code == 400


def test_private_image_create_upload_delete(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    alt = openstack.connect(cloud="cove-alt")
    viewer = openstack.connect(cloud="cove-viewer")
    image = demo.image.create_image(name="test-img-private", disk_format="raw", container_format="bare",
                                    visibility="private", allow_duplicates=True)
    try:
        assert image.status == "queued"
        demo.image.put(f"/images/{image.id}/file", data=b"hello", headers={"Content-Type":
                                                                           "application/octet-stream"})
        got = demo.image.get_image(image.id)
        assert got.status == "active" and got.size == 5
        with pytest.raises(exceptions.NotFoundException):
            alt.image.get_image(image.id)
        assert image.id not in {i.id for i in alt.image.images()}
        with pytest.raises(exceptions.ForbiddenException):
            viewer.image.delete_image(image)
    finally:
        demo.image.delete_image(image)
    with pytest.raises(exceptions.NotFoundException):
        demo.image.get_image(image.id)


def test_cli_image_list_and_show(devcloud: Devcloud) -> None:
    listed = cli("image", "list")
    assert {"fedora-coreos", "ubuntu-22.04"} <= {i["Name"] for i in listed}
    shown = cli("image", "show", "ubuntu-22.04")
    assert shown["id"] == image_id("ubuntu-22.04")
    assert shown["status"] == "active"
    assert shown["properties"]["os_distro"] == "ubuntu"
