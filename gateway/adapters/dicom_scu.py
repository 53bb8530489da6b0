"""Talking to DICOM peers as a client: DCMTK's tools when present, pynetdicom otherwise.

Used by the demo (to play the modality) and by field commissioning. Note that
pynetdicom installs Python scripts named ``storescu``/``echoscu`` which may
shadow DCMTK's in PATH; ``find_dcmtk`` only returns the real DCMTK binaries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gateway.core.errors import LocalError, PeerError
from gateway.core.exam import COMMISSIONING_UID_ROOT


def find_dcmtk(name: str) -> str | None:
    """Path of DCMTK's ``name`` (storescu, echoscu, ...), or None."""
    candidates = [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for path in candidates:
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    return None


def dcmtk_env() -> dict[str, str]:
    """DCMTK leaves Nagle on unless told: on loopback it crawls without TCP_NODELAY=1."""
    return dict(os.environ, TCP_NODELAY="1")


def storescu_profile(files: list[Path], cfg_path: Path) -> list[str]:
    """storescu arguments proposing exactly each file's own SOP class and transfer syntax.

    That is what a modality does, and it keeps DCMTK from converting between
    transfer syntaxes (by default storescu proposes only uncompressed ones).
    """
    from pydicom import dcmread

    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    lines = ["[[TransferSyntaxes]]"]
    for i, (_, ts) in enumerate(pairs, 1):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop_class, _) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{i} = {sop_class}\\TS{i}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Contexts"]
    cfg_path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(cfg_path), "Files"]


def storescu(host: str, port: int, called_ae: str, calling_ae: str, files: list[Path],
             timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu proposing each file's own SOP class and transfer syntax, as a modality does."""
    binary = find_dcmtk("storescu")
    if binary is None:
        raise LocalError("DCMTK storescu not found (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="mgw-storescu-") as tmp:
        profile = storescu_profile(files, Path(tmp) / "profile.cfg")
        cmd = [binary, "-aet", calling_ae, "-aec", called_ae, "-nh", *profile, host, str(port), *map(str, files)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=dcmtk_env())


def pynetdicom_store(host: str, port: int, called_ae: str, calling_ae: str,
                     files: list[Path], source: str = "") -> list[int]:
    """Send ``files`` on one association with pynetdicom; the DIMSE status of each. ``source``:
    the local address to connect from (the box's own tools use the listener's address)."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        pair = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        if not any(c.abstract_syntax == pair[0] and pair[1] in c.transfer_syntax
                   for c in ae.requested_contexts):
            ae.add_requested_context(pair[0], pair[1])
    assoc = ae.associate(host, port, ae_title=called_ae, max_pdu=0, bind_address=(source, 0))
    if not assoc.is_established:
        raise PeerError(f"association to {called_ae}@{host}:{port} was not accepted")
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def send_study(host: str, port: int, called_ae: str, calling_ae: str, files: list[Path]) -> str:
    """Send as a modality would; return which sender was used. Raises on any failure."""
    if find_dcmtk("storescu"):
        result = storescu(host, port, called_ae, calling_ae, files)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise PeerError(f"storescu failed ({result.returncode}): {' | '.join(tail)}")
        return "dcmtk storescu"
    statuses = pynetdicom_store(host, port, called_ae, calling_ae, files)
    if any(s != 0 for s in statuses):
        raise PeerError(f"C-STORE statuses: {[hex(s) for s in statuses]}")
    return "pynetdicom"


def echo(host: str, port: int, called_ae: str, calling_ae: str, timeout_s: float = 10.0,
         source: str = "") -> int | None:
    """One C-ECHO with pynetdicom: its DIMSE status, or None if no association was made."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae, bind_address=(source, 0))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


def write_test_object(path: Path, unique: str) -> str:
    """A small Secondary Capture instance carrying no patient data; returns its SOP Instance UID.

    Patient Name is ``MGW^COMMISSIONING`` and every UID is derived from ``unique``
    (digits) under the gateway's commissioning root (``core.exam.COMMISSIONING_UID_ROOT``), so the
    object is recognisable in the archive, never mistaken for a patient's, and never recorded as an
    exam (``core.exam.is_test_object``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    sop = COMMISSIONING_UID_ROOT + unique + ".3"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.StudyInstanceUID = COMMISSIONING_UID_ROOT + unique + ".1"
    ds.SeriesInstanceUID = COMMISSIONING_UID_ROOT + unique + ".2"
    ds.PatientName, ds.PatientID, ds.Modality = "MGW^COMMISSIONING", "MGW-COMMISSIONING", "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(64)) * 64
    ds.save_as(path, enforce_file_format=True)
    return sop
