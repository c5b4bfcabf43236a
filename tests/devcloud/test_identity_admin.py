"""Keystone's admin API in the devcloud, driven as an operator would: the `openstack` CLI for users, projects,
groups and role grants, a token for the new user, openstacksdk's identity proxy for the rest. Every change that
makes tokens invalid is checked twice: validation (`GET /v3/auth/tokens` + `X-Subject-Token`) answers 404, and an
OS-REVOKE event names it (Cove's API drops its cached tokens from those events).

The devcloud fixture is shared by the session: names are unique and every test deletes what it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openstack
import pytest
import requests
from openstack.connection import Connection

from tests.conftest import Devcloud

OPENSTACK = str(Path(sys.executable).with_name("openstack"))


def cli(*args: str, fmt: bool = True) -> Any:
    out = subprocess.run([OPENSTACK, *args, *(["-f", "json"] if fmt else [])], capture_output=True, text=True,
                         timeout=60, env=os.environ.copy(), check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if fmt and out.stdout.strip() else None


def admin_cli(*args: str, fmt: bool = True) -> Any:
    return cli("--os-cloud", "cove-admin", *args, fmt=fmt)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connect_as(devcloud: Devcloud, user: str, password: str, project: str) -> Connection:
    return openstack.connect(auth_url=f"{devcloud.url}/identity", username=user, password=password,
                             project_name=project, user_domain_name="Default", project_domain_name="Default")


def token_status(admin: Connection, devcloud: Devcloud, token: str) -> int:
    resp = admin.session.get(f"{devcloud.url}/identity/v3/auth/tokens", headers={"X-Subject-Token": token},
                             raise_exc=False)
    return int(resp.status_code)


def revoke_events(admin: Connection, devcloud: Devcloud, since: str) -> list[dict[str, Any]]:
    resp = admin.session.get(f"{devcloud.url}/identity/v3/OS-REVOKE/events", params={"since": since})
    return list(resp.json()["events"])


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def admin(devcloud: Devcloud) -> Connection:
    return openstack.connect(cloud="cove-admin")


@pytest.fixture
def tenant(devcloud: Devcloud, admin: Connection) -> Iterator[dict[str, str]]:
    """A fresh project and a user with the member role on it, made through the CLI; removed afterwards."""
    project, user, password = unique("proj"), unique("user"), uuid.uuid4().hex
    p = admin_cli("project", "create", project, "--domain", "default", "--description", "an onboarding test")
    u = admin_cli("user", "create", user, "--password", password, "--project", project, "--domain", "default")
    admin_cli("role", "add", "--user", user, "--project", project, "member", fmt=False)
    yield {"project": project, "project_id": p["id"], "user": user, "user_id": u["id"], "password": password}
    if admin.identity.find_user(u["id"], ignore_missing=True):
        admin.identity.delete_user(u["id"])
    if admin.identity.find_project(p["id"], ignore_missing=True):
        admin.identity.delete_project(p["id"])


def test_cli_user_create_role_add_and_the_new_users_token(devcloud: Devcloud, admin: Connection,
                                                          tenant: dict[str, str]) -> None:
    shown = admin_cli("user", "show", tenant["user"])
    assert shown["default_project_id"] == tenant["project_id"]
    assert shown["enabled"] is True
    assignments = admin_cli("role", "assignment", "list", "--user", tenant["user"], "--names")
    assert [(a["Role"], a["User"], a["Project"]) for a in assignments] == [
        ("member", f"{tenant['user']}@Default", f"{tenant['project']}@Default")]

    # the new user's token, from the CLI with plain --os-* options, then through openstacksdk
    token = cli("--os-auth-url", f"{devcloud.url}/identity", "--os-username", tenant["user"],
                "--os-password", tenant["password"], "--os-project-name", tenant["project"],
                "--os-user-domain-name", "Default", "--os-project-domain-name", "Default", "token", "issue")
    assert token["project_id"] == tenant["project_id"]
    assert token["user_id"] == tenant["user_id"]
    conn = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
    access = conn.session.auth.get_access(conn.session)
    assert access.role_names == ["member"]
    assert conn.block_storage.get_endpoint() == f"{devcloud.url}/volume/v3/{tenant['project_id']}"
    assert conn.compute.get_endpoint() == f"{devcloud.url}/compute/v2.1"
    assert list(conn.compute.servers()) == []  # its own, empty project
    assert conn.identity.get_user(tenant["user_id"]).name == tenant["user"]  # a user reads itself
    with pytest.raises(openstack.exceptions.ForbiddenException):
        list(conn.identity.users())

    # a group brings its roles: the next token carries both, and `--effective` shows where each comes from
    group = unique("group")
    admin_cli("group", "create", group, "--domain", "default")
    try:
        admin_cli("group", "add", "user", group, tenant["user"], fmt=False)
        admin_cli("role", "add", "--group", group, "--project", tenant["project"], "reader", fmt=False)
        again = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
        assert again.session.auth.get_access(again.session).role_names == ["member", "reader"]
        effective = admin_cli("role", "assignment", "list", "--user", tenant["user"], "--effective", "--names")
        assert sorted(a["Role"] for a in effective) == ["member", "reader"]
        direct = admin_cli("role", "assignment", "list", "--group", group, "--names")
        assert [(a["Role"], a["Group"]) for a in direct] == [("reader", f"{group}@Default")]
        assert [g.name for g in admin.identity.user_groups(tenant["user_id"])] == [group]
    finally:
        admin_cli("group", "delete", group, fmt=False)


def test_a_reader_or_member_cannot_administer_identities(devcloud: Devcloud) -> None:
    viewer = openstack.connect(cloud="cove-viewer")
    resp = viewer.session.post(f"{devcloud.url}/identity/v3/users", json={"user": {"name": unique("nope")}},
                               raise_exc=False)
    assert resp.status_code == 403
    assert resp.json() == {"error": {"code": 403, "title": "Forbidden", "message":
                                     "You are not authorized to perform the requested action: identity:create_user."}}
    out = subprocess.run([OPENSTACK, "--os-cloud", "cove-viewer", "user", "create", unique("nope")],
                         capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False)
    assert out.returncode != 0
    assert "identity:create_user" in out.stderr and "403" in out.stderr
    demo = openstack.connect(cloud="cove-demo")
    with pytest.raises(openstack.exceptions.ForbiddenException):
        demo.identity.create_project(name=unique("nope"))
    with pytest.raises(openstack.exceptions.ForbiddenException):
        demo.identity.create_role(name=unique("nope"))


def test_deleting_a_project_ends_its_tokens_and_orphans_its_servers(devcloud: Devcloud, admin: Connection,
                                                                    tenant: dict[str, str]) -> None:
    user = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
    token = user.authorize()
    flavor = user.compute.find_flavor("m1.tiny")
    image = user.image.find_image("ubuntu-22.04")
    assert flavor is not None and image is not None
    server = user.compute.create_server(name=unique("srv"), flavor_id=flavor.id, image_id=image.id,
                                        networks="none")
    assert token_status(admin, devcloud, token) == 200
    since = now_iso()

    admin_cli("project", "delete", tenant["project"], fmt=False)

    assert token_status(admin, devcloud, token) == 404
    assert {"project_id": tenant["project_id"]}.items() <= revoke_events(admin, devcloud, since)[0].items()
    stale = requests.get(f"{devcloud.url}/compute/v2.1/servers", headers={"X-Auth-Token": token}, timeout=10)
    assert stale.status_code == 401  # every service refuses it: the project's resources are out of its reach
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"]).authorize()
    assert admin_cli("role", "assignment", "list", "--user", tenant["user"]) == []
    # the servers stay, owned by a project nobody can scope to: orphans an admin finds and deletes
    orphans = [s for s in admin.compute.servers(all_projects=True) if s.id == server.id]
    assert [s.project_id for s in orphans] == [tenant["project_id"]]
    admin.compute.delete_server(server.id)


def test_disabling_changing_the_password_of_and_deleting_a_user(devcloud: Devcloud, admin: Connection,
                                                                tenant: dict[str, str]) -> None:
    def login(password: str = tenant["password"]) -> str:
        return str(connect_as(devcloud, tenant["user"], password, tenant["project"]).authorize())

    token = login()
    since = now_iso()
    admin_cli("user", "set", "--disable", tenant["user"], fmt=False)
    assert token_status(admin, devcloud, token) == 404
    assert any(e.get("user_id") == tenant["user_id"] for e in revoke_events(admin, devcloud, since))
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        login()

    admin.identity.update_user(tenant["user_id"], enabled=True)
    token = login()
    admin.identity.update_user(tenant["user_id"], password="a-new-password")
    assert token_status(admin, devcloud, token) == 404
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        login()
    token = login("a-new-password")
    # self-service, as `openstack user password set` does it: the original password proves it, the tokens end
    own = f"{devcloud.url}/identity/v3/users/{tenant['user_id']}/password"
    wrong = requests.post(own, headers={"X-Auth-Token": token}, timeout=10,
                          json={"user": {"original_password": "guess", "password": "x"}})
    assert wrong.status_code == 401
    # ... and the user changes it with the real CLI, authenticated as itself
    cli("--os-auth-url", f"{devcloud.url}/identity", "--os-identity-api-version", "3",
        "--os-username", tenant["user"], "--os-password", "a-new-password", "--os-project-name", tenant["project"],
        "--os-user-domain-name", "Default", "--os-project-domain-name", "Default",
        "user", "password", "set", "--original-password", "a-new-password", "--password", "third", fmt=False)
    assert token_status(admin, devcloud, token) == 404
    token = login("third")

    since = now_iso()
    admin_cli("user", "delete", tenant["user"], fmt=False)
    assert token_status(admin, devcloud, token) == 404
    assert [e["user_id"] for e in revoke_events(admin, devcloud, since)] == [tenant["user_id"]]
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        login("third")
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_user(tenant["user_id"])


def test_revoking_a_role_ends_the_tokens_that_carried_it(devcloud: Devcloud, admin: Connection,
                                                         tenant: dict[str, str]) -> None:
    project = admin.identity.get_project(tenant["project_id"])
    user = admin.identity.get_user(tenant["user_id"])
    reader = admin.identity.find_role("reader")
    member = admin.identity.find_role("member")
    admin.identity.assign_project_role_to_user(project, user, reader)
    assert admin.identity.validate_user_has_project_role(project, user, reader)
    grants = admin.session.get(
        f"{devcloud.url}/identity/v3/projects/{project.id}/users/{user.id}/roles").json()["roles"]
    assert sorted(r["name"] for r in grants) == ["member", "reader"]
    conn = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
    token = conn.authorize()
    since = now_iso()

    admin_cli("role", "remove", "--user", tenant["user"], "--project", tenant["project"], "member", fmt=False)

    assert token_status(admin, devcloud, token) == 404
    events = revoke_events(admin, devcloud, since)
    assert [(e["user_id"], e["project_id"], e["role_id"]) for e in events] == [(user.id, project.id, member.id)]
    assert not admin.identity.validate_user_has_project_role(project, user, member)
    fresh = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
    assert fresh.session.auth.get_access(fresh.session).role_names == ["reader"]
    missing = admin.session.delete(
        f"{devcloud.url}/identity/v3/projects/{project.id}/users/{user.id}/roles/{member.id}", raise_exc=False)
    assert missing.status_code == 404
    assert missing.json()["error"]["title"] == "Not Found"


def test_groups_through_the_sdk(devcloud: Devcloud, admin: Connection, tenant: dict[str, str]) -> None:
    group = admin.identity.create_group(name=unique("group"), description="testers")
    try:
        assert not admin.identity.check_user_in_group(tenant["user_id"], group)
        admin.identity.add_user_to_group(tenant["user_id"], group)
        assert admin.identity.check_user_in_group(tenant["user_id"], group)
        assert [u.id for u in admin.identity.group_users(group)] == [tenant["user_id"]]
        assert group.id in {g.id for g in admin.identity.groups(name=group.name)}
        admin.identity.remove_user_from_group(tenant["user_id"], group)
        assert not admin.identity.check_user_in_group(tenant["user_id"], group)
    finally:
        admin.identity.delete_group(group)
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_group(group.id)


def test_roles_and_role_assignment_filters(devcloud: Devcloud, admin: Connection, tenant: dict[str, str]) -> None:
    role = admin.identity.create_role(name=unique("auditor"))
    try:
        assert admin.identity.get_role(role.id).name == role.name
        with pytest.raises(openstack.exceptions.ConflictException):
            admin.identity.create_role(name=role.name)
        admin.identity.assign_project_role_to_user(tenant["project_id"], tenant["user_id"], role.id)
        found = list(admin.identity.role_assignments(role_id=role.id))
        assert [(a.user["id"], a.scope["project"]["id"]) for a in found] == [
            (tenant["user_id"], tenant["project_id"])]
        by_project = admin.identity.role_assignments(scope_project_id=tenant["project_id"])
        assert sorted(a.role["id"] for a in by_project) == sorted([role.id, admin.identity.find_role("member").id])
        conn = connect_as(devcloud, tenant["user"], tenant["password"], tenant["project"])
        token = conn.authorize()
        assert sorted(conn.session.auth.get_access(conn.session).role_names) == sorted(["member", role.name])
    finally:
        admin.identity.delete_role(role)
    assert token_status(admin, devcloud, token) == 404  # deleting a role ends the tokens that carried it
    assert list(admin.identity.role_assignments(role_id=role.id)) == []


def test_domains_lifecycle(devcloud: Devcloud, admin: Connection) -> None:
    domain = admin.identity.create_domain(name=unique("dom"), description="a customer")
    project = admin.identity.create_project(name=unique("proj"), domain_id=domain.id)
    user = admin.identity.create_user(name=unique("user"), domain_id=domain.id, password="pw",
                                      default_project_id=project.id)
    admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role("member"))
    conn = openstack.connect(auth_url=f"{devcloud.url}/identity", username=user.name, password="pw",
                             project_name=project.name, user_domain_id=domain.id, project_domain_id=domain.id)
    token = conn.authorize()
    assert [d.name for d in admin.identity.domains(name=domain.name)] == [domain.name]

    with pytest.raises(openstack.exceptions.ForbiddenException, match="disable it first"):
        admin.identity.delete_domain(domain)
    admin.identity.update_domain(domain, enabled=False)
    assert token_status(admin, devcloud, token) == 404
    admin.identity.delete_domain(domain)
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_domain(domain.id)
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_user(user.id)
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_project(project.id)
    with pytest.raises(openstack.exceptions.ForbiddenException):
        admin.identity.update_domain("default", enabled=False)


def test_user_list_filters_and_duplicates(devcloud: Devcloud, admin: Connection, tenant: dict[str, str]) -> None:
    assert [u.id for u in admin.identity.users(name=tenant["user"], domain_id="default")] == [tenant["user_id"]]
    assert list(admin.identity.users(name=tenant["user"], domain_id="elsewhere")) == []
    resp = admin.session.post(f"{devcloud.url}/identity/v3/users",
                              json={"user": {"name": tenant["user"], "domain_id": "default"}}, raise_exc=False)
    assert resp.status_code == 409
    assert resp.json()["error"]["title"] == "Conflict"
    assert {u.name for u in admin.identity.users()} >= {"admin", "demo", "viewer", "cove", tenant["user"]}
