"""The certs projection's batch path, cut at random boundaries, against one event at a time, on real PostgreSQL.

Replayed (a rebuild, ``cove replay``, ``cove verify``), every event is a planned write: an admission changes
nothing (the ``ClusterCACreated`` it caused follows it in the stream), and neither it nor a delete touches the key
store, which lives outside the rebuilt store and holds the one data key the stream's ciphertexts need. Live, the
admissions make CAs (random keys: not compared here) and the deletes forget data keys, each alone in its place; the
other events are planned writes and must leave the store as one by one."""

from __future__ import annotations

import base64
import random
import uuid

import pytest

from benchmarks.replay import CA_PEM, lifecycles
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterAdmitted, ClusterCACreated, ClusterCAReplaced, ClusterDeleteCompleted, Event
from services.certs.handlers import Handlers
from services.certs.keys import KeySource
from services.certs.keystore import PostgresKeyStore
from services.certs.service import MIGRATIONS
from services.runtime.projection import _REPLAY_UNTIL
from tests.batching import apply_in_batches
from tests.scheduler.test_admission_run import Schemas, snapshot

pytestmark = pytest.mark.integration

MASTER_KEY = {"COVE_CERTS_MASTER_KEY": base64.urlsafe_b64encode(b"t" * 32).decode()}


def stream(seed: int) -> list[Envelope]:
    """Lifecycles with CA rotations, a delete that lands between an admission and its CA, and repeated facts."""
    rng = random.Random(seed)
    envs: list[Envelope] = []

    def add(payload: Event, like: Envelope) -> None:
        envs.append(new_envelope(payload, project_id=like.project_id, cluster_id=like.cluster_id, trace={},
                                 occurred_at=like.occurred_at))

    for _, env in lifecycles(2_400):
        p = env.payload
        roll = rng.random()
        if isinstance(p, ClusterCACreated) and roll < 0.05:
            add(ClusterDeleteCompleted(uuid=p.uuid, project_id=p.project_id), env)  # before its CA was recorded
        envs.append(env)
        if isinstance(p, ClusterCACreated) and roll > 0.9:
            add(ClusterCAReplaced(uuid=p.uuid, project_id=p.project_id, ca_cert_pem=CA_PEM.replace("bench", "rot"),
                                  encrypted_ca_key=base64.b64encode(uuid.uuid4().bytes), key_id="rotated",
                                  wrapped_by="data_key"), env)
        elif isinstance(p, ClusterCACreated | ClusterDeleteCompleted) and roll > 0.85:
            add(p, env)  # the same fact again, in another event
    return envs


@pytest.mark.parametrize(("seed", "replay"), [(1, True), (2, True), (3, False)],
                         ids=["replayed-1", "replayed-2", "live-without-admissions"])
async def test_random_batch_boundaries_leave_the_store_as_one_by_one(
    database_url: str, seed: int, replay: bool
) -> None:
    envs = stream(seed)
    if not replay:
        envs = [env for env in envs if not isinstance(env.payload, ClusterAdmitted)]
    schemas = Schemas(database_url, "certs_cut")
    until = _REPLAY_UNTIL.set(len(envs) if replay else 0)
    try:
        one_by_one, batched = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
        keys_schema = f"certs_cut_{uuid.uuid4().hex[:8]}"
        keystore = PostgresKeyStore(keys_schema, KeySource(MASTER_KEY))
        await keystore.ensure(one_by_one)
        known = str(uuid.uuid4())
        async with one_by_one.acquire() as conn:
            await keystore.get_or_create(conn, known)  # a data key the live service made: a replay keeps it
        handlers = Handlers(KeySource(MASTER_KEY), lambda: None, keystore=keystore)
        expected = await apply_in_batches(one_by_one, envs, handlers.project, handlers.project.batch, None)
        got = await apply_in_batches(batched, envs, handlers.project, handlers.project.batch, random.Random(seed))
        assert got == expected
        # replayed, nothing is published again; live, each delete of a live CA says so once
        assert any(expected) != replay
        want, have = await snapshot(one_by_one), await snapshot(batched)
        cas = want["cluster_cas"]
        assert len(cas) > 150 and any(r["deleted_at"] for r in cas) and any(r["key_id"] == "rotated" for r in cas)
        for table in want:
            assert have[table] == want[table], f"{table} differs"
        async with one_by_one.acquire() as conn:
            kept = await conn.fetch(f"SELECT cluster_id FROM {keys_schema}_keys.data_keys")
            await conn.execute(f"DROP SCHEMA {keys_schema}_keys CASCADE")
        assert [r["cluster_id"] for r in kept] == [known]
    finally:
        _REPLAY_UNTIL.reset(until)
        await schemas.close()
