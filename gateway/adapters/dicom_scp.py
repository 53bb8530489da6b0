"""The edge's DICOM listener (pynetdicom): one AE, its associations, and the services it runs.

The listener accepts associations (called AE title, admission by ``dicom_admission``, DICOM
TLS, limits), negotiates the presentation contexts of its ``DicomService``s and routes their
events. Each service lives in its own module: C-ECHO here (``VerificationScp``), C-STORE in
``dicom_receive``, Storage Commitment in ``storage_commitment``, MPPS in ``mpps_scp``; the
edge builds the set from settings (``edge/dicom_services.py``). The listener starts every
service before it accepts an association and stops them after the last one ended.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from gateway.adapters import dicom_admission
from gateway.config import DicomSettings
from gateway.core import admission
from gateway.core.errors import ConfigError
from gateway.logs import MSG

log = logging.getLogger(__name__)

_STOP_JOIN_S = 10.0
_DUL_POLL_S = 0.0002
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit VR LE, implicit VR LE


@dataclass(frozen=True)
class SupportedContext:
    """One presentation context the listener accepts (PS3.8 7.1.1.13)."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = UNCOMPRESSED  # ours, in order of preference
    scu_role: bool | None = None  # SCP/SCU Role Selection (PS3.7 D.3.3.4): the modality may be SCU
    scp_role: bool | None = None  # ... the modality may be SCP; None: no role selection answered


class DicomService(Protocol):
    """A DIMSE service on the edge AE (C-ECHO, C-STORE, Storage Commitment, MPPS, Worklist...).

    The listener negotiates its presentation contexts, routes its events and runs it. Handlers
    never raise into pynetdicom: they answer a DIMSE status. A service that subclasses this
    protocol inherits the lifecycle below: nothing to start, always alive, no counters.
    """

    def contexts(self) -> Sequence[SupportedContext]:
        """The presentation contexts to accept."""

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        """``(pynetdicom intervention or notification event, handler)`` pairs."""

    def start(self) -> None:
        """Before the listener accepts associations: threads, directories."""
        return None

    def stop(self) -> None:
        """After the listener's last association ended."""
        return None

    def alive(self) -> bool:
        """Its threads still run (for the watchdog)."""
        return True

    def counts(self) -> dict[str, dict[str, int]]:
        """Counters for metrics: ``{name: {reason: count}}``."""
        return {}


class VerificationScp(DicomService):
    """C-ECHO (PS3.7 9.1.5): any admitted peer may check that we answer."""

    def contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(str(Verification), tuple(DEFAULT_TRANSFER_SYNTAXES))]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_ECHO, _on_c_echo)]


def _on_c_echo(event: Event) -> int:
    return 0x0000


def _build_ae(settings: DicomSettings, policy: admission.Policy, services: Sequence[DicomService]) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.require_called_aet = True
    # pynetdicom's own calling AE check backs up the per-address one (dicom_admission)
    ae.require_calling_aet = [] if policy.admits_anyone else list(policy.ae_titles)
    for service in services:
        for cx in service.contexts():
            ae.add_supported_context(cx.abstract_syntax, list(cx.transfer_syntaxes), scu_role=cx.scu_role,
                                     scp_role=cx.scp_role)
    return ae


class DicomListener:
    """Accepts associations from modalities and runs the services that answer them."""

    def __init__(self, settings: DicomSettings, services: Sequence[DicomService], provisioned: bool = False) -> None:
        """``provisioned``: admission is deny-by-default (core.admission): empty allow-lists admit
        nobody but the box's own tools."""
        self._settings = settings
        self._services = tuple(services)
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._port = settings.port
        self._lock = threading.Lock()
        policy = admission.Policy.from_settings(settings.allowed_peers, settings.allowed_calling_aets, provisioned)
        self._gate = dicom_admission.Gatekeeper(policy, settings.ae_title)

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                raise AssertionError("DicomListener already started")
            started: list[DicomService] = []
            try:
                for service in self._services:
                    service.start()
                    started.append(service)
                self._serve()
            except BaseException:
                _stop_all(started)
                raise

    def _serve(self) -> None:
        ae = _build_ae(self._settings, self._gate.policy, self._services)
        handlers: list[Any] = [(evt.EVT_REQUESTED, self._gate.on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
                               (evt.EVT_REJECTED, self._on_rejected)]
        for service in self._services:
            handlers += service.handlers()
        address = (self._settings.bind_host, self._settings.port)
        server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=_ssl_context(self._settings))
        assert server is not None
        server.verify_request = self._gate.verify_request  # type: ignore[method-assign]
        self._ae, self._server = ae, server
        self._port = int(server.server_address[1])
        self._gate.describe(str(server.server_address[0]), self._port)

    @property
    def port(self) -> int:
        return self._port

    def stop(self) -> None:
        with self._lock:
            ae, server = self._ae, self._server
            self._ae = self._server = None
        if ae is None or server is None:
            return
        # Only an established association can be inside a service's handler. A connection that
        # never sent A-ASSOCIATE-RQ (a port probe) parks its thread until the ACSE timeout,
        # and waiting for it would only delay the stop.
        established = [a for a in server.active_associations if a.is_established]
        ae.shutdown()  # aborts live associations, closes the listening socket
        for assoc in established:  # let handlers in flight finish: nothing writes after stop()
            assoc.join(_STOP_JOIN_S)
        _stop_all(self._services)

    def active_associations(self) -> int:
        return 0 if (server := self._server) is None else len(server.active_associations)

    def alive(self) -> bool:
        """Every service's threads still run."""
        return all(service.alive() for service in self._services)

    def counts(self) -> dict[str, dict[str, int]]:
        """Associations rejected since start, by reason, and the services' counters (for metrics)."""
        found = {"associations_rejected": self._gate.rejected.snapshot()}
        for service in self._services:
            found.update(service.counts())
        return found

    def _on_accepted(self, event: Event) -> None:
        if self._gate.check_accepted(event):
            _on_accepted(event)

    def _on_rejected(self, event: Event) -> None:
        try:
            rq = event.assoc.requestor.primitive
            assert rq is not None
            reason = _rejection_reason(self._settings, str(rq.called_ae_title).strip())
            self._gate.on_rejected(event, reason)
        except Exception:
            log.exception("logging an association rejection failed")


def _stop_all(services: Sequence[DicomService]) -> None:
    for service in reversed(services):
        service.stop()


def _ssl_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """DICOM TLS on the LAN listener (PS3.15 B.1, TLS 1.2+), client certificates required if a CA is set."""
    if not settings.tls_cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_ca_file:
            ctx.load_verify_locations(settings.tls_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom TLS: cannot load {settings.tls_cert_file} / {settings.tls_key_file}: {exc}") from exc
    return ctx


def _on_accepted(event: Event) -> None:
    # pynetdicom's DUL reactor sleeps this long whenever its queue is empty, between PDUs too;
    # its 1 ms default caps one association near 140 MB/s of CT here, 0.2 ms lifts that past
    # 160 MB/s; an idle association still costs no measurable CPU (bench/README.md, ingest).
    event.assoc.dul._run_loop_delay = _DUL_POLL_S
    requestor = event.assoc.requestor
    log.info("association accepted", extra={
        "MESSAGE_ID": MSG.ASSOCIATION_ACCEPTED.value, "CALLING_AE": str(requestor.ae_title).strip(),
        "PEER_ADDRESS": str(requestor.address)})


def _rejection_reason(settings: DicomSettings, called: str) -> str:
    """Why pynetdicom itself rejected (ours carry their own reason): PS3.8 reason 7 or a limit."""
    if called != settings.ae_title.strip():  # pynetdicom checks in this order: called AE wins
        return "called AE title not recognised"
    return "calling AE title not recognised, local limit exceeded or negotiation refused"
