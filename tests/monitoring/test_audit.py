"""CADF audit records of API writes, read back from the COVE_AUDIT stream: create, update and delete, success and
failure, the Keystone user and project as initiator, the resource as target, the request id; checked against the
attributes pycadf's ``Event`` and ``Resource`` require and the values its taxonomy accepts."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import nats.errors
import pytest

from proto import subjects
from proto.audit import CadfEvent
from tests.api.conftest import RunningApi
from tests.conftest import wait_for
from tests.monitoring.test_sse import User, login

pytestmark = pytest.mark.integration

# pycadf/event.py EVENT_KEYNAMES that must be set (_isset checks in is_valid), resource.py likewise.
CADF_EVENT_REQUIRED = ("typeURI", "eventType", "id", "eventTime", "action", "outcome", "initiator", "target",
                       "observer")
CADF_RESOURCE_REQUIRED = ("typeURI", "id")
CADF_OUTCOMES = {"success", "failure", "pending", "unknown"}  # pycadf/cadftaxonomy.py OUTCOME_TAXONOMY
CADF_EVENT_TYPES = {"activity", "monitor", "control"}  # pycadf/event.py EVENTTYPE_*
CADF_ACTIONS = {"create", "read", "update", "delete", "backup", "capture", "configure", "deploy", "disable",
                "enable", "monitor", "restore", "start", "stop", "undeploy", "receive", "send", "authenticate",
                "renew", "revoke", "allow", "deny", "evaluate", "notify", "unknown"}


@pytest.fixture(scope="module")
async def users(api: RunningApi) -> dict[str, User]:
    return {
        "demo": await login(api, "demo", "demo-pass", "demo"),
        "alt": await login(api, "alt", "alt-pass", "alt"),
    }


async def call(api: RunningApi, user: User | None, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
    headers = {"X-Auth-Token": user.token} if user else {}
    async with aiohttp.ClientSession() as s, s.request(method, api.url + path, json=body, headers=headers) as r:
        text = await r.text()
        return r.status, (msgspec.json.decode(text) if text else None), r.headers["X-Openstack-Request-Id"]


async def audit_records(api: RunningApi) -> dict[str, dict[str, Any]]:
    """Every audit record in the stream, by request id."""
    sub = await api.bus.js.subscribe(subjects.AUDIT_API, ordered_consumer=True)
    found: dict[str, dict[str, Any]] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except (nats.errors.TimeoutError, TimeoutError):
                return found
            record = msgspec.json.decode(msg.data)
            msgspec.json.decode(msg.data, type=CadfEvent)  # decodes as the documented struct
            rid = next(a["content"] for a in record.get("attachments", []) if a["name"] == "request_id")
            found[rid] = record
    finally:
        await sub.unsubscribe()


def assert_cadf(record: dict[str, Any]) -> None:
    for key in CADF_EVENT_REQUIRED:
        assert record.get(key), f"CADF event lacks {key}"
    assert record["typeURI"] == "http://schemas.dmtf.org/cloud/audit/1.0/event"
    assert record["eventType"] in CADF_EVENT_TYPES and record["eventType"] == "activity"
    assert record["outcome"] in CADF_OUTCOMES
    assert record["action"].split("/")[0] in CADF_ACTIONS
    for role in ("initiator", "target", "observer"):
        for key in CADF_RESOURCE_REQUIRED:
            assert record[role].get(key), f"CADF {role} lacks {key}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000", record["eventTime"])
    datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert uuid.UUID(record["id"])
    assert record["reason"]["reasonType"] == "HTTP" and record["reason"]["reasonCode"].isdigit()
    assert record["initiator"]["credential"]["token"] == "***"


async def test_cadf_records_for_create_update_delete(api: RunningApi, users: dict[str, User]) -> None:
    demo, alt = users["demo"], users["alt"]
    name = f"audit-{uuid.uuid4().hex[:6]}"
    status, body, rid_create = await call(api, demo, "POST", "/v1/clustertemplates", {
        "name": name, "coe": "kubernetes", "image_id": "fedora-coreos", "flavor_id": "m1.small",
        "master_flavor_id": "m1.medium", "external_network_id": "public"})
    assert status == 201, body
    tid = body["uuid"]
    status, _, rid_update = await call(api, demo, "PATCH", f"/v1/clustertemplates/{tid}",
                                       [{"op": "replace", "path": "/name", "value": name + "-2"}])
    assert status == 200
    status, _, rid_foreign = await call(api, alt, "DELETE", f"/v1/clustertemplates/{tid}")
    assert status in (403, 404)
    status, _, rid_delete = await call(api, demo, "DELETE", f"/v1/clustertemplates/{tid}")
    assert status == 204
    status, _, rid_missing = await call(api, demo, "DELETE", f"/v1/clustertemplates/{uuid.uuid4()}")
    assert status == 404
    status, _, rid_anonymous = await call(api, None, "POST", "/v1/clustertemplates", {"name": "x"})
    assert status == 401
    status, _, rid_read = await call(api, demo, "GET", "/v1/clustertemplates")
    assert status == 200

    wanted = {rid_create, rid_update, rid_foreign, rid_delete, rid_missing}
    async def all_there() -> dict[str, dict[str, Any]] | None:
        found = await audit_records(api)
        return found if wanted <= set(found) else None

    found = await wait_for(all_there, timeout=15, message="the audit records of the five writes")
    for rid in wanted:
        assert_cadf(found[rid])
    assert rid_anonymous not in found, "a request refused before the token was validated is not audited"
    assert rid_read not in found, "reads are not audited"

    create, update, delete = found[rid_create], found[rid_update], found[rid_delete]
    assert (create["action"], create["outcome"], create["reason"]["reasonCode"]) == ("create", "success", "201")
    assert (update["action"], update["outcome"]) == ("update", "success")
    assert (delete["action"], delete["outcome"], delete["reason"]["reasonCode"]) == ("delete", "success", "204")
    for record in (create, update, delete):
        assert record["initiator"]["id"] == demo.user_id
        assert record["initiator"]["project_id"] == demo.project_id
        assert record["initiator"]["typeURI"] == "service/security/account/user"
        assert record["target"] == {**record["target"], "id": tid,
                                    "typeURI": "service/container-infra/clustertemplates"}
        assert record["requestPath"].startswith("/v1/clustertemplates")
    assert create["target"]["name"] == name and update["target"]["name"] == name + "-2"

    foreign = found[rid_foreign]
    assert (foreign["action"], foreign["outcome"]) == ("delete", "failure")
    assert foreign["initiator"]["id"] == alt.user_id and foreign["initiator"]["project_id"] == alt.project_id
    assert foreign["target"]["id"] == tid
    missing = found[rid_missing]
    assert (missing["outcome"], missing["reason"]["reasonCode"]) == ("failure", "404")
