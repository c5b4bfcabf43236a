"""Auth and policy: the policy engine's rules (Magnum's defaults, operator overrides), token caching for the
token's life with revocation through Keystone's OS-REVOKE events, and the API's 401/403/404 answers against a
real nats-server, PostgreSQL and the devcloud's Keystone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.api import policy
from services.api.app import build_app
from services.api.errors import ApiError
from services.api.keystone import (
    AuthContext,
    Keystone,
    ServiceCredentials,
    event_matches,
    parse_time,
    token_facts,
)
from tests.api.conftest import RunningApi, user_token
from tests.conftest import wait_for


def _ctx(roles: set[str], project: str = "p1", user: str = "u1") -> dict[str, Any]:
    return policy.credentials(AuthContext("t", user, None, project, None, frozenset(roles), datetime.now(UTC)))


# ---------------------------------------------------------------------------------------------- policy engine


@pytest.mark.parametrize(("rule", "roles", "target", "expected"), [
    ("cluster:create", {"member"}, {"project_id": "p1"}, True),
    ("cluster:create", {"reader"}, {"project_id": "p1"}, False),
    ("cluster:create", {"member"}, {"project_id": "p2"}, False),
    ("cluster:get", {"member"}, {"project_id": "p1"}, True),  # member implies reader (Keystone)
    ("cluster:get", {"reader"}, {"project_id": "p2"}, False),
    ("cluster:get", {"admin"}, {"project_id": "p2"}, True),  # admin anywhere is global (Magnum)
    ("cluster:get_all_all_projects", {"member"}, {"project_id": "p1"}, False),
    ("clustertemplate:publish", {"member"}, {"project_id": "p1"}, False),
    ("clustertemplate:publish", {"admin"}, {"project_id": "p1"}, True),
    ("certificate:create", {"member"}, {"project_id": "p1", "user_id": "u1"}, True),
    ("certificate:create", {"member"}, {"project_id": "p1", "user_id": "u2"}, True),  # any member (issue 19)
    ("certificate:create", {"member"}, {"project_id": "p2", "user_id": "u1"}, False),
    ("certificate:get", {"reader"}, {"project_id": "p1", "user_id": "u1"}, True),
    ("certificate:get", {"reader"}, {"project_id": "p1", "user_id": "u2"}, True),
    ("certificate:get", {"reader"}, {"project_id": "p2", "user_id": "u1"}, False),
    ("credential:rotate", {"admin"}, {"project_id": "p2"}, False),  # no admin clause
    ("credential:rotate", {"member"}, {"project_id": "p1"}, True),
    ("quota:get_all", {"member"}, {"project_id": "p1"}, False),
    ("quota:get", {"reader"}, {"project_id": "p1"}, True),
    ("magnum-service:get_all", {"reader"}, {"project_id": "p1"}, False),
    ("stats:get_all", {"reader"}, {"project_id": "p1"}, True),
    ("cluster:update_health_status", {"member"}, {"project_id": "p1", "user_id": "u9"}, False),
])
def test_magnum_default_rules(rule: str, roles: set[str], target: dict[str, str], expected: bool) -> None:
    assert policy.load(path=None).check(rule, _ctx(roles), target) is expected


def test_expression_language() -> None:
    check = policy.compile_rule
    pol = policy.Policy()
    creds = _ctx({"member"})
    assert check("")(creds, {}, pol) is True
    assert check("@")(creds, {}, pol) is True
    assert check("!")(creds, {}, pol) is False
    assert check("not role:admin")(creds, {}, pol) is True
    assert check("(role:admin or role:member) and project_id:%(project_id)s")(creds, {"project_id": "p1"}, pol)
    assert not check("role:member and not project_id:%(project_id)s")(creds, {"project_id": "p1"}, pol)
    assert check("is_admin:False")(creds, {}, pol) is True
    assert check("project_id:p1")(creds, {}, pol) is True
    # A missing target key never matches (no "None == None" pass).
    assert check("user_id:%(owner)s")(creds, {}, pol) is False
    for bad in ("role:admin and", "(role:admin", "role:admin )", "justaword", "or role:admin"):
        with pytest.raises(policy.PolicySyntaxError):
            check(bad)
    with pytest.raises(policy.PolicySyntaxError):
        policy.Policy({"a": "rule:nope"})


def test_operator_file_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text('"cluster:create": "role:admin"\n"cluster:get": ""\n"custom": "rule:context_is_admin"\n')
    pol = policy.load(f)
    assert pol.source == str(f)
    assert not pol.check("cluster:create", _ctx({"member"}), {"project_id": "p1"})
    assert pol.check("cluster:get", _ctx(set(), project="other"), {"project_id": "p1"})  # "" allows everyone
    assert pol.check("cluster:delete", _ctx({"member"}), {"project_id": "p1"})  # untouched default
    bad = tmp_path / "bad.yaml"
    bad.write_text('"cluster:create": "role:admin and"\n')
    with pytest.raises(policy.PolicySyntaxError):
        policy.load(bad)


# ---------------------------------------------------------------------------------------------- revocation matching


def _body(audit: str = "aud1", user: str = "u1", project: str = "p1") -> dict[str, Any]:
    return {"token": {
        "audit_ids": [audit], "user": {"id": user, "domain": {"id": "default"}},
        "project": {"id": project, "domain": {"id": "default"}}, "roles": [{"id": "r-member", "name": "member"}],
        "issued_at": "2026-01-01T00:00:00.000000Z", "expires_at": "2026-01-02T00:00:00.000000Z",
    }}


def test_revocation_event_matching() -> None:
    facts = token_facts(_body())
    issued = datetime(2026, 1, 1, tzinfo=UTC)
    later = (issued + timedelta(hours=1)).isoformat()
    earlier = (issued - timedelta(hours=1)).isoformat()
    assert event_matches({"audit_id": "aud1"}, facts, issued)
    assert not event_matches({"audit_id": "aud2"}, facts, issued)
    assert event_matches({"user_id": "u1", "issued_before": later}, facts, issued)
    assert not event_matches({"user_id": "u1", "issued_before": earlier}, facts, issued)  # token is newer
    assert event_matches({"user_id": "u1", "project_id": "p1", "issued_before": later}, facts, issued)
    assert not event_matches({"user_id": "u1", "project_id": "p2", "issued_before": later}, facts, issued)
    assert event_matches({"role_id": "r-member", "issued_before": later}, facts, issued)
    assert not event_matches({"issued_before": later}, facts, issued)  # names nothing: matches nothing


# ---------------------------------------------------------------------------------------------- against Keystone


async def _revoke(devcloud_url: str, token: str) -> None:
    async with aiohttp.ClientSession() as s, s.delete(
        f"{devcloud_url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}
    ) as r:
        assert r.status == 204


async def _get(url: str, token: str | None) -> tuple[int, Any, dict[str, str]]:
    headers = {"X-Auth-Token": token} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


@pytest.mark.integration
async def test_a_burst_of_creates_shares_one_trust_per_user_project_and_roles(api: RunningApi) -> None:
    """``cluster_trust`` hands the trust it created for the same user, project and roles within the reuse window to
    the next cluster (proto/trusts.py); another user (the viewer, whose roles differ too), the window's end, or
    reuse 0 make a new one.
    Each trust it hands out exists in Keystone."""
    auth = ServiceCredentials(auth_url=f"{api.devcloud.url}/identity")
    shared, per_cluster = Keystone(auth, trust_reuse_seconds=0.5), Keystone(auth, trust_reuse_seconds=0)
    try:
        demo = await shared.validate(await user_token(api.devcloud, "demo", "demo-pass", "demo"))
        again = await shared.validate(await user_token(api.devcloud, "demo", "demo-pass", "demo"))
        viewer = await shared.validate(await user_token(api.devcloud, "viewer", "viewer-pass", "demo"))
        first = await shared.cluster_trust(demo)
        assert await shared.cluster_trust(again) == first  # another token of the same user, project and roles
        assert (await shared.cluster_trust(viewer))[0] != first[0]
        one, two = await per_cluster.cluster_trust(demo), await per_cluster.cluster_trust(demo)
        assert len({one[0], two[0], first[0]}) == 3
        await asyncio.sleep(0.6)
        later = await shared.cluster_trust(demo)
        assert later[0] != first[0]
        for trust_id, _ in (first, later):
            url = f"{api.devcloud.url}/identity/v3/OS-TRUST/trusts/{trust_id}"
            async with aiohttp.ClientSession() as s, s.get(url, headers={"X-Auth-Token": demo.token}) as r:
                assert r.status == 200, await r.text()
    finally:
        await shared.close()
        await per_cluster.close()


@pytest.mark.integration
async def test_token_cached_for_its_life_and_dropped_on_revocation(api: RunningApi) -> None:
    """With no TTL cap, the second call does not ask Keystone; revocation still ends the token within ~1 s."""
    ks = Keystone(ServiceCredentials(auth_url=f"{api.devcloud.url}/identity"), ttl=None, revocation_interval=0.2)
    try:
        token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
        other = await user_token(api.devcloud, "demo", "demo-pass", "demo")
        ctx = await ks.validate(token)
        await ks.validate(other)
        assert ctx.project_name == "demo" and "member" in ctx.roles
        misses = ks.stats["misses"]
        for _ in range(5):
            assert (await ks.validate(token)).user_id == ctx.user_id
        assert ks.stats["misses"] == misses, "a cached token must not be validated again"
        await wait_for(lambda: ks.stats["feed_errors"] == 0 and ks._feed_ok_at > 0, timeout=5,
                       message="revocation feed polled")
        await _revoke(api.devcloud.url, token)
        await wait_for(lambda: token not in ks._cache, timeout=5, message="revoked token dropped from cache")
        with pytest.raises(ApiError) as err:
            await ks.validate(token)
        assert err.value.status == 401
        assert (await ks.validate(other)).user_id == ctx.user_id  # only the revoked token went
        with pytest.raises(ApiError) as err:
            await ks.validate("gAAAAAforged-" + uuid.uuid4().hex)
        assert err.value.status == 401
    finally:
        await ks.close()


@pytest.mark.integration
async def test_api_refuses_revoked_token_even_with_long_cache(api: RunningApi) -> None:
    ks = api.server.keystone
    saved = ks.ttl
    ks.ttl = None
    try:
        token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
        assert (await _get(f"{api.url}/v1/clusters", token))[0] == 200
        await _revoke(api.devcloud.url, token)
        _, body, headers = await wait_for(
            lambda: _get_if(f"{api.url}/v1/clusters", token, 401), timeout=5, message="revoked token refused")
        err = body["errors"][0]
        assert err["status"] == 401 and err["code"] == "client"
        assert err["request_id"] == headers["X-Openstack-Request-Id"]
        assert headers["WWW-Authenticate"].startswith("Keystone uri=")
    finally:
        ks.ttl = saved


async def _get_if(url: str, token: str, status: int) -> tuple[int, Any, dict[str, str]] | None:
    got = await _get(url, token)
    return got if got[0] == status else None


async def _short_lived_tokens(devcloud_url: str, life: float, count: int = 2) -> tuple[list[str], datetime]:
    """``count`` demo tokens that expire ``life`` seconds from now: Keystone caps a token issued for an
    application credential at the credential's ``expires_at``."""
    url = f"{devcloud_url}/identity/v3"
    password = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"name": "Default"}, "password": "demo-pass"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}},
    }}
    expiry = datetime.now(UTC) + timedelta(seconds=life)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/auth/tokens", json=password) as r:
            assert r.status == 201, await r.text()
            demo, user_id = r.headers["X-Subject-Token"], (await r.json())["token"]["user"]["id"]
        async with s.post(f"{url}/users/{user_id}/application_credentials", headers={"X-Auth-Token": demo},
                          json={"application_credential": {"name": f"short-{uuid.uuid4().hex[:8]}",
                                                           "expires_at": expiry.isoformat()}}) as r:
            assert r.status == 201, await r.text()
            cred = (await r.json())["application_credential"]
        tokens = []
        for _ in range(count):
            async with s.post(f"{url}/auth/tokens", json={"auth": {"identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": cred["id"], "secret": cred["secret"]}}}}) as r:
                assert r.status == 201, await r.text()
                assert parse_time((await r.json())["token"]["expires_at"]) == expiry
                tokens.append(r.headers["X-Subject-Token"])
    return tokens, expiry


def _assert_magnum_401(got: tuple[int, Any, dict[str, str]]) -> None:
    status, body, headers = got
    assert status == 401, body
    assert set(body) == {"errors"} and len(body["errors"]) == 1, body
    err = body["errors"][0]
    assert {"status", "code", "title", "detail", "request_id"} <= set(err), err
    assert err["status"] == 401 and err["code"] == "client" and err["title"] and err["detail"], err
    assert err["request_id"] == headers["X-Openstack-Request-Id"]
    assert headers["WWW-Authenticate"].startswith("Keystone uri=")


@pytest.mark.integration
async def test_api_refuses_expired_token_and_drops_cached_one_at_expiry(api: RunningApi) -> None:
    """With tokens cached for their whole life (no TTL cap), a token the API has accepted and cached is accepted
    up to its expires_at and refused after it, with Magnum's 401 body; a token that expired before the API
    ever saw it is refused too."""
    ks = api.server.keystone
    saved = ks.ttl
    ks.ttl = None
    try:
        (used, unseen), expires_at = await _short_lived_tokens(api.devcloud.url, life=2.0)
        url = f"{api.url}/v1/clusters"
        assert (await _get(url, used))[0] == 200
        misses = ks.stats["misses"]
        assert (await _get(url, used))[0] == 200
        assert ks.stats["misses"] == misses, "the valid token is answered from the cache"
        got = await wait_for(lambda: _get_if(url, used, 401), timeout=6, interval=0.05,
                             message="a cached token refused once its expires_at passed")
        assert datetime.now(UTC) >= expires_at - timedelta(seconds=0.1), "refused before it expired"
        _assert_magnum_401(got)
        assert used not in ks._cache
        _assert_magnum_401(await _get(url, used))
        assert unseen not in ks._cache
        _assert_magnum_401(await _get(url, unseen))
        assert unseen not in ks._cache
    finally:
        ks.ttl = saved


@pytest.mark.integration
async def test_request_id_on_every_answer(api: RunningApi) -> None:
    token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
    for path, tok, status in (("/v1/clusters", token, 200), ("/v1/clusters", None, 401),
                              ("/v1/clusters/" + str(uuid.uuid4()), token, 404), ("/v1/nope", token, 404), ("/", None, 200)):
        got, body, headers = await _get(api.url + path, tok)
        assert got == status, (path, body)
        assert headers["X-Openstack-Request-Id"].startswith("req-")


@pytest.mark.integration
async def test_reader_and_other_project(api: RunningApi) -> None:
    demo = await user_token(api.devcloud, "demo", "demo-pass", "demo")
    viewer = await user_token(api.devcloud, "viewer", "viewer-pass", "demo")
    alt = await user_token(api.devcloud, "alt", "alt-pass", "alt")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{api.url}/v1/clustertemplates", headers={"X-Auth-Token": viewer}, json={
            "name": "t-" + uuid.uuid4().hex[:6], "coe": "kubernetes", "image_id": "fedora-coreos"}) as r:
            assert r.status == 403
            assert (await r.json())["errors"][0]["detail"] == \
                "Policy doesn't allow clustertemplate:create to be performed."
        async with s.post(f"{api.url}/v1/clustertemplates", headers={"X-Auth-Token": demo}, json={
            "name": "t-" + uuid.uuid4().hex[:6], "coe": "kubernetes", "image_id": "fedora-coreos",
            "external_network_id": "public"}) as r:
            assert r.status == 201, await r.text()
            tid = (await r.json())["uuid"]
    assert (await _get(f"{api.url}/v1/clustertemplates/{tid}", viewer))[0] == 200
    status, _, _ = await _get(f"{api.url}/v1/clustertemplates/{tid}", alt)
    assert status == 404, "another project's template is hidden as 404, not 403"
    _, listing, _ = await _get(f"{api.url}/v1/clustertemplates", alt)
    assert tid not in {t["uuid"] for t in listing["clustertemplates"]}


@pytest.mark.integration
async def test_operator_policy_file_applies(api: RunningApi, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A second API app on the same database with an operator file: members may no longer list clusters,
    and the denial names the rule."""
    f = tmp_path / "policy.yaml"
    f.write_text('"cluster:get_all": "role:admin"\n')
    monkeypatch.setenv(policy.POLICY_FILE_ENV, str(f))
    assert api.service.pool is not None
    from services.api.keys import WRITER

    main_app = api.server._runner.app if api.server._runner else None
    assert main_app is not None
    app = build_app(pool=api.service.pool, writer=main_app[WRITER], keystone=api.server.keystone)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        demo = await user_token(api.devcloud, "demo", "demo-pass", "demo")
        admin = await user_token(api.devcloud, "admin", "admin-pass", "admin")
        status, body, _ = await _get(f"http://127.0.0.1:{port}/v1/clusters", demo)
        assert status == 403 and body["errors"][0]["detail"] == "Policy doesn't allow cluster:get_all to be performed."
        assert (await _get(f"http://127.0.0.1:{port}/v1/clusters", admin))[0] == 200
        # The main app keeps Magnum's defaults.
        assert (await _get(f"{api.url}/v1/clusters", demo))[0] == 200
    finally:
        await runner.cleanup()
