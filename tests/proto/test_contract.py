from __future__ import annotations

import json

import msgspec
import pytest

from proto import envelope as penv
from proto import requests as preq
from proto import subjects
from proto.events import EVENT_TYPES, ClusterRejected, ClusterTemplateDeleted, event_type
from tests.proto.samples import sample


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_round_trips_in_an_envelope(name: str) -> None:
    payload = sample(EVENT_TYPES[name])
    env = penv.new_envelope(payload, project_id="p1", cluster_id="c1")
    data = penv.encode(env)
    assert json.loads(data)["payload"]["type"] == name
    back = penv.decode(data)
    assert back == env
    assert back.type == name == event_type(payload)
    assert back.occurred_at.tzinfo is not None


@pytest.mark.parametrize("name", list(preq.REQUEST_TYPES))
def test_every_request_round_trips(name: str) -> None:
    msg = sample(preq.REQUEST_TYPES[name])
    assert preq.decode_request(preq.encode_request(msg)) == msg


def test_correlation_is_inherited_from_the_cause() -> None:
    first = penv.new_envelope(
        ClusterTemplateDeleted(uuid="t", project_id="p"), project_id="p", cluster_id=None
    )
    assert first.correlation_id == first.id and first.causation_id is None
    second = penv.new_envelope(
        ClusterRejected(uuid="c", project_id="p", reason="quota"),
        project_id="p",
        cluster_id="c",
        causation=first,
    )
    assert second.correlation_id == first.id
    assert second.causation_id == first.id


def _valid() -> dict[str, object]:
    env = penv.new_envelope(ClusterTemplateDeleted(uuid="t", project_id="p"), project_id="p", cluster_id=None)
    return json.loads(penv.encode(env))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"id": "x"}',
        json.dumps({**_valid(), "payload": {"type": "NoSuchEvent"}}).encode(),
        json.dumps(
            {**_valid(), "payload": {"type": "ClusterTemplateDeleted", "uuid": 5, "project_id": "p"}}
        ).encode(),
        json.dumps({**_valid(), "type": "ClusterAdmitted"}).encode(),
        json.dumps({**_valid(), "occurred_at": "yesterday"}).encode(),
        b"\xff\xfe\x00",
    ],
)
def test_malformed_payload_raises_one_error(data: bytes) -> None:
    with pytest.raises(penv.MalformedMessage):
        penv.decode(data)


def test_old_events_without_optional_fields_still_decode() -> None:
    # An event written before optional fields existed: only the required ones, no trace, no causation.
    raw = {
        "id": "e1",
        "type": "ClusterCreateFailed",
        "schema_version": 1,
        "occurred_at": "2024-01-01T00:00:00Z",
        "project_id": "p",
        "cluster_id": "c",
        "correlation_id": "e1",
        "payload": {"type": "ClusterCreateFailed", "uuid": "c", "project_id": "p", "status_reason": "boom"},
    }
    env = penv.decode(json.dumps(raw).encode())
    assert env.trace == {} and env.causation_id is None
    # Unknown extra fields from a newer writer are ignored too.
    raw["payload"]["future_field"] = 1  # type: ignore[index]
    raw["future_envelope_field"] = "x"
    assert penv.decode(json.dumps(raw).encode()).payload == env.payload


def test_events_are_frozen() -> None:
    ev = ClusterTemplateDeleted(uuid="t", project_id="p")
    with pytest.raises(AttributeError):
        ev.uuid = "other"  # type: ignore[misc]


def test_malformed_request_raises() -> None:
    with pytest.raises(penv.MalformedMessage):
        preq.decode_request(b'{"type": "SignCertificate"}')


def test_subjects() -> None:
    assert subjects.cluster_events("api", "u1") == "cove.evt.api.cluster.u1"
    assert subjects.cluster_template_events("api", "t1") == "cove.evt.api.clustertemplate.t1"
    assert subjects.dlq_subject("scheduler") == "cove.dlq.scheduler"
    assert subjects.heartbeat_subject("certs") == "cove.heartbeat.certs"
    assert subjects.rpc_subject("certs", "sign") == "cove.rpc.certs.sign"
    with pytest.raises(ValueError):
        subjects.cluster_events("api", "a.b")


def test_event_types_registry_matches_union() -> None:
    assert len(EVENT_TYPES) >= 24
    for name, cls in EVENT_TYPES.items():
        assert cls.__struct_config__.tag == name
        assert cls.__struct_config__.frozen
    assert msgspec.json.schema(penv.Envelope)
