"""Modality gateway: DICOM in at the scanner, compressed and sealed, out over MQTT to the cloud."""

__version__ = "0.1.0"
