"""Exam bookkeeping on the edge: received instances and MPPS in, utilisation records out.

``observe`` runs on the C-STORE path and only enqueues (no database write, no parsing),
so answering the modality is not slowed. The telemetry thread calls ``pump`` to fold the
queue into ``utilisation.db`` (core.exam does the arithmetic), close quiet exams and note
when the cloud holds a whole study (turnaround).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import replace

from gateway.adapters.dicom_receive import ReceivedInstance
from gateway.adapters.exam_store import ExamStore, StoredExam
from gateway.config import UtilisationSettings
from gateway.core import exam as exams
from gateway.core.exam import ExamStatus
from gateway.logs import MSG

log = logging.getLogger(__name__)
_MAX_QUEUE = 100_000


class ExamRecorder:
    def __init__(self, settings: UtilisationSettings, store: ExamStore, secret: bytes,
                 clock: Callable[[], float]) -> None:
        self._settings = settings
        self.store = store
        self._secret = secret
        self._clock = clock
        self._inbox: queue.Queue[tuple[ReceivedInstance, float]] = queue.Queue(_MAX_QUEUE)
        self.dropped = 0

    def key(self, uid: str) -> str:
        return exams.study_key(self._secret, uid)

    # -- the C-STORE path: enqueue only ------------------------------------------------------------
    def observe(self, instance: ReceivedInstance) -> None:
        try:
            self._inbox.put_nowait((instance, self._clock()))
        except queue.Full:  # observer: never block or fail a store for bookkeeping
            self.dropped += 1

    # -- the telemetry thread ---------------------------------------------------------------------
    def pump(self) -> list[StoredExam]:
        """Fold what arrived, close quiet exams, settle turnaround; returns exams that changed."""
        self._fold_arrivals()
        now = self._clock()
        changed = []
        for stored in self.store.open_quiet(now - self._settings.exam_quiet_s):
            closed = exams.close(stored.exam)
            stored_at = self.store.study_stored_at(stored.study_uid) if closed.images else None
            self.store.save(_with_stored(closed, stored_at), stored.study_uid, closed=True)
            changed.append(stored)
            log.info("exam complete", extra={
                "MESSAGE_ID": MSG.EXAM_RECORDED.value, "STUDY_KEY": stored.exam.study_key,
                "MODALITY": closed.modality, "IMAGES": closed.images, "SERIES": closed.series,
                "SOURCE": closed.source.value})
        for stored in self.store.awaiting_cloud():
            stored_at = self.store.study_stored_at(stored.study_uid)
            if stored_at is not None:
                self.store.save(_with_stored(stored.exam, stored_at), stored.study_uid, closed=True)
                changed.append(stored)
        return changed

    def _fold_arrivals(self) -> None:
        s = self._settings
        while True:
            try:
                instance, received_at = self._inbox.get_nowait()
            except queue.Empty:
                return
            uids = instance.identity
            if not uids.study_instance_uid or exams.is_test_object(uids.study_instance_uid):
                continue  # no study to attribute it to, or a commissioning probe: no patient's exam
            key = self.key(uids.study_instance_uid)
            inst = exams.instance_time(
                instance.header, study_key=key, series_key=self.key(uids.series_instance_uid or "-"),
                received_at=received_at, default_offset_s=s.utc_offset_minutes * 60,
                max_header_age_s=s.max_header_age_h * 3600, max_header_ahead_s=s.max_header_ahead_s)
            new_series = self.store.add_series(key, inst.series_key)
            stored = self.store.get(key)
            folded = exams.fold(stored.exam if stored else None, inst, new_series)
            self.store.save(folded, uids.study_instance_uid, closed=False)

    # -- MPPS (association threads) -----------------------------------------------------------------
    def mpps(self, study_uid: str, modality: str, start: float | None, end: float | None,
             status: ExamStatus) -> str:
        """Record an MPPS N-CREATE or N-SET for ``study_uid``; returns its study key."""
        key = self.key(study_uid)
        if exams.is_test_object(study_uid):
            return key  # a test object's procedure step is no exam either
        stored = self.store.get(key)
        updated = exams.apply_mpps(stored.exam if stored else None, study_key=key, modality=modality,
                                   start=start, end=end, status=status, now=self._clock())
        final = status is not ExamStatus.IN_PROGRESS
        # Final with no images yet (or already closed): send now; with images, close when quiet.
        closed = (stored is not None and stored.closed) or (final and not updated.images)
        self.store.save(updated, study_uid, closed=closed)
        return key


def _with_stored(exam: exams.Exam, stored_at: float | None) -> exams.Exam:
    return exam if stored_at is None else replace(exam, cloud_stored_at=stored_at)
