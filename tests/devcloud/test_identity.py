"""Identity v3 through real keystoneauth/openstacksdk and the `openstack` CLI: tokens, catalog, trusts,
application credentials, revocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import openstack
import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from tests.conftest import Devcloud, wait_for

OPENSTACK = str(Path(sys.executable).with_name("openstack"))


def cli(*args: str) -> object:
    out = subprocess.run([OPENSTACK, *args, "-f", "json"], capture_output=True, text=True, timeout=60,
                         env=os.environ.copy(), check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def users(conn: openstack.connection.Connection) -> dict[str, str]:
    return {u.name: u.id for u in conn.identity.users()}


def test_token_issue_and_catalog_through_cli(devcloud: Devcloud) -> None:
    token = cli("--os-cloud", "cove-demo", "token", "issue")
    assert token["id"].startswith("gAAAA")
    assert token["project_id"]
    catalog = cli("--os-cloud", "cove-demo", "catalog", "list")
    types = {entry["Type"] for entry in catalog}
    assert {"identity", "compute", "image", "network", "load-balancer", "block-storage"} <= types


def test_sdk_endpoints_follow_the_catalog(devcloud: Devcloud) -> None:
    conn = openstack.connect(cloud="cove-demo")
    pid = conn.current_project_id
    assert conn.compute.get_endpoint() == f"{devcloud.url}/compute/v2.1"
    assert conn.network.get_endpoint() == f"{devcloud.url}/networking/v2.0"
    assert conn.load_balancer.get_endpoint() == f"{devcloud.url}/load-balancer/v2.0"
    assert conn.block_storage.get_endpoint() == f"{devcloud.url}/volume/v3/{pid}"
    assert conn.image.get_endpoint() == f"{devcloud.url}/image/v2/"


def test_auth_url_with_v3_suffix_and_wrong_password(devcloud: Devcloud) -> None:
    conn = openstack.connect(auth_url=f"{devcloud.url}/identity/v3", username="alt", password="alt-pass",
                             project_name="alt", user_domain_name="Default", project_domain_name="Default")
    assert conn.authorize()
    bad = openstack.connect(auth_url=f"{devcloud.url}/identity", username="alt", password="wrong",
                            project_name="alt", user_domain_name="Default", project_domain_name="Default")
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        bad.authorize()


def test_roles_in_token(devcloud: Devcloud) -> None:
    viewer = openstack.connect(cloud="cove-viewer")
    access = viewer.session.auth.get_access(viewer.session)
    assert access.role_names == ["reader"]
    admin = openstack.connect(cloud="cove-admin")
    assert "admin" in admin.session.auth.get_access(admin.session).role_names


def test_validate_and_revoke_token(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    token = demo.authorize()
    admin = openstack.connect(cloud="cove-admin")
    url = f"{devcloud.url}/identity/v3/auth/tokens"
    ok = admin.session.get(url, headers={"X-Subject-Token": token}, endpoint_filter=None)
    assert ok.json()["token"]["user"]["name"] == "demo"
    # a member may not validate someone else's token
    other = openstack.connect(cloud="cove-alt")
    denied = other.session.get(url, headers={"X-Subject-Token": token}, raise_exc=False)
    assert denied.status_code == 403
    admin.session.delete(url, headers={"X-Subject-Token": token})
    gone = admin.session.get(url, headers={"X-Subject-Token": token}, raise_exc=False)
    assert gone.status_code == 404
    forged = admin.session.get(url, headers={"X-Subject-Token": "gAAAAAforged"}, raise_exc=False)
    assert forged.status_code == 404


def test_trust_and_trust_scoped_token(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    admin = openstack.connect(cloud="cove-admin")
    ids = users(admin)
    trust = demo.identity.create_trust(
        trustor_user_id=ids["demo"], trustee_user_id=ids["cove"], project_id=demo.current_project_id,
        roles=[{"name": "member"}], impersonation=True,
    )
    auth = v3.Password(auth_url=f"{devcloud.url}/identity", username="cove", password="cove-pass",
                       user_domain_name="Default", trust_id=trust.id)
    sess = ks_session.Session(auth=auth)
    access = auth.get_access(sess)
    assert access.project_id == demo.current_project_id
    assert access.role_names == ["member"]
    assert access.user_id == ids["demo"]  # impersonation: the trustor acts
    assert access.trust_id == trust.id
    # a trust-scoped token works against the services of the trustor's project
    trusted = openstack.connection.Connection(session=sess)
    assert trusted.identity.get_project(demo.current_project_id).name == "demo"
    # a trust may not delegate roles the trustor lacks
    with pytest.raises(openstack.exceptions.ForbiddenException):
        demo.identity.create_trust(trustor_user_id=ids["demo"], trustee_user_id=ids["cove"],
                                   project_id=demo.current_project_id, roles=[{"name": "admin"}])
    # only the trustee may use the trust
    wrong = v3.Password(auth_url=f"{devcloud.url}/identity", username="alt", password="alt-pass",
                        user_domain_name="Default", trust_id=trust.id)
    with pytest.raises(Exception) as err:
        wrong.get_access(ks_session.Session(auth=wrong))
    assert "401" in str(err.value) or "Unauthorized" in type(err.value).__name__
    # deleting the trust ends its tokens
    token = access.auth_token
    demo.identity.delete_trust(trust)
    check = admin.session.get(f"{devcloud.url}/identity/v3/auth/tokens", headers={"X-Subject-Token": token},
                              raise_exc=False)
    assert check.status_code == 404


def test_application_credential(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    user_id = demo.current_user_id
    cred = demo.identity.create_application_credential(user=user_id, name="ci-cred", roles=[{"name": "reader"}])
    assert cred.secret
    conn = openstack.connect(auth_type="v3applicationcredential", auth_url=f"{devcloud.url}/identity",
                             application_credential_id=cred.id, application_credential_secret=cred.secret)
    access = conn.session.auth.get_access(conn.session)
    assert access.project_id == demo.current_project_id
    assert access.role_names == ["reader"]
    demo.identity.delete_application_credential(user_id, cred.id)
    again = openstack.connect(auth_type="v3applicationcredential", auth_url=f"{devcloud.url}/identity",
                              application_credential_id=cred.id, application_credential_secret=cred.secret)
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        again.authorize()


async def _auth(s: aiohttp.ClientSession, url: str, identity: dict[str, Any],
                scope: str | None = None) -> tuple[int, str | None, dict[str, Any]]:
    auth: dict[str, Any] = {"identity": identity}
    if scope:
        auth["scope"] = {"project": {"name": scope, "domain": {"name": "Default"}}}
    async with s.post(f"{url}/auth/tokens", json={"auth": auth}) as r:
        return r.status, r.headers.get("X-Subject-Token"), await r.json()


def _password(user: str, password: str) -> dict[str, Any]:
    return {"methods": ["password"],
            "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}}


async def test_application_credential_expiry_bounds_its_tokens(devcloud: Devcloud) -> None:
    """Keystone's rules: a token issued for an application credential expires no later than the credential,
    and an expired credential no longer authenticates (how a test gets a token that lives seconds)."""
    url = f"{devcloud.url}/identity/v3"
    async with aiohttp.ClientSession() as s:
        _, demo, body = await _auth(s, url, _password("demo", "demo-pass"), "demo")
        _, admin, _ = await _auth(s, url, _password("admin", "admin-pass"), "admin")
        creds = f"{url}/users/{body['token']['user']['id']}/application_credentials"
        headers = {"X-Auth-Token": str(demo)}
        async with s.post(creds, headers=headers, json={"application_credential": {
                "name": "bad-expiry", "expires_at": "tomorrow"}}) as r:
            assert r.status == 400, await r.text()
        expiry = datetime.now(UTC) + timedelta(seconds=1.5)
        async with s.post(creds, headers=headers, json={"application_credential": {
                "name": "short-lived", "expires_at": expiry.replace(tzinfo=None).isoformat()}}) as r:  # UTC
            assert r.status == 201, await r.text()
            cred = (await r.json())["application_credential"]
        by_cred = {"methods": ["application_credential"],
                   "application_credential": {"id": cred["id"], "secret": cred["secret"]}}
        status, token, body = await _auth(s, url, by_cred)
        assert status == 201, body
        assert datetime.fromisoformat(body["token"]["expires_at"]) == expiry
        check = {"X-Auth-Token": str(admin), "X-Subject-Token": str(token)}
        async with s.get(f"{url}/auth/tokens", headers=check) as r:
            assert r.status == 200

        async def refused() -> bool:
            return (await _auth(s, url, by_cred))[0] == 401

        await wait_for(refused, timeout=5, message="an expired application credential refused")
        assert datetime.now(UTC) >= expiry
        async with s.get(f"{url}/auth/tokens", headers=check) as r:
            assert r.status == 404, "the credential's token expired with it"


def test_project_isolation_in_identity(devcloud: Devcloud) -> None:
    alt = openstack.connect(cloud="cove-alt")
    demo = openstack.connect(cloud="cove-demo")
    with pytest.raises(openstack.exceptions.NotFoundException):
        alt.identity.get_project(demo.current_project_id)
    with pytest.raises(openstack.exceptions.ForbiddenException):
        list(alt.identity.users())


def test_missing_token_is_401_in_keystone_shape(devcloud: Devcloud) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{devcloud.url}/identity/v3/projects", timeout=5)
    assert err.value.code == 401
    body = json.loads(err.value.read())
    assert body["error"]["code"] == 401
    assert err.value.headers["x-openstack-request-id"].startswith("req-")
