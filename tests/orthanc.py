"""A real Orthanc PACS (Debian's orthanc + orthanc-dicomweb) on loopback ports, for forwarding tests.

The configuration is generated per run: HTTP and DICOM ports on 127.0.0.1, no
authentication, storage in a temp dir, the DICOMweb plugin loaded. Orthanc's
REST API is how a test reads back what the PACS holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.adapters import ports
from tests.peers import PEER_START_S, _missing

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
WORKLISTS_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
AET = "ORTHANC"


class Orthanc:
    def __init__(self, root: Path, http_port: int, dicom_port: int) -> None:
        self.root, self.http_port, self.dicom_port = root, http_port, dicom_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web/studies"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:  # noqa: S310 - loopback
            body = response.read()
        return json.loads(body) if path != "/file" and not path.endswith("/file") else body

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

    def sop_instance_uid(self, orthanc_id: str) -> str:
        return str(self.get(f"/instances/{orthanc_id}/simplified-tags")["SOPInstanceUID"])


@contextmanager
def orthanc(root: Path, worklists: Path | None = None) -> Iterator[Orthanc]:
    """Orthanc on two ports picked free, and on others if one was taken before it bound it. With
    ``worklists``, its Modality Worklists plugin serves the ``*.wl`` files of that folder (a RIS)."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).exists() or not DICOMWEB_PLUGIN.exists():
        _missing("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    root.mkdir(parents=True, exist_ok=True)

    def start(http_port: int, dicom_port: int) -> tuple[Orthanc, subprocess.Popen[bytes]]:
        server = Orthanc(root, http_port, dicom_port)
        config = {
            "Name": "mgw-test-pacs", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "StorageCompression": False, "HttpPort": http_port, "DicomPort": dicom_port,
            "DicomAet": AET, "DicomCheckCalledAet": True, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "OverwriteInstances": True, "UnknownSopClassAccepted": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "HttpBindAddress": "127.0.0.1", "DicomBindAddress": "127.0.0.1",
        }
        if worklists is not None:
            if not WORKLISTS_PLUGIN.exists():
                _missing("Orthanc's Modality Worklists plugin is not installed (apt-get install orthanc)")
            config["Plugins"] = [str(DICOMWEB_PLUGIN), str(WORKLISTS_PLUGIN)]
            config["Worklists"] = {"Enable": True, "Database": str(worklists)}
            config["DefaultEncoding"] = "Utf8"
            config["DicomAlwaysAllowFindWorklist"] = True
        conf = root / "orthanc.json"
        conf.write_text(json.dumps(config, indent=1))
        log = root / "orthanc.log"
        output = ports.appended(log)
        with open(log, "ab") as err:
            proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            ports.wait_listening(proc, [http_port, dicom_port], f"Orthanc (see {log})", output, PEER_START_S)
        except BaseException:
            _stop(proc)
            raise
        return server, proc

    server, proc = ports.on_free_port(start, count=2)
    try:
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # its storage is thrown away; a graceful stop takes seconds
    proc.wait()
