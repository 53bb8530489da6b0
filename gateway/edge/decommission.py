"""`mgw decommission`: crypto-erase a box before it leaves the site.

The key store is overwritten and deleted first: the box identity (its TLS key),
the cache key that encrypts spooled studies and the worklist cache at rest, and the
worklist key that opens the cloud's worklist frames (``keys/worklist.secret``). Without the cache key
the spooled blobs are unreadable ciphertext even if flash wear-levelling keeps
old sectors; they are then deleted too, with the spool index, the outbox, the
certificates and ``device.toml``. Revoke the box in the cloud as well
(`mgw cloud revoke BOX`).
"""

from __future__ import annotations

import shutil

from gateway.adapters.keystore import FileKeyStore
from gateway.paths import Paths


def crypto_erase(paths: Paths) -> dict[str, int]:
    keys = FileKeyStore(paths.state_dir / "keys").erase_all()
    removed = 0
    for directory in (paths.state_dir / "spool", paths.state_dir / "pki"):
        if directory.is_dir():
            removed += sum(1 for p in directory.rglob("*") if p.is_file())
            shutil.rmtree(directory)
    for name in ("spool.db", "spool.db-wal", "spool.db-shm", "device.toml",
                 "utilisation.db", "utilisation.db-wal", "utilisation.db-shm",  # exams keep study UIDs
                 "worklist.db", "worklist.db-wal", "worklist.db-shm"):  # sealed already: the key is gone
        path = paths.state_dir / name
        if path.exists():
            path.unlink()
            removed += 1
    return {"keys_erased": keys, "files_removed": removed}
