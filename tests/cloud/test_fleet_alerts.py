"""The alert lifecycle as the fleet service applies it, on both fleet store backends: a site outage
raised as one alert with its boxes grouped under it, acknowledgement, maintenance windows and
silences marking alerts suppressed, and resolution. The service is driven directly (telemetry
applied, the once-a-second flush called with a clock the test sets); the MQTT path is
tests/cloud/test_fleet.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cloud.fleet.service import FleetService
from gateway.cloud.fleet.store import AlertState
from gateway.config import CloudSettings, FleetSettings, IngestSettings, MqttSettings, _fill_defaults
from gateway.core import fleet
from gateway.core.alerts import Severity
from gateway.core.errors import AlertRequestError
from gateway.core.fleet import AlertKind, MessageKind
from gateway.paths import Paths
from tests.backends import Backend

T0 = 1_795_500_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _service(tmp_path: Path, backend: Backend, clock: Clock) -> FleetService:
    settings = _fill_defaults(CloudSettings(
        mqtt=MqttSettings(port=1), ingest=IngestSettings(), index=backend.index_settings(),
        fleet=FleetSettings(http_port=0, offline_after_s=600.0, site_outage_boxes=3, site_outage_window_s=120.0)))
    return FleetService(settings, Paths(tmp_path, tmp_path / "cloud", tmp_path), clock=clock)  # never started


@pytest.fixture
def service(tmp_path: Path, backend: Backend, clock: Clock) -> Iterator[FleetService]:
    svc = _service(tmp_path, backend, clock)
    yield svc
    svc.store.close()


def send(service: FleetService, box_id: str, kind: MessageKind, site: str = "") -> None:
    body = {"site": site, "version": "1.0"} if kind is MessageKind.BIRTH else {}
    service.apply(fleet.decode(kind, box_id, fleet.encode(kind, box_id, 1, **body)))


def born(service: FleetService, clock: Clock, boxes: dict[str, str]) -> None:
    for box_id, site in boxes.items():
        send(service, box_id, MessageKind.BIRTH, site)
    service.flush()


def at(clock: Clock, seconds: float) -> None:
    clock.now = T0 + seconds


def test_site_outage_is_one_alert_with_its_boxes_grouped_under_it_when_boxes_go_offline_together(
        service: FleetService, clock: Clock) -> None:
    born(service, clock, {"ct-1": "clinic", "ct-2": "clinic", "mr-1": "clinic", "us-1": "clinic", "x-1": "other"})
    at(clock, 10)
    for box_id in ("ct-1", "ct-2", "mr-1"):
        send(service, box_id, MessageKind.DEATH)
    service.flush()
    rows = service.list_alerts()
    assert [(a.kind, a.subject, a.severity) for a in rows] == [(AlertKind.SITE_OFFLINE, "clinic", Severity.CRITICAL)]
    assert [c.box_id for c in rows[0].children] == ["ct-1", "ct-2", "mr-1"]
    assert rows[0].detail == "3 boxes offline: ct-1, ct-2, mr-1"
    assert len(service.list_alerts(grouped=False)) == 4
    at(clock, 400)  # long after the window: a box of the site going offline now joins the outage
    send(service, "us-1", MessageKind.DEATH)
    service.flush()
    rows = service.list_alerts()
    assert [c.box_id for c in rows[0].children] == ["ct-1", "ct-2", "mr-1", "us-1"]
    at(clock, 500)
    for box_id in ("ct-1", "ct-2", "mr-1", "us-1"):
        send(service, box_id, MessageKind.BIRTH, "clinic")
    service.flush()
    assert service.list_alerts() == []
    resolved = service.list_alerts(state=AlertState.RESOLVED)
    assert [(a.kind, a.resolved_at, len(a.children)) for a in resolved] == [(AlertKind.SITE_OFFLINE, T0 + 500, 4)]
    assert all(c.resolved_at == T0 + 500 for c in resolved[0].children)


def test_single_box_offline_stays_its_own_alert_when_too_few_boxes_of_its_site_are_down(
        service: FleetService, clock: Clock) -> None:
    born(service, clock, {"ct-1": "clinic", "ct-2": "clinic", "mr-1": "clinic"})
    at(clock, 10)
    send(service, "ct-1", MessageKind.DEATH)
    service.flush()
    at(clock, 200)  # a second box, outside the window: still two separate box alerts
    send(service, "ct-2", MessageKind.DEATH)
    service.flush()
    rows = service.list_alerts()
    assert sorted((a.kind, a.box_id) for a in rows) == [(AlertKind.BOX_OFFLINE, "ct-1"),
                                                        (AlertKind.BOX_OFFLINE, "ct-2")]


def test_acknowledgement_says_what_changed_when_an_operator_acks(service: FleetService, clock: Clock) -> None:
    born(service, clock, {"ct-1": "clinic"})
    at(clock, 10)
    send(service, "ct-1", MessageKind.DEATH)
    service.flush()
    (alert,) = service.list_alerts()
    at(clock, 20)
    change = service.ack(alert.id, "ops-li", "uplink ticket 42")
    assert change == {"acked_at": (None, T0 + 20), "acked_by": ("", "ops-li"), "ack_note": ("", "uplink ticket 42")}
    assert service.ack(alert.id, "ops-li", "uplink ticket 42") == {}  # nothing new: nothing to audit
    assert [a.acked_by for a in service.list_alerts(state=AlertState.ACKED)] == ["ops-li"]
    assert [a.acked_by for a in service.open_alerts()] == ["ops-li"]
    with pytest.raises(AlertRequestError, match="who"):
        service.ack(alert.id, "  ", "")
    with pytest.raises(AlertRequestError, match="no alert"):
        service.ack(alert.id + 100, "ops-li", "")


def test_alerts_are_marked_suppressed_not_dropped_when_raised_inside_a_maintenance_window(
        service: FleetService, clock: Clock) -> None:
    born(service, clock, {"ct-1": "clinic", "x-1": "other"})
    window = service.maintenance(site="clinic", starts_at=T0 + 5, ends_at=T0 + 100, who="ops-wang",
                                 reason="router swap")
    at(clock, 10)
    send(service, "ct-1", MessageKind.DEATH)
    send(service, "x-1", MessageKind.DEATH)
    service.flush()
    hushed = {a.box_id: a.suppressed_by for a in service.list_alerts()}
    assert hushed == {"ct-1": f"maintenance:{window.id}", "x-1": ""}
    at(clock, 50)
    service.end_maintenance(window.id)
    at(clock, 51)
    service.flush()  # still offline after the work: now it shows
    assert {a.box_id: a.suppressed_by for a in service.list_alerts()} == {"ct-1": "", "x-1": ""}
    with pytest.raises(AlertRequestError, match="site or for a box"):
        service.maintenance(site="clinic", box_id="ct-1", starts_at=T0, ends_at=T0 + 1, who="ops")


def test_silence_suppresses_matching_alerts_until_it_expires(service: FleetService, clock: Clock) -> None:
    born(service, clock, {"ct-1": "clinic", "x-1": "other"})
    silence = service.silence(site="other", kind="box_offline", ends_at=T0 + 3600, who="ops-li", reason="moving")
    at(clock, 10)
    send(service, "ct-1", MessageKind.DEATH)
    send(service, "x-1", MessageKind.DEATH)
    service.flush()
    assert {a.box_id: a.suppressed_by for a in service.list_alerts()} == {"ct-1": "", "x-1": f"silence:{silence.id}"}
    assert service.silences() == [silence]
    at(clock, 20)
    assert service.expire_silence(silence.id).ends_at == T0 + 20
    service.flush()
    assert {a.box_id: a.suppressed_by for a in service.list_alerts()} == {"ct-1": "", "x-1": ""}
    assert service.silences() == [] and len(service.silences(active_only=False)) == 1
    with pytest.raises(AlertRequestError, match="must name"):
        service.silence(ends_at=T0 + 60, who="ops-li", reason="everything")


def test_site_outage_goes_on_when_the_fleet_service_restarts_during_it(
        tmp_path: Path, backend: Backend, clock: Clock) -> None:
    first = _service(tmp_path, backend, clock)
    born(first, clock, {"a": "clinic", "b": "clinic", "c": "clinic", "d": "clinic"})
    at(clock, 10)
    for box_id in ("a", "b", "c"):
        send(first, box_id, MessageKind.DEATH)
    first.flush()
    first.store.close()
    second = _service(tmp_path, backend, clock)
    try:
        at(clock, 20)
        send(second, "a", MessageKind.BIRTH, "clinic")  # the outage continues while b and c are down
        second.flush()
        (site,) = second.list_alerts()
        assert site.kind is AlertKind.SITE_OFFLINE and [c.box_id for c in site.children] == ["a", "b", "c"]
        assert [c.box_id for c in site.children if c.resolved_at is None] == ["b", "c"]
    finally:
        second.store.close()
