"""Hostile USB sticks for the tests: file-system images, loop devices, and a small edge spool.

Images are real (mkfs.vfat from dosfstools, mkfs.ext4 from e2fsprogs), attached with losetup and
mounted by the code under test or by ``mount_image``; everything needs root (``require_root``:
a skip on a laptop, a failure under CI=true). The machine's kernel may lack vfat (a minimal VM
kernel without modules): ``kernel_mounts`` says so, and the tests that need a small stick then
use ext4, which fills up and fails the same way.
"""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway import config
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolStore
from gateway.core.instance import InstanceIdentity
from gateway.edge import cache
from gateway.paths import Paths
from tests.peers import require_root

BOX_ID = "box-usb-1"


def _sh(*cmd: str) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"
    return out.stdout.strip()


def need_tools() -> None:
    require_root("to build, attach and mount file-system images")
    for tool in ("mkfs.vfat", "mkfs.ext4", "losetup", "blkid", "mount"):
        assert shutil.which(tool), f"{tool} is missing (.ci/install installs dosfstools, e2fsprogs, util-linux)"


def kernel_mounts(fs: str) -> bool:
    return any(line.split()[-1] == fs for line in Path("/proc/filesystems").read_text().splitlines())


def make_image(path: Path, fs: str, size_mb: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size_mb << 20)
    if fs == "vfat":
        _sh("mkfs.vfat", "-n", "STICK", str(path))
    else:
        _sh("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=0", str(path))
    return path


@contextmanager
def loop(image: Path) -> Iterator[str]:
    dev = _sh("losetup", "--find", "--show", str(image))
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


@contextmanager
def mount_image(image: Path, target: Path, options: str = "") -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-o", ",".join(filter(None, ["loop", options])), str(image), str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, timeout=60)


def mounted_at(target: Path) -> set[str] | None:
    """The mount options of the mount at ``target`` (None if nothing is mounted there)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return set(fields[5].split(",")) | set(line.split(" - ")[1].split()[2].split(","))
    return None


@dataclass
class Canary:
    """A root-owned file outside the stick: nothing may read, write or re-own it."""

    path: Path
    secret: bytes

    @classmethod
    def plant(cls, directory: Path) -> Canary:
        directory.mkdir(parents=True, exist_ok=True)
        secret = b"CANARY-" + random.randbytes(8).hex().encode()
        path = directory / "canary"
        path.write_bytes(secret)
        return cls(path, secret)

    def snapshot(self) -> tuple[bytes, int, int, int, int]:
        st = self.path.stat()
        return self.path.read_bytes(), st.st_mtime_ns, st.st_uid, st.st_gid, st.st_mode


@dataclass
class EdgeBox:
    settings: config.EdgeSettings
    paths: Paths
    item_ids: list[int]


def edge_box(root: Path, items: int, size: int, seed: int = 1) -> EdgeBox:
    """A box with ``items`` received (not yet packed) instances of ``size`` incompressible bytes,
    sealed at rest as the edge spools them."""
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    state = root / "state"
    toml = root / "edge.toml"
    toml.write_text(f'[box]\nid = "{BOX_ID}"\ncloud_public_key = "{base64.b64encode(public).decode()}"\n'
                    f'state_dir = "{state}"\n')
    settings = config.load_edge([toml])
    paths = Paths.from_env(str(state))
    paths.blob_dir.mkdir(parents=True, exist_ok=True)
    key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)
    rng = random.Random(seed)
    store = SpoolStore(paths.spool_db)
    ids = []
    for n in range(items):
        data = rng.randbytes(size)
        blob = f"item{n}{cache.SEALED_SUFFIX}"
        cache.write_sealed(paths.blob_dir / blob, key, [data])
        ids.append(store.add_received(InstanceIdentity(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"1.2.3.{n}", study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.1", transfer_syntax_uid="1.2.840.10008.1.2.1", size=size,
            sha256=hashlib.sha256(data).hexdigest()), "MODALITY", blob, time.time()))
    store.close()
    return EdgeBox(settings, paths, ids)
