"""``cove certs rotate-kek``: re-wrap every stored data key (and every pre-issue-19 CA key) under a new
key-encryption key while the certs service keeps signing (docs/adr/0007).

With a key file (``COVE_CERTS_MASTER_KEY_FILE``, or the development default ``$COVE_STATE_DIR/certs-master.key``):

1. the new key (``--new-key-file``, else a fresh random one) is written to the key file first, the previous
   keys after it: a certs replica that meets a data key wrapped by a key id it does not know re-reads the file,
   and one that wraps a new data key re-reads it when it changed, so from here on every replica decrypts under
   both and wraps under the new one;
2. every data key not under the new KEK is re-wrapped (row-locked, a few hundred per transaction), and the CA
   keys of clusters from before issue 19, which the KEK wraps directly, move under a data key of their own;
3. passes repeat until none is left (a replica may wrap one data key under the old KEK in the second before it
   saw the file change); then the key file keeps the new key only, and ``MasterKeyRotated`` is published.

With ``COVE_CERTS_MASTER_KEY`` in the environment a running service cannot learn a new key: restart the replicas
with the new key there and the old one in ``COVE_CERTS_OLD_MASTER_KEYS`` first, then run this with the same
environment (it re-wraps everything under the current key), then drop the old key from the replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from proto import subjects
from proto.envelope import new_envelope
from proto.events import MasterKeyRotated
from services.certs import store
from services.certs.keys import (
    KeyRing,
    key_file_of,
    key_id_of,
    load_keyring,
    new_key,
    read_key_file,
    write_key_file,
)
from services.certs.keystore import PostgresKeyStore
from services.runtime import db
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)

SETTLE_SECONDS = 2.5
"""How long to wait for every replica to have seen the new key file (it re-checks at most once a second)."""


@dataclass(frozen=True)
class Rotation:
    previous_key_id: str
    key_id: str
    rewrapped: int
    """Data keys re-wrapped."""
    converted: int
    """Pre-issue-19 CA keys moved from the KEK to a data key."""


async def rotate_kek(
    environ: dict[str, str],
    *,
    database_url: str,
    nats_url: str | None = None,
    new: bytes | None = None,
    schema: str = "certs",
    settle: float = SETTLE_SECONDS,
) -> Rotation:
    path = key_file_of(environ)
    before = load_keyring(environ)
    if path is not None:
        target = new or new_key()
        previous = tuple(k for k in read_key_file(path) if k != target)
        write_key_file(path, (target, *previous))
        ring = KeyRing(target, (*previous, *before.old))
    else:
        if new is not None:
            raise ValueError(
                "COVE_CERTS_MASTER_KEY is set: give the certs replicas the new key there (the old one in "
                "COVE_CERTS_OLD_MASTER_KEYS), restart them, then run rotate-kek with that environment"
            )
        ring = before
    previous_key_id = before.key_id if path is not None or not before.old else key_id_of(before.old[0])
    pool = await db.create_pool(database_url, schema, min_size=1, max_size=2)
    try:
        keystore = PostgresKeyStore(schema, ring)
        await keystore.ensure(pool)
        rewrapped = converted = 0
        for attempt in range(5):
            rewrapped += await keystore.rewrap_all(pool, ring)
            converted += await _convert_legacy(pool, keystore, ring)
            if attempt == 0 and path is not None:
                await asyncio.sleep(settle)  # a replica that had not yet seen the file may just have wrapped one
                continue
            if await keystore.remaining(pool, ring.key_id) == 0 and not await store.live_kek_wrapped(pool):
                break
            await asyncio.sleep(settle)
        else:
            raise RuntimeError("data keys keep appearing under an old key-encryption key; is a certs replica "
                               "running with COVE_CERTS_MASTER_KEY set to the old key?")
    finally:
        await pool.close()
    if path is not None:
        write_key_file(path, (ring.current,))
    result = Rotation(previous_key_id, ring.key_id, rewrapped, converted)
    log.info("certs_master_key_rotated", previous_key_id=result.previous_key_id, key_id=result.key_id,
             rewrapped=rewrapped, converted=converted)
    if nats_url:
        await _announce(nats_url, result)
    return result


async def _convert_legacy(pool: asyncpg.Pool, keystore: PostgresKeyStore, ring: KeyRing) -> int:
    """CA keys wrapped by the KEK itself (clusters from before issue 19) move under the cluster's data key."""
    done = 0
    for found in await store.live_kek_wrapped(pool):
        if found.encrypted_ca_key is None:
            continue
        plain = ring.decrypt(found.cluster_id, found.encrypted_ca_key, found.key_id)
        async with pool.acquire() as conn, conn.transaction():
            dk = await keystore.get_or_create(conn, found.cluster_id)
            if await store.rewrap(conn, cluster_id=found.cluster_id, old_key_id=found.key_id,
                                  encrypted_ca_key=dk.wrap(plain), key_id=dk.key_id):
                done += 1
    return done


async def _announce(nats_url: str, result: Rotation) -> None:
    bus = await Bus.connect(nats_url, name="cove-rotate-kek")
    try:
        event = MasterKeyRotated(previous_key_id=result.previous_key_id, key_id=result.key_id,
                                 rewrapped=result.rewrapped + result.converted, by=_who())
        await bus.publish(
            subjects.event_subject("certs", "kek", result.key_id),
            new_envelope(event, project_id=None, cluster_id=None),
        )
    finally:
        await bus.close()


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-key-file", type=Path, default=None,
                        help="the new key-encryption key (32 bytes, URL-safe base64); default: a random one")
    parser.add_argument("--state-dir", default=None, help="COVE_STATE_DIR, for the development key file")
    parser.add_argument("--database-url", default=None, help="default: COVE_DATABASE_URL")
    parser.add_argument("--nats-url", default=None, help="where to publish MasterKeyRotated (default: COVE_NATS_URL)")
    parser.add_argument("--schema", default="certs", help="the certs service's schema (default certs)")


def main(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.state_dir:
        environ["COVE_STATE_DIR"] = args.state_dir
    database_url = args.database_url or environ.get("COVE_DATABASE_URL")
    if not database_url:
        print("cove certs rotate-kek: set COVE_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    new = read_key_file(args.new_key_file)[0] if args.new_key_file else None
    try:
        result = asyncio.run(rotate_kek(environ, database_url=database_url, new=new, schema=args.schema,
                                        nats_url=args.nats_url or environ.get("COVE_NATS_URL")))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"cove certs rotate-kek: {exc}", file=sys.stderr)
        return 1
    print(f"key-encryption key {result.previous_key_id} -> {result.key_id}: {result.rewrapped} data keys "
          f"re-wrapped, {result.converted} older CA keys moved under a data key")
    return 0
