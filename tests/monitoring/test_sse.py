"""``GET /v1/events`` against the real API, NATS, PostgreSQL and the devcloud: a resume after a disconnect neither
loses nor repeats an event; a member never sees another project's events; filters; keep-alive; a clean end when the
token is revoked."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from services.api.resources.events import HUB
from tests.api.conftest import RunningApi
from tests.conftest import wait_for
from tests.monitoring.sse import Message, messages

pytestmark = pytest.mark.integration


@dataclass
class User:
    token: str
    user_id: str
    project_id: str


async def login(api: RunningApi, user: str, password: str, project: str) -> User:
    body: dict[str, Any] = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }}
    async with aiohttp.ClientSession() as s, s.post(f"{api.devcloud.url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        tok = (await r.json())["token"]
        return User(r.headers["X-Subject-Token"], tok["user"]["id"], tok["project"]["id"])


@pytest.fixture(scope="module")
async def users(api: RunningApi) -> dict[str, User]:
    return {
        "demo": await login(api, "demo", "demo-pass", "demo"),
        "alt": await login(api, "alt", "alt-pass", "alt"),
        "admin": await login(api, "admin", "admin-pass", "admin"),
    }


async def create_template(api: RunningApi, user: User, tag: str) -> str:
    body = {"name": f"sse-{tag}-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
            "flavor_id": "m1.small", "master_flavor_id": "m1.medium", "external_network_id": "public"}
    async with aiohttp.ClientSession() as s, s.post(
        f"{api.url}/v1/clustertemplates", json=body, headers={"X-Auth-Token": user.token}
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["uuid"])


class Stream:
    """One SSE connection, read in the background into ``received``."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.received: list[Message] = []
        self.comments: list[Message] = []
        self.ended = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in messages(self.resp):
                (self.comments if msg.comment else self.received).append(msg)
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()

    def events(self) -> list[Message]:
        return [m for m in self.received if m.id is not None]

    def template_ids(self) -> list[str]:
        return [m.json["payload"]["template"]["uuid"] for m in self.events() if m.event == "ClusterTemplateCreated"]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.resp.close()


@contextlib.asynccontextmanager
async def sse(api: RunningApi, user: User, query: str = "", last_event_id: int | None = None,
              expect: int = 200) -> AsyncIterator[Stream]:
    headers = {"X-Auth-Token": user.token, "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    resp = await session.get(f"{api.url}/v1/events{query}", headers=headers)
    try:
        assert resp.status == expect, await resp.text()
        if expect == 200:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
        stream = Stream(resp)
        try:
            yield stream
        finally:
            await stream.close()
    finally:
        resp.close()
        await session.close()


async def test_resume_after_disconnect_loses_and_repeats_nothing(api: RunningApi, users: dict[str, User]) -> None:
    demo, alt = users["demo"], users["alt"]
    first: list[str] = []
    async with sse(api, demo, "?type=ClusterTemplateCreated") as stream:
        await wait_for(lambda: len(api.server._runner.app[HUB].clients) > 0 if api.server._runner else False)  # type: ignore[union-attr]
        for i in range(3):
            first.append(await create_template(api, demo, f"a{i}"))
            await create_template(api, alt, f"alt-a{i}")
        await wait_for(lambda: len(stream.template_ids()) >= 3, timeout=15, message="the first three events")
        assert stream.template_ids() == first
        last_id = stream.events()[-1].id
        assert last_id is not None
    # Disconnected: events go on being stored.
    missed = [await create_template(api, demo, f"b{i}") for i in range(4)]
    for i in range(2):
        await create_template(api, alt, f"alt-b{i}")
    async with sse(api, demo, "?type=ClusterTemplateCreated", last_event_id=last_id) as stream:
        await wait_for(lambda: len(stream.template_ids()) >= 4, timeout=15, message="the replayed events")
        live = [await create_template(api, demo, f"c{i}") for i in range(2)]
        await wait_for(lambda: len(stream.template_ids()) >= 6, timeout=15, message="replay then live events")
        assert stream.template_ids() == missed + live, "an event was lost, repeated or reordered across the resume"
        ids = [m.id for m in stream.events()]
        assert ids == sorted(set(ids)) and all(i is not None and i > last_id for i in ids)
        assert {m.json["project_id"] for m in stream.events()} == {demo.project_id}


async def test_a_member_never_receives_another_projects_events(api: RunningApi, users: dict[str, User]) -> None:
    demo, alt, admin = users["demo"], users["alt"], users["admin"]
    async with (
        sse(api, demo) as demo_stream,
        sse(api, demo, f"?project_id={alt.project_id}", expect=403),
        sse(api, admin, f"?project_id={alt.project_id}") as admin_alt,
        sse(api, admin) as admin_all,
    ):
        app = api.server._runner.app  # type: ignore[union-attr]
        await wait_for(lambda: len(app[HUB].clients) >= 3)
        alt_ids = [await create_template(api, alt, f"x{i}") for i in range(3)]
        demo_id = await create_template(api, demo, "y")
        await wait_for(lambda: demo_id in admin_all.template_ids() and demo_id in demo_stream.template_ids(),
                       timeout=15, message="the demo template reaches demo and admin")
        await wait_for(lambda: set(alt_ids) <= set(admin_alt.template_ids()), timeout=15)
        assert set(alt_ids) <= set(admin_all.template_ids())
        assert {m.json["project_id"] for m in demo_stream.events()} == {demo.project_id}
        assert not set(alt_ids) & set(demo_stream.template_ids())
        assert {m.json["project_id"] for m in admin_alt.events()} == {alt.project_id}
        last = demo_stream.events()[0].id
    # Nor through a replay: resuming from before alt's events still shows only demo's.
    assert last is not None
    async with sse(api, demo, last_event_id=last - 1) as replay:
        await wait_for(lambda: demo_id in replay.template_ids(), timeout=15)
        assert {m.json["project_id"] for m in replay.events()} == {demo.project_id}


async def test_cluster_filter_and_bad_last_event_id(api: RunningApi, users: dict[str, User]) -> None:
    demo = users["demo"]
    async with sse(api, demo, "?last_event_id=abc", expect=400):
        pass
    hub = api.server._runner.app[HUB]  # type: ignore[union-attr]
    async with sse(api, demo, f"?cluster={uuid.uuid4()}", last_event_id=0) as stream, \
            sse(api, demo, "?type=ClusterTemplateCreated") as unfiltered:
        await wait_for(lambda: len(hub.clients) >= 2)
        made = await create_template(api, demo, "other")
        await wait_for(lambda: made in unfiltered.template_ids(), timeout=15)
    assert stream.events() == [], "another cluster's filter let an event through"


async def test_keepalive_and_clean_end_when_the_token_is_revoked(api: RunningApi, users: dict[str, User]) -> None:
    hub = api.server._runner.app[HUB]  # type: ignore[union-attr]
    saved = hub.keepalive
    hub.keepalive = 0.2
    try:
        short = await login(api, "demo", "demo-pass", "demo")
        async with sse(api, short) as stream:
            await wait_for(lambda: any(c.data == "keep-alive" for c in stream.comments), timeout=10)
            async with aiohttp.ClientSession() as s, s.delete(
                f"{api.devcloud.url}/identity/v3/auth/tokens",
                headers={"X-Auth-Token": users["admin"].token, "X-Subject-Token": short.token},
            ) as r:
                assert r.status == 204, await r.text()
            await asyncio.wait_for(stream.ended.wait(), 15)
            ends = [m for m in stream.received if m.event == "end"]
            assert len(ends) == 1 and "revoked" in ends[0].json["reason"]
    finally:
        hub.keepalive = saved


async def test_resume_while_events_keep_coming_repeats_none(api: RunningApi, users: dict[str, User]) -> None:
    """Events stored while the resume replays from the stream reach the client once: from the replay or from the
    live queue, never both (the overlap the sequence check exists for)."""
    from proto import subjects
    from proto.envelope import new_envelope
    from proto.events import ClusterHealthUpdated

    demo = users["demo"]
    cluster = str(uuid.uuid4())
    subject = subjects.cluster_events("api", cluster)

    async def publish(first: int, count: int) -> None:
        for n in range(first, first + count):
            env = new_envelope(ClusterHealthUpdated(uuid=cluster, project_id=demo.project_id,
                                                    health_status_reason={"n": str(n)}),
                               project_id=demo.project_id, cluster_id=cluster)
            await api.bus.publish(subject, env)

    def numbers(stream: Stream) -> list[int]:
        return [int(m.json["payload"]["health_status_reason"]["n"]) for m in stream.events()]

    async with sse(api, demo, f"?cluster={cluster}") as stream:
        hub = api.server._runner.app[HUB]  # type: ignore[union-attr]
        await wait_for(lambda: len(hub.clients) > 0)
        await publish(0, 1)
        await wait_for(lambda: numbers(stream) == [0], timeout=10)
        last = stream.events()[-1].id
    await publish(1, 300)  # missed while away: the resume replays them one stream read each
    async with sse(api, demo, f"?cluster={cluster}", last_event_id=last) as stream:
        live = asyncio.create_task(publish(301, 100))  # stored while the replay runs
        await live
        await publish(401, 1)  # a marker: the stream is in order, so a repeat would arrive before it
        await wait_for(lambda: 401 in numbers(stream), timeout=30, message="every event after the resume")
        assert numbers(stream) == list(range(1, 402))
