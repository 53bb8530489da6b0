"""PACS forwarding (gateway.cloud.archive.forward) against a real Orthanc, with SQLite and PostgreSQL queues."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from gateway.adapters.pacs import CStore, ForwardError, StowRs
from gateway.cloud.archive.forward import Forwarder, backoff_s
from gateway.cloud.archive.store import Archive
from gateway.config import ForwardSettings
from gateway.core.instance import InstanceIdentity
from tests.backends import Backend
from tests.orthanc import AET, Orthanc, orthanc
from tests.peers import closed_port, dataset_bytes, dcmtk_storescp, real_images

BOX = "box-1"


def archive_file(archive: Archive, path: Path, n: int, now: float = 1000.0) -> InstanceIdentity:
    data = path.read_bytes()
    meta = dcmread(path, stop_before_pixels=True)
    identity = InstanceIdentity(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                sop_class_uid=str(meta.SOPClassUID), sop_instance_uid=str(meta.SOPInstanceUID),
                                study_instance_uid=str(meta.StudyInstanceUID),
                                series_instance_uid=str(meta.SeriesInstanceUID),
                                transfer_syntax_uid=str(meta.file_meta.TransferSyntaxUID))
    scratch = archive.receive([data])
    archive.store(identity, scratch, BOX, n.to_bytes(16, "big"), 1, now)
    return identity


def distinct_images() -> list[Path]:
    """Real images, one per SOP Instance UID (some corpus files are one instance in two syntaxes)."""
    seen: dict[str, Path] = {}
    for f in real_images():
        seen.setdefault(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID), f)
    return list(seen.values())


def differences(held: Dataset, sent: Dataset, where: str = "") -> list[str]:
    """Where two datasets differ, ignoring group lengths (gggg,0000) and the VR of Pixel Data."""
    out = []
    tags = {t for t in [*held.keys(), *sent.keys()] if t.element != 0}
    for tag in sorted(tags):
        if tag not in held or tag not in sent:
            out.append(f"{where}{tag} present on one side only")
            continue
        h, s = held[tag], sent[tag]
        if h.VR != s.VR and tag != 0x7FE00010:  # DCMTK writes encapsulated pixel data as OB
            out.append(f"{where}{tag} VR {h.VR} != {s.VR}")
        if s.VR == "SQ":
            if len(h.value) != len(s.value):
                out.append(f"{where}{tag} item count")
            for i, (hi, si) in enumerate(zip(h.value, s.value, strict=False)):
                out += differences(hi, si, f"{where}{tag}[{i}].")
        elif h.value != s.value:
            out.append(f"{where}{tag} value")
    return out


def pacs_files(pacs: Orthanc) -> dict[str, bytes]:
    return {pacs.sop_instance_uid(i): pacs.instance_file(i) for i in pacs.instances()}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with orthanc(tmp_path / "orthanc") as server:
        yield server


def _archive(backend: Backend, root: Path, destinations: tuple[str, ...]) -> Archive:
    archive = backend.archive(root)
    return Archive(archive.directory, archive.index, destinations)


def test_study_reaches_orthanc_byte_identical_when_forwarded_by_stow_rs(
        tmp_path: Path, backend: Backend, pacs: Orthanc) -> None:
    archive = _archive(backend, tmp_path, ("stow",))
    files = distinct_images()
    assert len(files) >= 8
    sent = {archive_file(archive, f, n).sop_instance_uid: f.read_bytes() for n, f in enumerate(files)}
    forwarder = Forwarder(ForwardSettings(), archive, [StowRs(pacs.stow_url)], "w1")

    assert forwarder.run_once() == len(files)

    assert forwarder.counters.done == len(files)
    assert archive.index.forward_counts() == {"stow:DONE": len(files)}
    assert pacs_files(pacs) == sent  # every byte, file meta included
    assert forwarder.run_once() == 0  # nothing left in the queue
    archive.close()


def test_study_reaches_orthanc_with_identical_datasets_when_forwarded_by_c_store(
        tmp_path: Path, backend: Backend, pacs: Orthanc) -> None:
    archive = _archive(backend, tmp_path, ("cstore",))
    files = distinct_images()
    assert len(files) >= 8
    sent = {archive_file(archive, f, n).sop_instance_uid: f for n, f in enumerate(files)}
    forwarder = Forwarder(ForwardSettings(), archive, [CStore("127.0.0.1", pacs.dicom_port, AET, "MGW-CLOUD")], "w1")

    assert forwarder.run_once() == len(files)

    assert archive.index.forward_counts() == {"cstore:DONE": len(files)}
    held = pacs_files(pacs)
    assert set(held) == set(sent)
    # C-STORE carries the dataset; the PACS writes its own file meta group in front of it, and
    # Orthanc (DCMTK) drops group lengths (gggg,0000) and writes encapsulated Pixel Data as OB.
    # Every value, pixel data included, must be what we sent; most files are byte-identical.
    identical = 0
    for uid, data in held.items():
        tmp = tmp_path / "held.dcm"
        tmp.write_bytes(data)
        identical += dataset_bytes(tmp) == dataset_bytes(sent[uid])
        assert differences(dcmread(tmp), dcmread(sent[uid])) == [], uid
    assert identical >= 1
    archive.close()


def test_c_store_forward_sends_the_archived_dataset_bytes_verbatim_when_the_peer_preserves_bits(
        tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", tmp_path / "index.db", ("cstore",))
    files = distinct_images()
    for n, f in enumerate(files):
        archive_file(archive, f, n)
    with dcmtk_storescp(tmp_path / "received", ae_title="REFERENCE") as port:
        forwarder = Forwarder(ForwardSettings(), archive, [CStore("127.0.0.1", port, "REFERENCE", "MGW-CLOUD")], "w")
        assert forwarder.run_once() == len(files)
    received = sorted(dataset_bytes(p) for p in (tmp_path / "received").iterdir())
    assert received == sorted(dataset_bytes(f) for f in files)
    archive.close()


def test_forward_is_retried_with_backoff_when_the_pacs_is_down_until_it_comes_up(
        tmp_path: Path, backend: Backend) -> None:
    now = [5000.0]
    archive = _archive(backend, tmp_path, ("stow",))
    identity = archive_file(archive, real_images()[3], 1, now[0])
    settings = ForwardSettings(backoff_min_s=10.0, backoff_max_s=25.0, max_attempts=10, timeout_s=5.0)
    with orthanc(tmp_path / "orthanc") as pacs:
        url = pacs.stow_url
    down = Forwarder(settings, archive, [StowRs(url)], "w1", clock=lambda: now[0])

    assert down.run_once() == 1 and down.counters.retried == 1
    assert down.run_once() == 0  # not due before the backoff
    now[0] += 10.0
    assert down.run_once() == 1 and down.counters.retried == 2
    now[0] += 19.0
    assert down.run_once() == 0  # second delay is 20 s
    now[0] += 1.0
    port = int(url.split(":")[2].split("/")[0])
    with orthanc(tmp_path / "orthanc2") as pacs:
        up = Forwarder(settings, archive, [StowRs(url.replace(str(port), str(pacs.http_port)))], "w2",
                       clock=lambda: now[0])
        assert up.run_once() == 1 and up.counters.done == 1
        assert [pacs.sop_instance_uid(i) for i in pacs.instances()] == [identity.sop_instance_uid]
    assert archive.index.forward_counts() == {"stow:DONE": 1}
    archive.close()


def test_forward_fails_terminally_when_attempts_are_used_up(tmp_path: Path, backend: Backend) -> None:
    now = [1000.0]
    archive = _archive(backend, tmp_path, ("cstore",))
    archive_file(archive, real_images()[3], 1, now[0])
    settings = ForwardSettings(backoff_min_s=1.0, max_attempts=3, timeout_s=5.0)
    with closed_port() as nobody:
        forwarder = Forwarder(settings, archive, [CStore("127.0.0.1", nobody, "NOBODY", "MGW-CLOUD", 5.0)], "w1",
                              clock=lambda: now[0])
        for _ in range(5):
            forwarder.run_once()
            now[0] += 100.0

    assert (forwarder.counters.retried, forwarder.counters.failed) == (2, 1)
    assert archive.index.forward_counts() == {"cstore:FAILED": 1}
    archive.close()


def test_entry_is_sent_again_when_its_forwarder_died_holding_the_lease(
        tmp_path: Path, backend: Backend, pacs: Orthanc) -> None:
    now = [1000.0]
    archive = _archive(backend, tmp_path, ("stow",))
    identity = archive_file(archive, real_images()[3], 1, now[0])
    [claimed] = archive.index.claim_forwards("stow", "dead-worker", now[0], 300.0, 10)  # then killed
    alive = Forwarder(ForwardSettings(lease_s=300.0), archive, [StowRs(pacs.stow_url)], "w2", clock=lambda: now[0])

    assert claimed["sop_instance_uid"] == identity.sop_instance_uid
    assert alive.run_once() == 0  # leased to the dead worker
    now[0] += 301.0
    assert alive.run_once() == 1
    assert archive.index.forward_counts() == {"stow:DONE": 1}
    archive.index.finish_forward(claimed, "PENDING", 1, 0.0, "late", now[0])  # the dead worker's late word
    assert archive.index.forward_counts() == {"stow:DONE": 1}  # ignored: it no longer holds the lease
    assert len(pacs.instances()) == 1
    archive.close()


def test_stow_rs_send_raises_forward_error_when_the_response_lacks_the_instance(pacs: Orthanc) -> None:
    with pytest.raises(ForwardError, match="does not reference"):
        data = real_images()[3].read_bytes()
        StowRs(pacs.stow_url).send(lambda: [data], len(data), "1.2.3.999")


@pytest.mark.parametrize(("attempts", "expected"), [(1, 5.0), (2, 10.0), (3, 20.0), (10, 60.0), (500, 60.0)])
def test_backoff_doubles_and_is_capped_when_attempts_grow(attempts: int, expected: float) -> None:
    assert backoff_s(attempts, 5.0, 60.0) == expected
