"""Health probes of our own DICOM listener, as a modality would see it (pynetdicom).

``echo`` sends C-ECHO; ``write_probe_instance`` writes a tiny synthetic Secondary
Capture (no patient: PatientID ``MGW-HEALTHCHECK``) that the update commit gate
sends through the whole path to prove the cloud acknowledges end to end.
"""

from __future__ import annotations

from pathlib import Path

from gateway.core.errors import PeerError

PROBE_PATIENT_ID = "MGW-HEALTHCHECK"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def echo(host: str, port: int, called_ae: str, calling_ae: str, timeout_s: float = 10.0, source: str = "") -> int:
    """C-ECHO; the DIMSE status (0 = success). ``PeerError`` if no association. ``source``: the
    local address to connect from (the box's own tools use the listener's address)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=called_ae, bind_address=(source, 0))
    if not assoc.is_established:
        raise PeerError(f"association to {called_ae}@{host}:{port} was not accepted")
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def write_probe_instance(path: Path) -> str:
    """Write a 4x4 Secondary Capture to ``path``; return its SOP Instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = PROBE_PATIENT_ID
    ds.PatientName = "MGW^HEALTHCHECK"
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    ds.SeriesDescription = "modality gateway update health check"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(16))
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)
