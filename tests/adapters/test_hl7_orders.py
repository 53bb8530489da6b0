"""HL7 v2 orders over MLLP (adapters/mllp.py, adapters/hl7_orders.py) with a real sender: python-hl7's
``mllp_send`` as the RIS, in another process; each order gets its ACK and becomes a worklist entry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters import hl7_orders
from gateway.adapters.hl7_orders import Order
from gateway.adapters.mllp import MllpServer
from gateway.adapters.worklist_store import WorklistStore
from gateway.core import schema
from tests.peers import _missing


def orm(control_id: str, control: str = "NW", step: str = "S1", accession: str = "ACC-1", name: str = "Zhang^Wei",
        birth: str = "19800101", charset: str = "UNICODE UTF-8") -> str:
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP|MGW|SITE|20261203090000||ORM^O01|{control_id}|P|2.3.1||||||{charset}",
        f"PID|||PID-77^^^HOSP||{name}||{birth}|F",
        "PV1||O||||||^Smith^Ann",
        f"ORC|{control}|PL-1|FL-1||SC",
        f"OBR|1|PL-1|FL-1|CTHEAD^CT head|||20261203093000|||||||||||{accession}|RP-1|{step}||||CT|||^^^20261203093000",
        "ZDS|1.2.826.0.1.1^100^Application^DICOM",
    ]) + "\r"


@pytest.fixture
def ris_link() -> Iterator[tuple[int, list[Order]]]:
    taken: list[Order] = []
    server = MllpServer("127.0.0.1", 0, lambda raw: hl7_orders.answer(raw, taken.append), timeout_s=30.0)
    server.start()
    yield server.port, taken
    server.stop()


def mllp_send(port: int, path: Path) -> str:
    tool = shutil.which("mllp_send", path=os.path.dirname(sys.executable))
    if tool is None:
        _missing("python-hl7's mllp_send is not installed (pip install hl7)")
    done = subprocess.run([tool, "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.decode("utf-8", "replace")


def test_orders_are_acknowledged_and_become_worklist_entries_when_a_ris_sends_them_over_mllp(
        ris_link: tuple[int, list[Order]], tmp_path: Path) -> None:
    port, taken = ris_link
    messages = [orm("MSG1"), orm("MSG2", step="S2", accession="ACC-2", name="Doe^John"),
                orm("MSG3", control="CA"), orm("MSG4", step="", accession="ACC-4"),  # no step ID: refused
                orm("MSG5", birth="1980-01-01")]  # not a date: refused
    path = tmp_path / "orders.hl7"
    path.write_bytes("\n".join(messages).encode())
    out = mllp_send(port, path)
    assert [line.split("|")[1:3] for line in out.replace("\r", "\n").splitlines() if line.startswith("MSA")] == [
        ["AA", "MSG1"], ["AA", "MSG2"], ["AA", "MSG3"], ["AE", "MSG4"], ["AE", "MSG5"]]
    assert "Zhang" not in out and "1980-01-01" not in out  # a refusal names the field, not the value
    new, _, cancelled = taken
    assert new.entry is not None and cancelled.cancel is not None
    e = new.entry
    assert (e.patient_name, e.patient_id, e.birth_date, e.sex, e.accession_number, e.referring_physician) == (
        "Zhang^Wei", "PID-77", "19800101", "F", "ACC-1", "Smith^Ann")
    assert (e.step.step_id, e.step.modality, e.step.start_date, e.step.start_time, e.study_instance_uid) == (
        "S1", "CT", "20261203", "093000", "1.2.826.0.1.1")
    assert (cancelled.cancel.step_id, cancelled.cancel.accession_number) == ("S1", "ACC-1")
    # the orders are the feed's operations: a box's cache applies them in order
    ops: list[schema.WorklistUpsert | schema.WorklistCancel] = [
        schema.WorklistUpsert(entry=o.entry) if o.entry else o.cancel for o in taken if o.entry or o.cancel]  # type: ignore[misc]
    store = WorklistStore(tmp_path / "worklist.db", os.urandom(32))
    try:
        store.apply(schema.WorklistUpdate(v=1, box_id="box-1", seq=1, ops=ops), 1.0)
        assert [i.step.step_id for i in store.candidates(None)] == ["S2"]
    finally:
        store.close()


def test_gb18030_order_is_decoded_when_msh18_names_it(ris_link: tuple[int, list[Order]], tmp_path: Path) -> None:
    port, taken = ris_link
    path = tmp_path / "order.hl7"
    path.write_bytes(orm("MSG1", name="张^伟", charset="GB 18030-2000").encode("gb18030"))
    assert "MSA|AA|MSG1" in mllp_send(port, path)
    assert taken[0].entry is not None and taken[0].entry.patient_name == "张^伟"


def test_oversize_frame_ends_only_that_connection_when_a_peer_floods(ris_link: tuple[int, list[Order]],
                                                                     tmp_path: Path) -> None:
    import socket

    port, taken = ris_link
    with socket.create_connection(("127.0.0.1", port), timeout=30) as flood:
        flood.sendall(b"\x0b" + b"x" * (1 << 20))
        flood.sendall(b"x" * 65536)
        assert flood.recv(1) == b""  # closed on us
    path = tmp_path / "order.hl7"
    path.write_bytes(orm("MSG9").encode())
    assert "MSA|AA|MSG9" in mllp_send(port, path)  # the server goes on
