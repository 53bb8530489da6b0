"""What each remote command does on the box (docs/operations.md, "Remote operations").

``BoxCommands.run`` is called on the ``commands`` worker thread (``edge/commands.py``), one command
at a time, with arguments already parsed (``core/command_args.py``). It answers an ``Outcome``:
a short message and a flat detail for the console, never patient data. Each kind reuses what the
box already has: C-ECHO (``adapters/dicom_scu.echo``), the quarantine (``edge/quarantine.py``),
the certificate renewal (``edge/renewal.py``), the diagnostic bundle (``edge/diagnostics.py``).

The worker owns the spool connection it opens here (one connection per owner thread).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway import __version__
from gateway.adapters import blobs, dicom_scu, host, https_download, rauc_install
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolStore
from gateway.appliance import update
from gateway.config import EdgeSettings
from gateway.core import command_args as ca
from gateway.core import spool
from gateway.core.command_wire import Kind
from gateway.core.commitment import parse_modality
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.spool import ItemState
from gateway.edge import cache, diagnostics, remote_config, seal
from gateway.edge.commands import Outcome
from gateway.edge.quarantine import Quarantine, QuarantineError
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
ECHO_TIMEOUT_S = 10.0
MAX_UPDATE_BYTES = 2 * 1024**3  # an update bundle larger than this is refused while it downloads
UPDATE_PENDING = "update/pending_command.json"  # the update command the next start reports on


@dataclass(frozen=True)
class Hooks:
    """What the edge service lends the commands: a certificate renewal, a restart of itself."""

    renew: Callable[[], None]
    restart_edge: Callable[[], None]
    healthy: Callable[[], bool]  # the configuration's health check: loops alive, both MQTT connections up
    announce: Callable[[], None]  # publish the birth again (it carries config_version)


class BoxCommands:
    """The ``commands.Runner`` of the edge. Not thread safe: the worker thread's only."""

    def __init__(self, settings: EdgeSettings, paths: Paths, hooks: Hooks, cloud_public: bytes,
                 logs: diagnostics.LogRing, clock: Callable[[], float] = time.time,
                 config_files: Sequence[Path] = ()) -> None:
        self._settings = settings
        self._config_files = list(config_files)  # the site and device files the remote document goes over
        self._paths = paths
        self._hooks = hooks
        self._cloud_public = cloud_public
        self._logs = logs
        self._clock = clock
        self._spool: SpoolStore | None = None
        self._pause = threading.Event()  # never set: the health check's poll interval

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
        if isinstance(args, ca.Resend):
            return self._resend(args)
        if isinstance(args, ca.Config):
            return self._config(command_id, args)
        if isinstance(args, ca.Update):
            return self._update(command_id, args)
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

    # -- resend ------------------------------------------------------------------------------------------
    def _resend(self, args: ca.Resend) -> Outcome:
        """Send again what the box still holds of a study: its acknowledged items whose originals are
        kept until ``spool.retention_hours`` after the ack (then purged: not held). Items still on
        their way count as in flight; quarantined ones are the quarantine's."""
        if args.study_instance_uid is None:
            return Outcome(False, "not held: this box keeps no accession numbers; resend by Study Instance UID")
        store = self._store()
        items = store.in_study(args.study_instance_uid)
        resent = size = 0
        in_flight = sum(1 for i in items if i.state in (ItemState.RECEIVED, ItemState.PACKED, ItemState.SENDING))
        for item in items:
            if item.state is not ItemState.ACKNOWLEDGED or not seal.intact(item, self._paths.blob_dir,
                                                                            self._cache_key()):
                continue
            store.transition(item.id, spool.ResendRequested(), self._clock(), pack_attempts=0, transfer_id=None,
                             final_seq=None, frame0_bytes=None, frame_bytes=None, packed_bytes=None, ack_key=None,
                             acked_ranges="[]", reason=None, acked_at=None)
            resent, size = resent + 1, size + item.identity.size
        detail: dict[str, object] = {
            "instances": resent, "bytes": size, "in_flight": in_flight,
            "purged": sum(1 for i in items if i.state is ItemState.PURGED),
            "quarantined": sum(1 for i in items if i.state is ItemState.QUARANTINED)}
        if not resent and not in_flight:
            return Outcome(False, "not held: the box holds no acknowledged instance of this study", detail)
        log.warning("study sent again by a remote command", extra={
            "MESSAGE_ID": MSG.STUDY_RESENT.value, "INSTANCES": resent, "BYTES": size, "IN_FLIGHT": in_flight})
        return Outcome(True, f"{resent} instances queued again ({in_flight} still on their way)", detail)

    def _cache_key(self) -> bytes | None:
        keys = FileKeyStore(self._paths.state_dir / "keys")
        return keys.secret(cache.KEY_NAME) if keys.path(cache.KEY_NAME).with_suffix(".secret").exists() else None

    # -- config ------------------------------------------------------------------------------------------
    def _config(self, command_id: str, args: ca.Config) -> Outcome:
        detail: dict[str, object] = {"version": args.version, "applied": False, "rolled_back": False}
        if not self._config_files:
            return Outcome(False, "this edge was started without configuration files to apply a version over", detail)
        try:
            remote_config.validate(args.document, self._config_files, self._paths.state_dir)
        except ConfigError as exc:
            return Outcome(False, f"version {args.version} refused: {exc}", detail)
        remote_config.stage(self._paths.state_dir, args.version, args.document, command_id)
        log.info("remote configuration version %d staged; restarting the edge", args.version, extra={
            "MESSAGE_ID": MSG.CONFIG_STAGED.value, "VERSION": args.version, "COMMAND_ID": command_id})
        return Outcome(True, f"version {args.version} staged; the edge restarts to apply it", detail,
                       then=self._hooks.restart_edge, final=False)

    def resume(self, command_id: str, kind: Kind) -> Outcome | None:
        """A command the edge restarted for: a configuration's health check, an update's version."""
        if kind is Kind.UPDATE:
            return self._update_result(command_id)
        if kind is not Kind.CONFIG:
            return None
        state = remote_config.read_state(self._paths.state_dir)
        if state.pending == command_id:
            if self._wait_healthy(self._settings.health.config_check_s):
                done = remote_config.commit(self._paths.state_dir)
                log.info("remote configuration version %d applied", done.version, extra={
                    "MESSAGE_ID": MSG.CONFIG_APPLIED.value, "VERSION": done.version, "COMMAND_ID": command_id})
                self._hooks.announce()
                return Outcome(True, f"version {done.version} applied",
                               {"version": done.version, "applied": True, "rolled_back": False})
            version = state.pending_version
            remote_config.roll_back(self._paths.state_dir, "the health check failed")
            return Outcome(False, f"version {version} rolled back: the health check failed within "
                                  f"{self._settings.health.config_check_s:.0f} s",
                           {"version": version, "applied": False, "rolled_back": True},
                           then=self._hooks.restart_edge, then_at_once=True)
        if state.last_command == command_id:
            return Outcome(state.last_applied, f"version {state.version} runs"
                           + ("" if state.last_applied else f"; the new version was rolled back: {state.last_reason}"),
                           {"version": state.version, "applied": state.last_applied,
                            "rolled_back": state.last_rolled_back})
        return None

    def _wait_healthy(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._hooks.healthy():
                return True
            self._pause.wait(0.5)
        return False

    # -- update ------------------------------------------------------------------------------------------
    def _update(self, command_id: str, args: ca.Update) -> Outcome:
        """Through the appliance's update path: its pre-install gate, the bundle fetched and checked,
        installed into the inactive slot (``adapters/rauc_install.py``); the commit gate decides after
        the reboot, and the result comes at the next start (the version the box runs)."""
        detail: dict[str, object] = {"version": args.version, "committed": False}
        if update.pre_install(self._settings, self._paths) is not update.HookResult.CONTINUE:
            return Outcome(False, "deferred: an exam is under way or the data partition is short of space; "
                                  "try again later", detail)
        bundle = self._paths.state_dir / "update" / "bundle.raucb"
        bundle.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            size = https_download.fetch(args.url, bundle, args.sha256, MAX_UPDATE_BYTES, self._settings.mqtt.ca_file)
            rauc_install.install(bundle)
        finally:
            blobs.remove(bundle)
        blobs.write_atomic(self._paths.state_dir / UPDATE_PENDING,
                           json.dumps({"command": command_id, "version": args.version}).encode(), mode=0o600)
        log.warning("update to version %s installed by a remote command", args.version, extra={
            "MESSAGE_ID": MSG.UPDATE_INSTALLED.value, "VERSION": args.version, "BYTES": size,
            "COMMAND_ID": command_id})
        return Outcome(True, f"version {args.version} installed; the box starts it and its commit gate decides",
                       {**detail, "bytes": size}, then=self._hooks.restart_edge, final=False)

    def _update_result(self, command_id: str) -> Outcome | None:
        path = self._paths.state_dir / UPDATE_PENDING
        try:
            pending = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if pending.get("command") != command_id:
            return None
        blobs.remove(path)
        target = str(pending.get("version", ""))
        if target == __version__:
            return Outcome(True, f"version {target} runs", {"version": target, "committed": True})
        return Outcome(False, f"version {target} did not stay: the box runs {__version__} (rolled back)",
                       {"version": target, "committed": False, "running": __version__})

    # -- renew --------------------------------------------------------------------------------------------
    def _renew(self) -> Outcome:
        self._hooks.renew()
        not_after = host.cert_not_after(self._settings.mqtt.cert_file)
        return Outcome(True, "certificate renewed", {"not_after": None if not_after is None else int(not_after)})
