"""`mgw commission`: the field engineer's acceptance checks, with a report to hand over.

Run on the box while `mgw edge run` is running. Each check prints its progress,
and every failure says what to check. The same checks are the checklist in
provisioning/commissioning-checklist.md.

1. configuration      the edge configuration loads (site file + device.toml)
2. certificate        box certificate matches its key, chains to the fleet CA, is valid, is ours
3. clock skew         local clock against the enrolment endpoint's (TLS and certificates need it)
4. broker             mutual-TLS connection to the broker as this box
5. echo to modality   C-ECHO from this box to the modality's SCP (if --modality-host is given)
6. echo from modality our listener answers C-ECHO for the modality's AE title; the engineer
                      also runs an echo from the modality console (recorded as a manual step)
7. end to end         a synthetic test object (no patient data) C-STOREd to the listener, then
                      followed until the cloud acknowledges it durably stored (a manual
                      test study from the modality when the listener requires DICOM TLS)

Each check records when it started. A manual check is ``manual`` (open) until the engineer
attests it (``Options.confirmed``, from ``--confirm``, or ``Options.ask`` at a terminal), then
``confirmed``. The report is PASSED only when nothing failed and no manual check is open
(``core.commissioning.result_of``), else INCOMPLETE or FAILED. ``Report.document`` is the typed,
versioned report (``schema.CommissioningReport``) that ``commission_report`` signs and uploads.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway import __version__, config
from gateway.core import commissioning, schema
from gateway.core.errors import GatewayError
from gateway.core.spool import ItemState
from gateway.edge import provision
from gateway.edge.commission_report import CHECK_NAMES, OUTCOMES
from gateway.i18n import N_, Message, _, tr
from gateway.paths import Paths

MAX_SKEW_S = 60.0
MANUAL_ECHO = "modality-echo"  # the attestation key of the echo from the modality's console
TEST_STUDY = "test-study"  # ... of a test study sent from the modality (when the box cannot send one itself)
MANUAL_KEYS = (MANUAL_ECHO, TEST_STUDY)
Detail = str | Message  # a check's finding: English in the report, shown in the CLI's language


class Outcome:
    OK = commissioning.OK
    FAIL = commissioning.FAIL
    SKIPPED = commissioning.SKIPPED
    MANUAL = commissioning.MANUAL  # a manual check still open
    CONFIRMED = commissioning.CONFIRMED  # a manual check the engineer attested


@dataclass
class Check:
    name: str
    outcome: str
    detail: str
    seconds: float = 0.0
    key: str = ""
    started_at: float = 0.0
    manual: bool = False
    shown: str = ""  # the detail in the CLI's language (not in the report's JSON or signed document)

    def found(self, detail: Detail) -> None:
        self.detail, self.shown = _english(detail), _shown(detail)


def _english(detail: Detail) -> str:
    return detail.english() if isinstance(detail, Message) else detail


def _shown(detail: Detail) -> str:
    return detail.shown() if isinstance(detail, Message) else detail


@dataclass
class Options:
    modality_host: str = ""
    modality_port: int = 104
    modality_ae: str = ""
    timeout_s: float = 120.0
    engineer: str = ""
    modality_make: str = ""
    modality_model: str = ""
    confirmed: frozenset[str] = frozenset()  # manual checks the engineer attested (--confirm)
    ask: Callable[[str], bool] | None = None  # asks the engineer at a terminal; None: only ``confirmed``


@dataclass
class Report:
    box_id: str = ""
    site: str = ""
    modality: str = ""
    version: str = __version__
    started_at: float = 0.0
    checks: list[Check] = field(default_factory=list)
    report_id: str = field(default_factory=lambda: os.urandom(16).hex())
    engineer: str = ""
    time_zone: str = ""
    modality_make: str = ""
    modality_model: str = ""
    modality_ae: str = ""
    modality_address: str = ""
    finished_at: float = 0.0

    @property
    def result(self) -> str:
        """PASSED, FAILED or INCOMPLETE (a manual check not attested): ``core.commissioning.result_of``."""
        return commissioning.result_of(c.outcome for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.result == commissioning.PASSED

    def document(self) -> schema.CommissioningReport:
        """The typed report the box signs (``schema.CommissioningReport``)."""
        checks = [schema.CommissioningCheck(
            key=c.key or "configuration", name=c.name[:64], manual=c.manual, outcome=c.outcome,  # type: ignore[arg-type]
            detail=_printable(c.detail, 512), started_at=c.started_at or self.started_at, seconds=max(0.0, c.seconds))
            for c in self.checks]
        return schema.CommissioningReport(
            v=1, kind="mgw-commissioning-report", report_id=self.report_id, box_id=self.box_id, site=self.site,
            time_zone=self.time_zone, engineer=_printable(self.engineer, 64) or "-", modality=self.modality,
            modality_make=_printable(self.modality_make, 64), modality_model=_printable(self.modality_model, 64),
            modality_ae=self.modality_ae, modality_address=self.modality_address[:64], software=self.version,
            started_at=self.started_at, finished_at=self.finished_at or self.started_at,
            result=self.result, checks=checks)  # type: ignore[arg-type]

    def to_json(self) -> str:
        doc = asdict(self)
        for check in doc["checks"]:
            check.pop("shown")
        return json.dumps({**doc, "result": self.result, "ok": self.ok}, indent=2)

    def to_text(self) -> str:
        """The report in the CLI's language (details as they were shown)."""
        from gateway.edge import commission_report

        return commission_report.text(self.document(), {c.key or "configuration": c.shown for c in self.checks
                                                        if c.shown})


def _printable(text: str, limit: int) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)[:limit]


def _modality_peer(settings: config.EdgeSettings, options: Options) -> tuple[str, str]:
    """The modality's AE title and address: the options', else the first of ``dicom.allowed_peers``."""
    from gateway.core import admission

    ae, address = options.modality_ae, options.modality_host
    try:
        rules = admission.parse_rules(settings.dicom.allowed_peers)
    except GatewayError:
        rules = ()
    if rules:
        ae, address = ae or rules[0].ae_title, address or str(rules[0].network)
    return ae, address


def run(files: list[Path], options: Options, say: Callable[[str], None] = lambda _m: None,
        clock: Callable[[], float] = time.time) -> Report:
    report = Report(started_at=clock(), engineer=options.engineer, modality_make=options.modality_make,
                    modality_model=options.modality_model)
    try:
        settings = config.load_edge(files)
    except GatewayError as exc:
        check = Check("configuration", Outcome.FAIL, "", key="configuration", started_at=report.started_at)
        check.found(tr("{reason}: fix the named file and key", reason=exc))
        report.checks.append(check)
        report.finished_at = clock()
        return report
    report.box_id, report.site, report.modality = settings.box.id, settings.box.site, settings.box.modality
    report.time_zone = settings.site.time_zone if settings.site is not None else ""
    report.modality_ae, report.modality_address = _modality_peer(settings, options)
    paths = Paths.from_env(settings.box.state_dir, base=files[0].parent)
    report.checks.append(Check("configuration", Outcome.OK, " + ".join(map(str, files)), key="configuration",
                               started_at=report.started_at))
    steps: list[tuple[str, Callable[[], tuple[str, Detail]]]] = [
        ("certificate", lambda: _certificate(settings, clock)),
        ("clock-skew", lambda: _clock_skew(settings, clock)),
        ("broker", lambda: _broker(settings)),
        ("echo-to-modality", lambda: _echo_to_modality(settings, options)),
        ("echo-to-box", lambda: _echo_to_box(settings, paths, options)),
        (MANUAL_ECHO, lambda: _manual_echo(settings)),
        ("end-to-end", lambda: _end_to_end(settings, paths, options, clock)),
    ]
    total = len(steps) + 1
    say(_("[1/{total}] configuration: ok").format(total=total))
    for number, (key, step) in enumerate(steps, start=2):
        name = CHECK_NAMES[key]
        say(_("[{number}/{total}] {name} ...").format(number=number, total=total, name=_(name)))
        started_at, started = clock(), time.monotonic()
        try:
            outcome, detail = step()
        except GatewayError as exc:
            outcome, detail = Outcome.FAIL, str(exc)
        check = Check(name, outcome, "", round(time.monotonic() - started, 2), key, started_at,
                      manual=outcome == Outcome.MANUAL)
        check.found(detail)
        if outcome == Outcome.MANUAL:
            _attest(check, options, report.engineer, say)
        report.checks.append(check)
        say(_("[{number}/{total}] {name}: {outcome} - {detail}").format(
            number=number, total=total, name=_(name), outcome=_(OUTCOMES.get(check.outcome, check.outcome)),
            detail=check.shown))
    report.finished_at = clock()
    return report


def _attest(check: Check, options: Options, engineer: str, say: Callable[[str], None]) -> None:
    """A manual check is done when the engineer attests it: ``--confirm KEY``, or yes at the prompt."""
    key = TEST_STUDY if check.key == "end-to-end" else check.key
    check.key = key
    if key in options.confirmed:
        how = N_("--confirm")
    elif options.ask is not None and options.ask(_("{name}: {detail}\n  done and seen to work? [y/N] ").format(
            name=_(check.name), detail=check.shown)):
        how = N_("answered yes")
    else:
        say(_("  manual check '{key}' not attested: the report stays INCOMPLETE (re-run with --confirm {key})")
            .format(key=key))
        return
    check.outcome = Outcome.CONFIRMED
    attested = "attested by {engineer} ({how}): {detail}"
    check.detail, check.shown = (attested.format(engineer=engineer or "the engineer", how=how, detail=check.detail),
                                 _("attested by {engineer} ({how}): {detail}").format(
                                     engineer=engineer or _("the engineer"), how=_(how), detail=check.shown))


def _certificate(settings: config.EdgeSettings, clock: Callable[[], float]) -> tuple[str, Detail]:
    if not settings.mqtt.cert_file:
        return Outcome.FAIL, tr("no box certificate configured (mqtt.cert_file): provision the box first "
                                "(mgw provision)")
    _name, ok, detail = provision.identity_check(settings, clock)
    return (Outcome.OK if ok else Outcome.FAIL), detail


def _clock_skew(settings: config.EdgeSettings, clock: Callable[[], float]) -> tuple[str, Detail]:
    from gateway.adapters import enrolment_client

    if not settings.enrolment.url or not settings.mqtt.ca_file:
        return Outcome.SKIPPED, tr("no enrolment endpoint configured to compare clocks with")
    skew = clock() - enrolment_client.server_time(settings.enrolment.url, Path(settings.mqtt.ca_file).read_bytes())
    if abs(skew) > MAX_SKEW_S:
        return Outcome.FAIL, tr("local clock is {skew:+.1f} s from the cloud's (limit {limit:.0f} s): check NTP "
                                "(timedatectl status)", skew=skew, limit=MAX_SKEW_S)
    return Outcome.OK, tr("local clock is {skew:+.1f} s from the cloud's", skew=skew)


def _broker(settings: config.EdgeSettings) -> tuple[str, Detail]:
    _name, ok, detail = provision.broker_check(settings, 15.0)
    return (Outcome.OK if ok else Outcome.FAIL), detail


def _echo_to_modality(settings: config.EdgeSettings, options: Options) -> tuple[str, Detail]:
    from gateway.adapters import dicom_scu

    if not options.modality_host:
        return Outcome.SKIPPED, tr("no --modality-host given (the modality may not run a Verification SCP)")
    called = options.modality_ae or "ANY-SCP"
    where = f"{called}@{options.modality_host}:{options.modality_port}"
    status = dicom_scu.echo(options.modality_host, options.modality_port, called, settings.dicom.ae_title)
    if status == 0:
        return Outcome.OK, tr("{where} answered C-ECHO", where=where)
    return Outcome.FAIL, tr("{where} did not answer C-ECHO (status {status}): check the modality's IP, port and "
                            "AE title, that it knows {ae} as a peer, and the LAN cabling",
                            where=where, status=status, ae=settings.dicom.ae_title)


def _local_calling_ae(settings: config.EdgeSettings, options: Options) -> tuple[str, str | None]:
    """The calling AE to use from this box: the listener admits MGW-COMMISSION from the box's own
    address (core.admission) whatever its allow-lists say."""
    from gateway.core import admission

    return admission.COMMISSIONING_AE, None


def _listener_port(settings: config.EdgeSettings, paths: Paths) -> int:
    """``dicom.port``; with 0 (any free port), the one the running edge reported (adapters/ports.py)."""
    from gateway.adapters import ports

    return ports.bound_port(settings.dicom.port, paths.state_dir, "edge", "dicom")


def _listener_host(settings: config.EdgeSettings) -> str:
    return "127.0.0.1" if settings.dicom.bind_host in ("0.0.0.0", "") else settings.dicom.bind_host  # noqa: S104


def _echo_to_box(settings: config.EdgeSettings, paths: Paths, options: Options) -> tuple[str, Detail]:
    from gateway.adapters import dicom_scu

    calling, why_not = _local_calling_ae(settings, options)
    if why_not:
        return Outcome.SKIPPED, tr("{reason}: use the modality console's echo (next line)", reason=why_not)
    if settings.dicom.tls_cert_file:
        return Outcome.SKIPPED, tr("the listener requires DICOM TLS: use the modality console's echo (next line)")
    host, port = _listener_host(settings), _listener_port(settings, paths)
    status = dicom_scu.echo(host, port, settings.dicom.ae_title, calling, source=host)
    where = f"{settings.dicom.ae_title}@{host}:{port}"
    if status == 0:
        return Outcome.OK, tr("{where} answered C-ECHO from {calling}", where=where, calling=calling)
    return Outcome.FAIL, tr("{where} did not answer: is `mgw edge run` running (systemctl status mgw-edge.service)? "
                            "is the port right?", where=where)


def _manual_echo(settings: config.EdgeSettings) -> tuple[str, Detail]:
    return Outcome.MANUAL, tr("on the modality, echo AE {ae} at {address}:{port}; journal shows "
                              "ASSOCIATION_ACCEPTED with its address", ae=settings.dicom.ae_title,
                              address=_box_address(), port=settings.dicom.port)


def _box_address() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, this only picks the route
            return str(sock.getsockname()[0])
    except OSError:
        return "<this box's LAN address>"


def _end_to_end(settings: config.EdgeSettings, paths: Paths, options: Options,
                clock: Callable[[], float]) -> tuple[str, Detail]:
    from gateway.adapters import dicom_scu
    from gateway.adapters.store import SpoolStore

    calling, why_not = _local_calling_ae(settings, options)
    if why_not:
        return Outcome.MANUAL, tr("{reason}: send a test study from the modality and check `mgw status`",
                                  reason=why_not)
    if settings.dicom.tls_cert_file:
        return Outcome.MANUAL, tr("listener requires DICOM TLS: send a test study from the modality and check "
                                  "`mgw status`")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mgw-commission-") as tmp:
        obj = Path(tmp) / "commissioning.dcm"
        sop = dicom_scu.write_test_object(obj, time.strftime("%Y%m%d%H%M%S", time.gmtime(clock())) +
                                          str(int(clock() * 1000) % 1000))
        host = _listener_host(settings)
        statuses = dicom_scu.pynetdicom_store(host, _listener_port(settings, paths), settings.dicom.ae_title,
                                              calling, [obj], source=host)
    if statuses != [0]:
        return Outcome.FAIL, tr("the listener answered C-STORE with {statuses}: see `journalctl -u mgw-edge.service`",
                                statuses=statuses)
    store = SpoolStore(paths.spool_db)
    try:
        deadline = time.monotonic() + options.timeout_s
        while time.monotonic() < deadline:
            copies = store.by_sop_instance(sop)
            state = copies[-1].state.name if copies else ""
            if state in (ItemState.ACKNOWLEDGED.name, ItemState.PURGED.name):
                return Outcome.OK, tr("test object acknowledged by the cloud in {seconds:.1f} s",
                                      seconds=time.monotonic() - started)
            if state == ItemState.QUARANTINED.name:
                return Outcome.FAIL, tr("test object quarantined: see `mgw status` and the journal (ITEM_QUARANTINED)")
            time.sleep(0.25)
    finally:
        store.close()
    return Outcome.FAIL, tr("no cloud acknowledgement within {seconds:.0f} s (last state {state}): check the broker "
                            "line above, the uplink (UPLINK_DOWN in the journal) and the cloud ingest",
                            seconds=options.timeout_s, state=state or "none")
