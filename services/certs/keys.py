"""The certs master key: CA private keys are stored (and published) only encrypted with it (AES-256-GCM).

Where the key comes from, first match wins:

1. ``COVE_CERTS_MASTER_KEY``: 32 bytes, URL-safe base64 (``python -c "import os,base64;
   print(base64.urlsafe_b64encode(os.urandom(32)).decode())"``). Production sets this (from a secret store).
2. Otherwise a key file ``$COVE_STATE_DIR/certs-master.key`` (default state dir ``.cove``), created with mode 0600
   on first use, and a warning is logged: fine for ``cove run`` and tests, not for production. Every certs
   replica and any rebuild by replay needs the same key.

``COVE_CERTS_OLD_MASTER_KEYS`` (comma-separated, same format) keeps earlier keys for decryption after a rotation.
A ciphertext is ``nonce (12 bytes) || AES-GCM(key, nonce, key_pem, aad = cluster uuid)``: binding it to its
cluster means a stored key cannot be swapped onto another cluster.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = structlog.get_logger(__name__)

KEY_FILE_NAME = "certs-master.key"
NONCE_BYTES = 12


class UndecryptableKey(Exception):
    """A ciphertext cannot be decrypted: unknown key id, or tampered/mismatched data."""


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"cove-certs-master:" + key).hexdigest()[:16]


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: not URL-safe base64: {exc}") from exc
    if len(key) != 32:
        raise ValueError(f"{source}: the key must be 32 bytes, got {len(key)}")
    return key


@dataclass(frozen=True)
class KeyRing:
    """The current key (encrypts) and every known key by id (decrypts)."""

    current: bytes
    old: tuple[bytes, ...] = ()
    by_id: dict[str, bytes] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for key in (self.current, *self.old):
            self.by_id[key_id_of(key)] = key

    @property
    def key_id(self) -> str:
        return key_id_of(self.current)

    def encrypt(self, cluster_id: str, plaintext: bytes) -> tuple[bytes, str]:
        """Returns (ciphertext, key id)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.current).encrypt(nonce, plaintext, cluster_id.encode()), self.key_id

    def decrypt(self, cluster_id: str, blob: bytes, key_id: str) -> bytes:
        key = self.by_id.get(key_id)
        if key is None:
            raise UndecryptableKey(f"unknown certs master key id {key_id}")
        try:
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], cluster_id.encode())
        except (InvalidTag, ValueError) as exc:
            raise UndecryptableKey(f"CA key of cluster {cluster_id} cannot be decrypted") from exc


def load_keyring(environ: dict[str, str]) -> KeyRing:
    old = tuple(
        _decode_key(part, "COVE_CERTS_OLD_MASTER_KEYS")
        for part in environ.get("COVE_CERTS_OLD_MASTER_KEYS", "").split(",")
        if part.strip()
    )
    raw = environ.get("COVE_CERTS_MASTER_KEY", "").strip()
    if raw:
        return KeyRing(_decode_key(raw, "COVE_CERTS_MASTER_KEY"), old)
    path = Path(environ.get("COVE_STATE_DIR", ".cove")) / KEY_FILE_NAME
    return KeyRing(_key_from_file(path), old)


def _key_from_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.urlsafe_b64encode(os.urandom(32)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
            log.warning("certs_master_key_created", path=str(path))
    log.warning(
        "certs_master_key_from_file",
        path=str(path),
        hint="set COVE_CERTS_MASTER_KEY from a secret store outside development",
    )
    return _decode_key(path.read_text(), str(path))
