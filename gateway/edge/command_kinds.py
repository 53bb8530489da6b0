"""What each remote command does on the box (docs/operations.md, "Remote operations").

``BoxCommands.run`` is called on the ``commands`` worker thread (``edge/commands.py``), one command
at a time, with arguments already parsed (``core/command_args.py``). It answers an ``Outcome``:
a short message and a flat detail for the console, never patient data. Each kind reuses what the
box already has: C-ECHO (``adapters/dicom_scu.echo``), the quarantine (``edge/quarantine.py``),
the certificate renewal (``edge/renewal.py``), the diagnostic bundle (``edge/diagnostics.py``).

The worker owns the spool connection it opens here (one connection per owner thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.adapters import dicom_scu, host
from gateway.adapters.store import SpoolStore
from gateway.config import EdgeSettings
from gateway.core import command_args as ca
from gateway.core.commitment import parse_modality
from gateway.core.errors import GatewayError
from gateway.edge import diagnostics
from gateway.edge.commands import Outcome
from gateway.edge.quarantine import Quarantine, QuarantineError
from gateway.paths import Paths

log = logging.getLogger(__name__)
ECHO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Hooks:
    """What the edge service lends the commands: a certificate renewal, a restart of itself."""

    renew: Callable[[], None]
    restart_edge: Callable[[], None]


class BoxCommands:
    """The ``commands.Runner`` of the edge. Not thread safe: the worker thread's only."""

    def __init__(self, settings: EdgeSettings, paths: Paths, hooks: Hooks, cloud_public: bytes,
                 logs: diagnostics.LogRing, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._paths = paths
        self._hooks = hooks
        self._cloud_public = cloud_public
        self._logs = logs
        self._clock = clock
        self._spool: SpoolStore | None = None

    def _store(self) -> SpoolStore:
        if self._spool is None:
            self._spool = SpoolStore(self._paths.spool_db)
        return self._spool

    def run(self, command_id: str, args: ca.Args) -> Outcome:
        try:
            return self._dispatch(command_id, args)
        except (GatewayError, OSError) as exc:
            return Outcome(False, str(exc))

    def _dispatch(self, command_id: str, args: ca.Args) -> Outcome:
        if isinstance(args, ca.Echo):
            return self._echo()
        if isinstance(args, ca.Bundle):
            return self._bundle(command_id, args)
        if isinstance(args, ca.Quarantine):
            return self._quarantine(args)
        if isinstance(args, ca.Renew):
            return self._renew()
        if isinstance(args, ca.Restart):
            return Outcome(True, f"restarting {args.service}", {"service": args.service}, then=self._hooks.restart_edge)
        return Outcome(False, "this kind of command is not supported by this box's software")

    # -- echo ----------------------------------------------------------------------------------------------
    def _echo(self) -> Outcome:
        if not self._settings.commitment.modalities:
            return Outcome(False, "no modality address configured (commitment.modalities)")
        modality = parse_modality(self._settings.commitment.modalities[0])
        started = time.monotonic()
        status = dicom_scu.echo(modality.host, modality.port, modality.ae_title, self._settings.dicom.ae_title,
                                timeout_s=ECHO_TIMEOUT_S)
        rtt_ms = round((time.monotonic() - started) * 1000.0, 1)
        detail: dict[str, object] = {"called_ae": modality.ae_title, "rtt_ms": rtt_ms,
                                     "status": None if status is None else f"0x{status:04X}"}
        if status is None:
            return Outcome(False, f"no association with {modality.ae_title}", detail)
        return Outcome(status == 0, f"C-ECHO answered 0x{status:04X}", detail)

    # -- bundle ----------------------------------------------------------------------------------------------
    def _bundle(self, command_id: str, args: ca.Bundle) -> Outcome:
        plain = diagnostics.collect(self._settings, self._paths, self._store(), self._logs, args.log_lines,
                                    self._clock())
        parts, sealed, digest = diagnostics.seal_parts(plain, self._cloud_public, self._settings.box.id, command_id)
        return Outcome(True, f"bundle of {len(sealed)} bytes sent in {len(parts)} parts",
                       {"bytes": len(sealed), "parts": len(parts), "sha256": digest}, parts)

    # -- quarantine -----------------------------------------------------------------------------------------
    def _quarantine(self, args: ca.Quarantine) -> Outcome:
        quarantine = Quarantine(self._store(), self._paths)
        try:
            if args.action == "replay":
                entry = quarantine.replay(str(args.item))
            elif args.action == "drop":
                entry = quarantine.delete(str(args.item))
            else:
                entry = None
        except QuarantineError as exc:
            return Outcome(False, str(exc), {"items": len(quarantine.entries())})
        entries = quarantine.entries()
        ids = ",".join(e.id for e in entries if e.kind == "item")
        detail: dict[str, object] = {"items": len(entries), "item_ids": ids[:500],
                                     "files": sum(1 for e in entries if e.kind == "file"),
                                     "bytes": sum(e.bytes for e in entries)}
        if entry is None:
            return Outcome(True, f"{len(entries)} quarantined", detail)
        verb = "replayed" if args.action == "replay" else "dropped"
        return Outcome(True, f"item {entry.id} {verb}", {**detail, "item": int(entry.id), "item_bytes": entry.bytes})

    # -- renew --------------------------------------------------------------------------------------------
    def _renew(self) -> Outcome:
        self._hooks.renew()
        not_after = host.cert_not_after(self._settings.mqtt.cert_file)
        return Outcome(True, "certificate renewed", {"not_after": None if not_after is None else int(not_after)})
