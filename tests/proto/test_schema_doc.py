from __future__ import annotations

import json
from pathlib import Path

import msgspec

from proto import schema
from proto.events import EVENT_TYPES
from proto.schema import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_events_md_is_current() -> None:
    assert (DOCS / "events.md").read_text() == render(), (
        "docs/events.md is stale: run `python -m proto.schema`"
    )


def test_docs_schemas_are_current() -> None:
    assert schema.stale(DOCS) == [], "docs/schemas/ is stale: run `python -m proto.schema`"
    for name in EVENT_TYPES:
        assert (DOCS / "schemas" / f"{name}.json").exists()


def test_producers_subjects_and_consumers_come_from_the_code() -> None:
    routes = schema.routes()
    assert routes["ClusterAdmitted"].producers == {"scheduler"}
    assert routes["ClusterAdmitted"].subjects_for() == ["cove.evt.scheduler.cluster.<cluster_uuid>"]
    decided = schema.consumers_of("cove.evt.scheduler.cluster.<cluster_uuid>")
    assert {"api", "certs", "scheduler"} <= set(decided) and "accounting" not in decided
    assert routes["QuotaCreated"].subjects_for() == ["cove.evt.api.quota.<project_id>"]
    assert routes["ClusterTemplateCreated"].subjects_for() == ["cove.evt.api.clustertemplate.<template_uuid>"]
    assert routes["ServiceHeartbeat"].subjects_for() == ["cove.heartbeat.<service>"]
    assert schema.consumers_of("cove.heartbeat.<service>") == []
    assert routes["NodeBecameActive"].producers == {"provisioner"}
    assert "accounting" in schema.consumers_of(routes["NodeBecameActive"].subjects_for()[0])
    section = render().split("### ClusterCreateRequested\n", 1)[1].split("\n### ", 1)[0]
    assert "| producer | api |" in section and "| consumers | api, provisioner, scheduler" in section


def test_subject_matching_follows_nats_wildcards() -> None:
    assert schema.subject_matches("cove.evt.>", "cove.evt.api.cluster.x")
    assert not schema.subject_matches("cove.evt.>", "cove.evt")
    assert schema.subject_matches("cove.evt.*.cluster.*", "cove.evt.api.cluster.x")
    assert not schema.subject_matches("cove.evt.*.cluster.*", "cove.evt.api.quota.x")
    assert not schema.subject_matches("cove.evt.api.cluster.*", "cove.evt.api.cluster.x.y")


def test_schema_files_validate_what_the_code_encodes() -> None:
    """Each shipped schema names the struct's required fields; a real event's JSON carries them all."""
    from proto.envelope import encode, new_envelope
    from proto.events import ClusterAdmitted

    doc = json.loads((DOCS / "schemas" / "ClusterAdmitted.json").read_text())
    required = set(doc["$defs"]["ClusterAdmitted"]["required"])
    env = new_envelope(ClusterAdmitted(uuid="c1", project_id="p1", master_count=1, node_count=1), project_id="p1", cluster_id="c1")
    payload = msgspec.json.decode(encode(env))["payload"]
    assert required <= set(payload)
    assert doc["$ref"] == "#/$defs/ClusterAdmitted"
