"""The modality's whole worklist conversation, every process real: a RIS sends an HL7 order to the
fleet service (python-hl7's ``mllp_send``), an operator routes the station to the box (``mgw cloud
worklist route add``), the fleet publishes the box's sealed worklist through the mutual-TLS,
guarded mosquitto, the edge applies it and DCMTK ``findscu`` (the modality) sees the patient; the
modality's MPPS (pynetdicom) closes the step, the box reports it, the cloud acknowledges it and
sends ORM^O01 status updates to the RIS's MLLP endpoint (python-hl7), and the step leaves."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.loopback import BOX_ID, MODALITY_AE, LoopbackDeployment
from tests.adapters.test_hl7_orders import mllp_send, orm
from tests.adapters.test_mpps_scp import mpps
from tests.adapters.test_worklist_scp import BASE, findscu
from tests.cloud.test_worklist_service import RisEndpoint
from tests.peers import wait_for
from tests.system.test_worklist_feed import metric

Deploy = Callable[..., LoopbackDeployment]


def _steps(d: LoopbackDeployment, tmp: Path) -> dict[str, str]:
    """step id -> patient name, as the modality's C-FIND sees them."""
    statuses, answers = findscu(d.dicom_port, tmp, *BASE, calling=MODALITY_AE)
    assert statuses[-1] == 0x0000
    return {str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID): str(a.PatientName) for a in answers}


def test_modality_sees_the_ris_order_and_its_mpps_reaches_the_ris_when_the_fleet_runs_the_feed(
        deploy: Deploy, tmp_path: Path) -> None:
    ris = RisEndpoint()
    try:
        d = deploy(secure=True, edge_overrides={"worklist": {"status_resend_s": 1.0}}, cloud_overrides={
            "fleet.worklist": {"enabled": True, "hl7_port": 0, "publish_s": 0.5, "retry_s": 1.0,
                               "ris_hl7_host": "127.0.0.1", "ris_hl7_port": ris.port}})
        route = subprocess.run([sys.executable, "-m", "gateway", "cloud", "worklist", "route", "add", "--box", BOX_ID,
                                "--modality", "CT", "--station-ae", MODALITY_AE, "--config", str(d.fleet_toml)],
                               capture_output=True, text=True, timeout=120)
        assert route.returncode == 0, route.stderr
        today = time.strftime("%Y%m%d", time.gmtime())
        order = tmp_path / "order.hl7"
        order.write_text(orm("ORD1", step="S1", accession="ACC-S1", name="Zhang^Wei").replace(
            "20261203093000", today + "093000"))
        assert "MSA|AA|ORD1" in mllp_send(d.reported_port("fleet-1", "hl7"), order).replace("\r", "\n")

        wait_for(lambda: _steps(d, tmp_path) == {"S1": "Zhang^Wei"}, 120, "the modality to see the RIS's order")
        study = "1.2.826.0.1.3680043.8.498.77"
        uid = "1.2.826.0.1.3680043.8.498.771"
        assert mpps(d.dicom_port, [
            {"op": "create", "uid": uid, "study": study,
             "scheduled": {"ScheduledProcedureStepID": "S1", "AccessionNumber": "ACC-S1"},
             "attrs": {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
                       "PerformedProcedureStepStartDate": today, "PerformedProcedureStepStartTime": "093500"}},
            {"op": "set", "uid": uid, "attrs": {"PerformedProcedureStepStatus": "COMPLETED",
                                                "PerformedProcedureStepEndDate": today,
                                                "PerformedProcedureStepEndTime": "094500"}}]) == [0x0000, 0x0000]
        wait_for(lambda: {str(m.segment("ORC")[5]) for m in ris.messages} == {"IP", "CM"}, 120,
                 "IN PROGRESS and COMPLETED at the RIS as ORM^O01 status updates")
        assert {(str(m.segment("OBR")[18]), str(m.segment("OBR")[20])) for m in ris.messages} == {("ACC-S1", "S1")}
        wait_for(lambda: metric(d, "mgw_edge_worklist_statuses_unacked") == 0, 60, "the cloud's acks at the box")
        wait_for(lambda: _steps(d, tmp_path) == {}, 60, "the performed step gone from the worklist")
        status = subprocess.run([sys.executable, "-m", "gateway", "cloud", "worklist", "status", "--config",
                                 str(d.fleet_toml)], capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and f"{BOX_ID}" in status.stdout and "Zhang" not in status.stdout
        for log in ("fleet.log", "edge.log"):
            text = (d.root / log).read_text(errors="replace")
            assert "Zhang" not in text and "ACC-S1" not in text and "Traceback" not in text, log
    finally:
        ris.stop()
