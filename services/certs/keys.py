"""The certs key-encryption key (KEK, "master key"): it wraps each cluster's data key (docs/adr/0007), which
wraps the cluster's CA keys; clusters from before issue 19 have their CA key wrapped by the KEK itself.
AES-256-GCM.

Where the key comes from, first match wins:

1. ``COVE_CERTS_MASTER_KEY``: 32 bytes, URL-safe base64 (``python -c "import os,base64;
   print(base64.urlsafe_b64encode(os.urandom(32)).decode())"``). A running service cannot learn a new one: to
   rotate, restart the replicas with the new key here and the old one in ``COVE_CERTS_OLD_MASTER_KEYS``, run
   ``cove certs rotate-kek``, then drop the old key.
2. ``COVE_CERTS_MASTER_KEY_FILE``: a file with one key per line, the first the current one, any further ones kept
   for decryption during a rotation. The service re-reads it when it meets a key id it does not know and before
   it wraps a new data key (when the file changed), so ``cove certs rotate-kek`` rotates it live.
3. Otherwise the key file ``$COVE_STATE_DIR/certs-master.key`` (default state dir ``.cove``), created with mode
   0600 on first use, and a warning is logged: fine for ``cove run`` and tests, not for production; it is
   handled as in 2.

Every certs replica and any rebuild by replay needs the same key. ``COVE_CERTS_OLD_MASTER_KEYS``
(comma-separated, same format) keeps earlier keys for decryption. A ciphertext is ``nonce (12 bytes) ||
AES-GCM(key, nonce, plaintext, aad = cluster uuid)``: binding it to its cluster means a stored key cannot be
swapped onto another cluster.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
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


def _old_keys(environ: dict[str, str]) -> tuple[bytes, ...]:
    return tuple(
        _decode_key(part, "COVE_CERTS_OLD_MASTER_KEYS")
        for part in environ.get("COVE_CERTS_OLD_MASTER_KEYS", "").split(",")
        if part.strip()
    )


def key_file_of(environ: dict[str, str]) -> Path | None:
    """The key file the configuration names (or the development default); None when the key is in the
    environment."""
    if environ.get("COVE_CERTS_MASTER_KEY", "").strip():
        return None
    named = environ.get("COVE_CERTS_MASTER_KEY_FILE", "").strip()
    if named:
        return Path(named)
    return Path(environ.get("COVE_STATE_DIR", ".cove")) / KEY_FILE_NAME


def load_keyring(environ: dict[str, str]) -> KeyRing:
    old = _old_keys(environ)
    raw = environ.get("COVE_CERTS_MASTER_KEY", "").strip()
    if raw:
        return KeyRing(_decode_key(raw, "COVE_CERTS_MASTER_KEY"), old)
    path = key_file_of(environ)
    assert path is not None
    if not environ.get("COVE_CERTS_MASTER_KEY_FILE", "").strip():
        _key_from_file(path)  # the development default: created on first use, with a warning
    keys = read_key_file(path)
    return KeyRing(keys[0], (*keys[1:], *old))


def read_key_file(path: Path) -> tuple[bytes, ...]:
    """Every key of a key file, the current one first; at least one."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no key")
    return tuple(_decode_key(line, str(path)) for line in lines)


def write_key_file(path: Path, keys: tuple[bytes, ...]) -> None:
    """Replace the key file atomically (mode 0600): a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(base64.urlsafe_b64encode(k).decode() + "\n" for k in keys))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def new_key() -> bytes:
    return os.urandom(32)


class KeySource:
    """The service's KEK: a ``KeyRing`` that follows its key file. Keys once known are never forgotten by a
    running process (a data key still wrapped under the previous KEK stays readable while a rotation runs)."""

    RECHECK_SECONDS = 1.0

    def __init__(self, environ: dict[str, str]) -> None:
        self._environ = dict(environ)
        self._path = key_file_of(environ)
        self._lock = threading.Lock()
        self._ring = load_keyring(environ)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self, *, force: bool = False) -> KeyRing:
        """Re-read the key file if it changed (at most once a second unless ``force``)."""
        if self._path is None:
            return self._ring
        now = time.monotonic()
        if not force and now - self._checked < self.RECHECK_SECONDS:
            return self._ring
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp and not force:
                return self._ring
            try:
                fresh = load_keyring(self._environ)
            except (OSError, ValueError) as exc:
                log.error("certs_master_key_reload_failed", path=str(self._path), error=str(exc))
                return self._ring
            known = [k for k in (self._ring.current, *self._ring.old) if k not in (fresh.current, *fresh.old)]
            self._ring = KeyRing(fresh.current, (*fresh.old, *known))
            self._stamp = stamp
            log.info("certs_master_key_reloaded", key_id=self._ring.key_id)
            return self._ring

    def encrypt(self, cluster_id: str, plaintext: bytes) -> tuple[bytes, str]:
        return self.refresh().encrypt(cluster_id, plaintext)

    def decrypt(self, cluster_id: str, blob: bytes, key_id: str) -> bytes:
        ring = self._ring
        if key_id not in ring.by_id:
            ring = self.refresh(force=True)
        return ring.decrypt(cluster_id, blob, key_id)


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
    return read_key_file(path)[0]
