"""The edge service: DICOM listener, packer thread, MQTT link and the loop thread.

Threads belong to adapters (pynetdicom per association, paho's network loop)
and post to this loop through a ``queue.Queue``; the loop alone touches the
sender's windows. The DICOM sink commits directly (the database serialises
writers) so that 0x0000 goes out only after the blob and its row are durable.
"""

from __future__ import annotations

import base64
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway import __version__
from gateway.adapters import blobs
from gateway.adapters.command_store import CommandStore
from gateway.adapters.dicom_receive import ReceivedInstance
from gateway.adapters.dicom_scp import DicomListener
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.adapters.storage_commitment import StorageCommitmentScp
from gateway.adapters.store import SpoolStore
from gateway.adapters.udev_watch import LinkWatcher
from gateway.adapters.worklist_store import WorklistStore
from gateway.appliance import status
from gateway.config import EdgeSettings
from gateway.core import policy, spool, topics
from gateway.core.acksig import AckKeyring
from gateway.core.errors import SpoolFullError
from gateway.core.priority import PriorityRules, classify
from gateway.core.spool import ItemState
from gateway.edge import ack_keyring, cache, command_keyring, diagnostics, remote_config, worklist_feed
from gateway.edge.command_kinds import BoxCommands, Hooks
from gateway.edge.commands import CommandChannel
from gateway.edge.dicom_services import ServiceNeeds, build_dicom_services
from gateway.edge.exams import ExamRecorder
from gateway.edge.packer import Packer
from gateway.edge.renewal import Renewer
from gateway.edge.sender import Sender
from gateway.edge.telemetry import Telemetry
from gateway.edge.worklist_feed import WorklistFeed
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
RETENTION_SWEEP_S = 60.0
LOOP_STALE_S = 30.0  # the main loop turns every 0.2 s; this long without a turn means it hangs
# Packing yields to reception: the JPEG-LS coder holds the GIL, and the modality must never
# wait for us. It packs once no C-STORE has arrived for PACK_QUIET_S, or after deferring one
# item PACK_MAX_DEFER_S (an association that never pauses still gets its items packed), or at
# once while less than the sender's window plus PACK_AHEAD_BYTES is packed and unacknowledged:
# the uplink starts with the first instance of a study and never idles while the rest arrives
# (core.policy.pack_now).
PACK_QUIET_S = 0.5
PACK_MAX_DEFER_S = 30.0
PACK_AHEAD_BYTES = 4 * 1024 * 1024
DISK_CHECK_S = 2.0
PURGE_BATCH = 16


@dataclass(frozen=True)
class _Ack:
    payload: bytes


@dataclass(frozen=True)
class _Link:
    up: bool
    resumed: bool = False  # up, and the broker kept the session: the acks queued during the outage follow


class EdgeService:
    def __init__(self, settings: EdgeSettings, paths: Paths, clock: Callable[[], float] = time.time,
                 config_files: Sequence[Path] = ()) -> None:
        self.settings = settings
        self.paths = paths
        self._clock = clock
        for d in (paths.incoming_dir, paths.blob_dir, paths.outbox_dir, paths.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.keyring_file = ack_keyring.keyring_path(paths.state_dir)
        self.keyring = ack_keyring.load(self.keyring_file)  # refuse to start without one: nothing could be acked
        self.store = SpoolStore(paths.spool_db)
        self._events: queue.Queue[_Ack | _Link] = queue.Queue()
        self._wake = threading.Event()
        self._pack_wake = threading.Event()
        self._stop = threading.Event()
        self._refusing = False
        self._last_accept_s = 0.0  # time.monotonic() of the last committed C-STORE
        p = settings.priority
        self._priority_rules = PriorityRules(p.stat_calling_aets, p.stat_modalities, p.honor_dicom_priority)
        cloud_public = base64.b64decode(settings.box.cloud_public_key)
        prefix = settings.mqtt.topic_prefix
        self.link = MqttLink(
            settings.mqtt, client_id=settings.box.id,
            subscriptions=[(topics.ack_topic(prefix, settings.box.id), 1)],
            on_message=self._on_message, on_state=self._on_link,
            max_inflight=settings.uplink.window_chunks,
        )
        keys = FileKeyStore(paths.state_dir / "keys")
        cache_key = keys.secret(cache.KEY_NAME)  # always readable, whatever encrypt_at_rest says now
        self._cache_key = cache_key if settings.spool.encrypt_at_rest else None
        self._receive_key = cache_key  # the listener seals what it receives, whatever the setting
        chunk_topic = topics.chunk_topic(prefix, settings.box.id, "0" * 32)
        self.packer = Packer(settings, self.store, paths.blob_dir, paths.outbox_dir, cloud_public, clock,
                             cache_key=cache_key, frame_limit=lambda: self.link.max_payload_bytes(chunk_topic))
        self.sender = Sender(settings, self.store, paths.outbox_dir, paths.blob_dir, self.link, clock,
                             self._current_keyring)
        self.exams = _exam_recorder(settings, paths, keys, clock)
        services = build_dicom_services(ServiceNeeds(settings, paths, self, self.exams, cache_key, clock))
        self.commitments = services.one(StorageCommitmentScp)  # woken by every ack
        self.listener = DicomListener(settings.dicom, services.all,
                                      provisioned=(paths.state_dir / "device.toml").exists())
        self.renewer = Renewer(settings, keys, self._identity_renewed, clock, self.keyring_file)
        self.link_watcher = LinkWatcher(self._on_network_up)
        self.log_ring = diagnostics.LogRing()
        self.restart_requested = threading.Event()  # a ``restart`` command: run_service exits, systemd restarts
        runner = BoxCommands(settings, paths, Hooks(self.renewer.renew, self.restart_requested.set, self._healthy,
                                                   lambda: self.telemetry.announce()),
                             cloud_public, self.log_ring, clock, config_files)
        self.commands = CommandChannel(CommandStore(paths.state_dir / "commands.db"), settings.box.id, prefix,
                                       keys.secret(worklist_feed.KEY_NAME),
                                       command_keyring.keyring_path(paths.state_dir), runner, clock)
        self.telemetry = Telemetry(settings, paths, self.exams, self.link, clock, self._current_keyring,
                                   dicom_counts=self.listener.counts,
                                   worklist=self._worklist_feed(settings, paths, keys, cache_key, clock),
                                   commands=self.commands,
                                   config_version=lambda: remote_config.version(paths.state_dir))
        self._threads: list[threading.Thread] = []
        # Monotonic, not ``clock``: a wall-clock step (first NTP sync on a box without
        # an RTC) must neither fake a hang nor hide one.
        self.loop_heartbeat = time.monotonic()

    def _worklist_feed(self, settings: EdgeSettings, paths: Paths, keys: FileKeyStore, cache_key: bytes,
                       clock: Callable[[], float]) -> WorklistFeed | None:
        """The box's end of the worklist feed, with its X25519 worklist key (made on first start, kept
        like the cache key: ``keys/worklist.secret``, 0600, erased by decommission); None with the
        worklist off."""
        w = settings.worklist
        if not w.enabled:
            return None
        return WorklistFeed(WorklistStore(paths.worklist_db, cache_key), settings.box.id, settings.mqtt.topic_prefix,
                            keys.secret(worklist_feed.KEY_NAME), self._current_keyring, clock, w.status_resend_s)

    def _identity_renewed(self) -> None:
        """A renewed certificate: both MQTT connections present it at their next connect; the
        renewal answer may have brought a new ack keyring (a key rotation), which applies at once."""
        self.link.reload_identity()
        self.telemetry.link.reload_identity()
        self.keyring = ack_keyring.load(self.keyring_file)

    def _healthy(self) -> bool:
        """A remote configuration's health check: every loop alive, both MQTT connections up."""
        return self.alive() and self.link.connected and self.telemetry.link.connected

    def _current_keyring(self) -> AckKeyring:
        return self.keyring  # an immutable value, replaced whole: safe to read from any thread

    # -- the DICOM sink (called on pynetdicom's association threads) -------------------------
    def accept(self, instance: ReceivedInstance) -> int:
        # what the box holds or delivered of this SOP Instance UID (one read): quarantined items don't count
        known = [i for i in self.store.by_sop_instance(instance.identity.sop_instance_uid)
                 if i.state is not ItemState.QUARANTINED]
        held = next((i for i in reversed(known) if i.identity.sha256 == instance.identity.sha256), None)
        if held is not None:  # re-sent, byte for byte: already durable here or delivered
            blobs.remove(instance.path)
            log.info("re-sent instance already held: not spooled nor sent again", extra={
                "MESSAGE_ID": MSG.INSTANCE_RESENT.value, "ITEM_ID": held.id, "STATE": held.state.value,
                "CALLING_AE": instance.calling_ae})
            return held.id
        if self._disk_refuses():
            raise SpoolFullError("spool disk above its high-water mark")
        name = self._spooled_blob(instance)
        priority = classify(self._priority_rules, instance.calling_ae, instance.modality,
                            instance.dimse_priority, instance.requested_priority)
        try:  # the row and its study's count, one commit: the blob is already durable
            item_id = self.store.add_received_in_study(instance.identity, instance.calling_ae, name, self._clock(),
                                                       priority=int(priority))
        except Exception:
            blobs.remove(self.paths.blob_dir / name)
            raise
        if known:  # the same UID with other bytes (a corrected header, a new reconstruction): a new version
            log.info("new version of an instance already received", extra={
                "MESSAGE_ID": MSG.INSTANCE_NEW_VERSION.value, "ITEM_ID": item_id, "PREVIOUS_ITEM_ID": known[-1].id,
                "VERSION": len(known) + 1, "CALLING_AE": instance.calling_ae})
        self._pack_wake.set()
        self._last_accept_s = time.monotonic()
        self.exams.observe(instance)  # enqueue only: utilisation never slows the answer
        return item_id  # the listener logs INSTANCE_STORED once it answers 0x0000

    def _spooled_blob(self, instance: ReceivedInstance) -> str:
        """The blob's name in the spool, durable before its row. The listener lands each dataset
        sealed and durable in the blob directory itself (``dicom_services``), so it is taken as
        it is; one landed elsewhere is moved in durably."""
        if self._cache_key is None:  # encryption at rest switched off: the operator chose a plaintext spool
            name = instance.path.name.removesuffix(cache.SEALED_SUFFIX)
            blobs.write_atomic(self.paths.blob_dir / name, cache.read_blob(instance.path, self._receive_key))
            blobs.remove(instance.path)
            return name
        if instance.path.parent != self.paths.blob_dir:
            blobs.adopt_atomic(instance.path, self.paths.blob_dir / instance.path.name)
        return instance.path.name

    def _complete_stable_studies(self) -> None:
        cutoff = self._clock() - self.settings.spool.study_stable_s
        for study_id, calling_ae, instances, priority, first_at in self.store.complete_stable_studies(
                cutoff, self._clock()):
            log.info("study complete: no new instance for %.0f s", self.settings.spool.study_stable_s, extra={
                "MESSAGE_ID": MSG.STUDY_COMPLETE.value, "STUDY_ID": study_id, "CALLING_AE": calling_ae,
                "INSTANCES": instances, "PRIORITY": priority,
                "RECEIVING_S": round(self._clock() - first_at - self.settings.spool.study_stable_s, 1)})

    def _disk_refuses(self) -> bool:
        usage = shutil.disk_usage(self.paths.state_dir)
        used = 100.0 * (usage.total - usage.free) / usage.total
        sp = self.settings.spool
        refusing = policy.disk_refuses(used, sp.high_water_percent, sp.low_water_percent, self._refusing)
        if refusing != self._refusing:
            log.warning("spool disk high-water mark %s", "reached" if refusing else "cleared", extra={
                "MESSAGE_ID": MSG.SPOOL_HIGH_WATER.value, "USED_PERCENT": round(used, 1)})
        self._refusing = refusing
        return refusing

    # -- adapter callbacks (paho's thread) ------------------------------------------------------
    def _on_message(self, message: Inbound) -> None:
        self._events.put(_Ack(message.payload))
        self._wake.set()

    def _on_link(self, up: bool) -> None:
        self._events.put(_Link(up, up and self.link.session_present))  # read on the thread that set it
        self._wake.set()

    def _on_network_up(self) -> None:  # the link watcher's thread
        if not self.link.connected:
            log.info("network link up: reconnecting the uplink now", extra={"MESSAGE_ID": MSG.LINK_UP_NUDGE.value})
            self.link.nudge()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        logging.getLogger().addHandler(self.log_ring)
        self._sweep()
        self._seal_legacy()
        self.renewer.start()  # rolls an interrupted certificate swap forward before the link connects
        status.record_uplink(self.paths.state_dir, False, self._clock(), at_start=True)
        self.listener.start()  # and its services: the Storage Commitment reporter thread
        self.link.start()
        self.link_watcher.start()
        self.commands.start()
        self.telemetry.start()
        for target, name in ((self._pack_loop, "packer"), (self._main_loop, "edge-loop")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("edge service started", extra={
            "MESSAGE_ID": MSG.SERVICE_STARTED.value, "BOX_ID": self.settings.box.id,
            "VERSION": __version__, "DICOM_PORT": self.listener.port,
            "AE_TITLE": self.settings.dicom.ae_title})
        status.record_edge_ready(self.paths.runtime_dir, __version__, self._clock())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pack_wake.set()
        self.listener.stop()  # and its services
        self.link_watcher.stop()
        for thread in self._threads:
            thread.join(10)
        self.telemetry.stop()
        self.commands.stop()
        self.link.stop()
        self.renewer.stop()
        self.sender.close()
        self.store.close()
        self.exams.store.close()
        logging.getLogger().removeHandler(self.log_ring)

    def ports(self) -> dict[str, int]:
        """The DICOM listener's port and, when it runs, the /metrics endpoint's."""
        bound = {"dicom": self.listener.port}
        metrics = self.telemetry.metrics.port if self.telemetry.metrics is not None else None
        return bound if metrics is None else {**bound, "metrics": metrics}

    def alive(self) -> bool:
        """All loops are running and the main loop turned recently (for the watchdog)."""
        fresh = time.monotonic() - self.loop_heartbeat < LOOP_STALE_S
        return (fresh and self.link.alive() and self.telemetry.alive() and self.listener.alive()
                and self.commands.alive() and all(t.is_alive() for t in self._threads))

    def _sweep(self) -> None:
        """Remove what a crash left behind: never-committed uploads, orphans."""
        for leftover in self.paths.incoming_dir.iterdir():
            blobs.remove(leftover)
        known = self.store.blob_names(lambda s: s is not ItemState.PURGED)
        for path in self.paths.blob_dir.iterdir():
            if path.name not in known:
                blobs.remove(path)
        live = {i.transfer_id for i in self.store.in_state(ItemState.PACKED, ItemState.SENDING, limit=10**9)}
        for path in self.paths.outbox_dir.iterdir():
            if path.stem not in live:
                blobs.remove(path)

    def _seal_legacy(self) -> None:
        """Plaintext an older version kept (quarantined files; spooled blobs, unless encryption at
        rest is off) is sealed, its row repointed, then deleted. Deleted plaintext may survive in
        free disk blocks: docs/security.md."""
        files = items = 0
        for path in cache.plaintext_files(self.paths.quarantine_dir):
            cache.seal_in_place(path, self._receive_key)
            blobs.remove(path)
            files += 1
        if self._cache_key is not None:
            names = self.store.blob_names(lambda s: s is not ItemState.PURGED)
            for name in sorted(n for n in names if not n.endswith(cache.SEALED_SUFFIX)):
                path = self.paths.blob_dir / name
                if path.is_file():
                    sealed = cache.seal_in_place(path, self._cache_key)
                    self.store.rename_blob(name, sealed.name)  # a crash before this: the sweep drops it
                    blobs.remove(path)
                    items += 1
        if files or items:
            log.warning("plaintext left by an older version sealed", extra={
                "MESSAGE_ID": MSG.PLAINTEXT_SEALED.value, "QUARANTINE_FILES": files, "ITEMS": items})

    def _pack_loop(self) -> None:
        while not self._stop.is_set():
            self._pack_wake.clear()
            items = self.store.in_state(ItemState.RECEIVED, limit=16)
            failed = False
            for item in items:
                self._yield_to_reception()
                if self._stop.is_set():
                    return
                failed |= not self.packer.pack_one(item)
                self._wake.set()
            if failed:
                self._stop.wait(5.0)  # let a transient failure clear before retrying
            elif not items:
                self._pack_wake.wait(1.0)

    def _yield_to_reception(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            quiet_for = now - self._last_accept_s
            if quiet_for >= PACK_QUIET_S or policy.pack_now(
                    quiet_for, now - start, self.store.unacknowledged_packed_bytes(), quiet_s=PACK_QUIET_S,
                    max_defer_s=PACK_MAX_DEFER_S, ahead_bytes=PACK_AHEAD_BYTES + self.sender.window_bytes):
                return
            self._stop.wait(min(PACK_QUIET_S - quiet_for, 0.1))

    def _main_loop(self) -> None:
        next_sweep = next_disk_check = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            self.loop_heartbeat = time.monotonic()
            self._drain_events()
            if self.link.connected:
                self.sender.pump()
            if self._clock() >= next_sweep:
                self._purge_expired()
                next_sweep = self._clock() + RETENTION_SWEEP_S
            if self._clock() >= next_disk_check:
                self._relieve_disk()
                self._complete_stable_studies()
                next_disk_check = self._clock() + DISK_CHECK_S

    def _drain_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, _Ack):
                self.sender.on_ack(event.payload)
                self.commitments.wake()
            else:
                self.sender.link_changed(event.up, event.resumed)
                status.record_uplink(self.paths.state_dir, event.up, self._clock())

    def _relieve_disk(self) -> None:
        """Above the high-water mark, purge acknowledged instances oldest first (never an
        unacknowledged one) until use falls below the low-water mark or none is left."""
        purged = freed = 0
        while self._disk_refuses() and not self._stop.is_set():
            batch = self.store.acked_before(float("inf"), limit=PURGE_BATCH)
            if not batch:
                break
            for item in batch:
                done, effects = self.store.transition(item.id, spool.RetentionExpired(), self._clock())
                self.sender.apply_effects(done, effects)
                purged, freed = purged + 1, freed + item.identity.size
        if purged:
            log.warning("acknowledged instances purged early to free disk space", extra={
                "MESSAGE_ID": MSG.SPOOL_PURGED_FOR_SPACE.value, "ITEMS": purged, "BYTES": freed,
                "REFUSING": self._refusing})

    def _purge_expired(self) -> None:
        cutoff = self._clock() - self.settings.spool.retention_hours * 3600.0
        for item in self.store.acked_before(cutoff):
            done, effects = self.store.transition(item.id, spool.RetentionExpired(), self._clock())
            self.sender.apply_effects(done, effects)
            log.info("instance purged after retention", extra={
                "MESSAGE_ID": MSG.ITEM_PURGED.value, "ITEM_ID": item.id, "BYTES": item.identity.size})


def _exam_recorder(settings: EdgeSettings, paths: Paths, keys: FileKeyStore, clock: Callable[[], float]
                   ) -> ExamRecorder:
    """The exam recorder (utilisation); the MPPS SCP, when enabled, feeds it too."""
    secret = keys.secret("study_key")  # names studies outside the box (HMAC); never leaves it
    store = ExamStore(paths.state_dir / "utilisation.db", paths.spool_db)
    return ExamRecorder(settings.utilisation, store, secret, clock)
