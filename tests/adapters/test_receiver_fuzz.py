"""Fuzzing the DICOM receiver: malformed PDUs on raw sockets, mutated datasets on real
associations, and the dataset walker's invariant. The process must survive, every
association must end cleanly (a status, an A-ABORT or a close), and nothing half-received
may be kept."""

from __future__ import annotations

import io
import random
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.adapters.dicom_receive import ReceivedInstance, check_dataset
from gateway.adapters.dicom_scp import DicomListener
from gateway.config import DicomSettings
from gateway.core.errors import DatasetStructureError
from tests.adapters.test_dicom_scp import store_listener
from tests.peers import dataset_bytes, echo, part10_file, real_images, send_verbatim, wait_for

AE_TITLE = "MGW"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class MemorySink:
    def __init__(self) -> None:
        self.accepted: list[ReceivedInstance] = []
        self._lock = threading.Lock()

    def accept(self, instance: ReceivedInstance) -> None:
        with self._lock:
            self.accepted.append(instance)
        instance.path.unlink()


@pytest.fixture(scope="module")
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory, sink: MemorySink) -> Iterator[DicomListener]:
    incoming = tmp_path_factory.mktemp("fuzz") / "spool" / "incoming"
    dicom = DicomSettings(ae_title=AE_TITLE, bind_host="127.0.0.1", port=0, network_timeout_s=2.0,
                          dimse_timeout_s=2.0, max_associations=4)
    lst = store_listener(dicom, incoming, sink, bytes(32))
    lst.start()
    yield lst
    lst.stop()


@pytest.fixture(scope="module")
def associate_rq() -> bytes:
    """The bytes of a genuine A-ASSOCIATE-RQ (pynetdicom, Verification) captured on a socket."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 1
    threading.Thread(target=lambda: ae.associate("127.0.0.1", port, ae_title=AE_TITLE), daemon=True).start()
    conn, _ = server.accept()
    with conn:
        head = _read_exact(conn, 6)
        body = _read_exact(conn, struct.unpack(">L", head[2:6])[0])
    server.close()
    return head + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        piece = sock.recv(n - len(out))
        if not piece:
            break
        out += piece
    return out


def _exchange(port: int, payload: bytes, then: bytes = b"") -> bytes:
    """Send ``payload`` (and ``then`` after the first reply), half-close, read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        if then:
            sock.settimeout(3)
            try:
                got = sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return got
            try:
                sock.sendall(then)
            except OSError:
                return got
        sock.settimeout(10)
        try:
            sock.shutdown(socket.SHUT_WR)
            while piece := sock.recv(65536):
                got += piece
        except OSError:  # reset or already closed by the listener: a clean end too
            pass
        return got


PDU = st.builds(
    lambda kind, length, body, lie: bytes([kind, 0]) + struct.pack(">L", length if lie else len(body)) + body,
    st.one_of(st.integers(1, 7), st.integers(0, 255)), st.integers(0, 2**32 - 1), st.binary(max_size=300),
    st.booleans())


def _still_serving(listener: DicomListener) -> None:
    """No malformed association outlives the network timeout, and the AE answers again."""
    wait_for(lambda: listener.active_associations() == 0, 60, "every association to end")
    assert echo(listener.port, AE_TITLE).returncode == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pdus=st.lists(PDU, min_size=1, max_size=3))
def test_listener_survives_when_arbitrary_pdus_arrive_before_association(
        listener: DicomListener, pdus: list[bytes]) -> None:
    reply = _exchange(listener.port, b"".join(pdus))
    assert reply == b"" or reply[0] in (0x02, 0x03, 0x07)  # nothing, A-ASSOCIATE-AC/RJ or A-ABORT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_listener_survives_when_association_request_is_mutated_or_followed_by_garbage(
        listener: DicomListener, associate_rq: bytes, data: st.DataObject) -> None:
    rq = bytearray(associate_rq)
    if data.draw(st.booleans(), "mutate the request"):
        for pos in data.draw(st.lists(st.integers(0, len(rq) - 1), min_size=1, max_size=4), "positions"):
            rq[pos] ^= data.draw(st.integers(1, 255), "xor")
        reply = _exchange(listener.port, bytes(rq))
    else:
        reply = _exchange(listener.port, bytes(rq), then=data.draw(PDU, "after the AC"))
    assert reply == b"" or reply[0] in (0x02, 0x03, 0x05, 0x06, 0x07)


def test_listener_still_stores_when_the_fuzzing_is_over(listener: DicomListener) -> None:
    _still_serving(listener)
    assert send_verbatim(listener.port, real_images()[:1], AE_TITLE) == [0x0000]


def _mutations(source: bytes, rng: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        data = bytearray(source)
        how = rng.choice(("flip", "truncate", "length", "splice"))
        if how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 4096))] ^= 1 << rng.randrange(8)
        elif how == "truncate":
            del data[rng.randrange(1, len(data)):]
        elif how == "length":  # a length field somewhere in the header made absurd
            pos = rng.randrange(0, min(len(data) - 4, 2048))
            data[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"))
        else:
            start = rng.randrange(len(data))
            data[start:start] = rng.randbytes(rng.randint(1, 64))
        yield bytes(data)


def test_every_mutated_dataset_gets_success_or_a_failure_status_when_sent_verbatim(
        listener: DicomListener, sink: MemorySink, tmp_path: Path) -> None:
    """0xC210 for a broken structure; 0x0117/0xA900 when a flipped bit lands in the dataset's own
    SOP Instance or Class UID (it no longer is the instance the command names)."""
    source = next(p for p in real_images() if p.name == "693_UNCI.dcm")
    original, uid = dataset_bytes(source), str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    rng = random.Random(20261124)
    files = [part10_file(tmp_path / f"m{i}.dcm", CT_IMAGE_STORAGE, uid, EXPLICIT_LE, blob)
             for i, blob in enumerate(_mutations(original, rng, 40))]
    before = len(sink.accepted)
    statuses = send_verbatim(listener.port, files, AE_TITLE)
    assert set(statuses) <= {0x0000, 0xC210, 0x0117, 0xA900}, statuses
    assert 0xC210 in statuses  # the mutations do reach the structure check
    accepted = sink.accepted[before:]
    assert len(accepted) == statuses.count(0x0000)
    for instance in accepted:  # each accepted one was structurally whole
        assert instance.identity.size > 0
    _still_serving(listener)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=600), explicit=st.booleans())
def test_walker_parses_or_raises_dataset_structure_error_when_bytes_are_arbitrary(blob: bytes, explicit: bool) -> None:
    """The h11 fuzz invariant for the structure check: our error, never another exception."""
    head = b"\0" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00" + struct.pack("<L", 0)
    ts = UID(EXPLICIT_LE if explicit else "1.2.840.10008.1.2")
    try:
        check_dataset(io.BytesIO(head + blob), ts)
    except DatasetStructureError:
        pass


def test_deflate_bomb_and_item_flood_get_c212_and_the_once_truncated_length_is_stored_when_sent_deflated(
        listener: DicomListener, sink: MemorySink, tmp_path: Path) -> None:
    from tests.dicom_cases import DEFLATED_LE, deflate_bomb, item_flood, truncation_length_case

    files = [part10_file(tmp_path / f"{name}.dcm", CT_IMAGE_STORAGE, f"1.2.3.9.{n}", DEFLATED_LE, blob)
             for n, (name, blob) in enumerate((("bomb", deflate_bomb()), ("flood", item_flood()),
                                                ("length", truncation_length_case("1.2.3.9.2"))))]
    before = listener.counts()["datasets_refused"].get("over a limit", 0)
    assert send_verbatim(listener.port, files, AE_TITLE) == [0xC212, 0xC212, 0x0000]
    assert listener.counts()["datasets_refused"]["over a limit"] == before + 2
    stored = sink.accepted[-1]
    assert stored.identity.transfer_syntax_uid == DEFLATED_LE and stored.identity.study_instance_uid == "1.2.3.4"
    assert stored.modality == "CT"
    _still_serving(listener)
