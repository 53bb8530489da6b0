"""Sending one archived Part 10 file to a PACS: DICOMweb STOW-RS or DIMSE C-STORE.

Both send the object's bytes as archived, never re-encoded, decrypted from the
sealed archive in memory (no plaintext file): STOW-RS posts the Part 10 file as
one ``application/dicom`` part (PS3.18 10.5), streamed; C-STORE copies it into
an anonymous memory file (``memfd``, never on a disk), proposes exactly its
transfer syntax and lets pynetdicom send the dataset from it without decoding. A send either returns
(the PACS confirmed it) or raises ``ForwardError`` saying why; the caller
owns retries. The STOW-RS password is read by the caller from a 0600 file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from gateway.core.errors import PeerError

log = logging.getLogger(__name__)
_SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


class ForwardError(PeerError):
    """The PACS did not confirm the object (refused, failed, unreachable)."""


@dataclass(frozen=True)
class StowRs:
    url: str  # .../studies
    username: str = ""
    password: str = ""
    timeout_s: float = 60.0
    name: str = "stow"

    def send(self, original: Callable[[], Iterable[bytes]], size: int, sop_instance_uid: str) -> None:
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from original()
            yield tail

        request = urllib.request.Request(self.url, data=body(), method="POST", headers={  # noqa: S310 - configured URL
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(len(head) + size + len(tail)),
            "Accept": "application/dicom+json",
        })
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,  # noqa: S310
                                        context=ssl.create_default_context()) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise ForwardError(f"STOW-RS answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ForwardError(f"STOW-RS unreachable: {getattr(exc, 'reason', exc)}") from exc
        if status != 200:
            raise ForwardError(f"STOW-RS answered HTTP {status} (not every instance stored)")
        _check_stow_response(payload, sop_instance_uid)


def _check_stow_response(payload: bytes, sop_instance_uid: str) -> None:
    """A 200 must list our instance as referenced and none as failed (PS3.18 Table 10.5.3-1)."""
    try:
        doc = json.loads(payload) if payload.strip() else {}
    except ValueError as exc:
        raise ForwardError("STOW-RS response is not DICOM JSON") from exc
    if not isinstance(doc, dict):
        raise ForwardError("STOW-RS response is not a DICOM JSON object")
    if doc.get(_FAILED_SOP_SEQUENCE, {}).get("Value"):
        raise ForwardError("STOW-RS reports the instance as failed")
    referenced = doc.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    uids = {v for item in referenced for v in item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])}
    if sop_instance_uid not in uids:
        raise ForwardError("STOW-RS response does not reference the instance")


@dataclass(frozen=True)
class CStore:
    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout_s: float = 60.0
    name: str = "cstore"

    def send(self, original: Callable[[], Iterable[bytes]], size: int, sop_instance_uid: str) -> None:
        fd = os.memfd_create("mgw-forward", os.MFD_CLOEXEC)  # RAM only: the plaintext never reaches a disk
        try:
            for piece in original():
                os.write(fd, piece)
            self._send_file(Path(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)

    def _send_file(self, path: Path) -> None:
        try:
            meta = read_file_meta_info(path)
            sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds; an archived file must have meta
            raise ForwardError(f"archived file has no usable file meta: {exc}") from exc
        # Send the file's dataset bytes verbatim (pynetdicom otherwise decodes and re-encodes).
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise ForwardError(f"C-STORE association to {self.called_ae} not established")
        try:
            status = assoc.send_c_store(path)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ForwardError(f"C-STORE failed: {exc}") from exc
        finally:
            assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise ForwardError("C-STORE got no response (timeout or aborted association)")
        if code not in _SUCCESS_OR_WARNING:
            raise ForwardError(f"C-STORE refused with status 0x{code:04X}")


__all__ = ["CStore", "ForwardError", "StowRs"]
