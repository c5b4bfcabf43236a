"""Key-value buckets read through their stream's leader (services/runtime/keyvalue.py), against a real nats-server:
a bucket made here never answers reads from a replica, and one made earlier with direct gets is turned over with its
data kept, as a running Cove's ``COVE_LEASES`` and ``COVE_PROVISIONER_BILLING`` are on the first start after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js.api import KeyValueConfig, StorageType

from services.runtime.bus import Bus
from services.runtime.keyvalue import open_bucket


@pytest.fixture
async def config(bus: Bus) -> AsyncIterator[KeyValueConfig]:
    """A bucket of the test's own, configured with direct gets (the session's NATS keeps buckets across tests)."""
    made = KeyValueConfig(bucket=f"T_KV_{uuid.uuid4().hex[:8]}", history=1, storage=StorageType.MEMORY, direct=True)
    yield made
    await bus.js.delete_key_value(made.bucket)


async def allows_direct(bus: Bus, config: KeyValueConfig) -> bool:
    return bool((await bus.js.stream_info(f"KV_{config.bucket}")).config.allow_direct)


async def test_a_bucket_it_makes_is_read_through_the_leader_whatever_the_config_asks(
        bus: Bus, config: KeyValueConfig) -> None:
    kv = await open_bucket(bus.js, config)
    assert not await allows_direct(bus, config)
    await kv.put("cluster", b"noted")
    assert (await kv.get("cluster")).value == b"noted"


async def test_a_bucket_made_with_direct_gets_is_turned_over_and_keeps_its_values(
        bus: Bus, config: KeyValueConfig) -> None:
    before = await bus.js.create_key_value(config)
    await before.put("cluster", b"first")
    assert await allows_direct(bus, config)
    kv = await open_bucket(bus.js, config)
    assert not await allows_direct(bus, config)
    assert (await kv.get("cluster")).value == b"first"
    await kv.put("cluster", b"second")
    assert (await kv.get("cluster")).value == b"second"
    again = await open_bucket(bus.js, config)  # a second copy starting: nothing left to change
    assert (await again.get("cluster")).value == b"second"
