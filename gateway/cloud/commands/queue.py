"""The command queue, run by the fleet service: issue, publish (the leader), results and blobs back.

* ``issue`` (any fleet instance, any thread: the API, the CLI): the arguments are checked for the
  kind (``core.command_rules``), sealed at rest, and the command queued with the box's next seq
  (``store.CommandStore.add``). A config command gets the box's next configuration version, kept.
* ``publish`` (the leader only, from the fleet worker; the frame goes out through the MQTT client's
  own thread, ``MqttLink.publish``): per online box with an inbound key (its birth's), the open
  command of the lowest seq, signed and sealed (``core.command_wire.seal``), when it was never sent,
  when the box was born again since, or every ``resend_s`` until a result or its expiry. One command
  per box at a time: a box executes seqs in order and refuses a lower one after a higher one.
* ``expire``: open commands past their expiry become ``expired`` (one the box took: after a grace).
* ``take_result`` / ``take_blob_part``: a box's reply, parsed strictly (``schema.parse`` with its size
  limit), for a command of that box only (the box id is the topic's); anything else raises
  ``FrameError`` (the caller dead-letters it, the loop goes on). Refusals are recorded (the fleet's
  ``command_refused`` alert). A blob is kept once every part is in and the SHA-256 matches, as the box
  sealed it; ``bundle`` opens it for a download.

No patient data is logged: a line names boxes, command ids, seqs, kinds and states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from gateway.cloud.commands.store import DELIVERED, FAILED, FINAL_STATES, PENDING, CommandRow, CommandStore
from gateway.core import accession, acksig, command_rules, command_wire, schema, topics
from gateway.core.command_wire import Kind
from gateway.core.errors import CommandReplyRefused, FrameError, IntegrityError
from gateway.logs import MSG

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes], bool]  # topic, frame -> queued
DEFAULT_TTL_S = 86400.0
RESEND_S = 30.0
RESULT_GRACE_S = 3600.0  # a command the box took may still report this long after its expiry
REFUSAL_CODES = frozenset(r.value for r in command_wire.Refusal)


class CommandQueue:
    def __init__(self, store: CommandStore, signer: acksig.AckSigner, envelope_private: bytes, prefix: str,
                 clock: Callable[[], float] = time.time, resend_s: float = RESEND_S) -> None:
        self.store, self._signer, self._prefix, self._clock = store, signer, prefix, clock
        self._envelope = envelope_private
        self._key = command_rules.at_rest_key(envelope_private)
        self._accession_key = accession.index_key(envelope_private)  # as the ingest's (archive index)
        self.resend_s = resend_s
        self.default_ttl_s = DEFAULT_TTL_S
        self.published = 0  # frames published
        self.results = 0  # results taken
        self.refusals = 0  # refusals reported by boxes
        self.refused_by: dict[tuple[str, str], int] = {}  # (box, reason code) -> refusals, for /metrics
        self._seen: dict[str, tuple[str, int]] = {}  # box -> (inbound key, config version) last written

    def now(self) -> float:
        return self._clock()

    def seal_at_rest(self, ref: str, box_id: str, args: dict[str, Any]) -> bytes:
        return command_rules.seal_args(self._key, os.urandom(16), ref, box_id, args)

    def open_at_rest(self, ref: str, box_id: str, sealed: bytes) -> dict[str, Any]:
        return command_rules.open_args(self._key, ref, box_id, sealed)

    def accession_digest(self, box_id: str, accession_number: str) -> str:
        """The archive index's digest of a box's accession number (``core.accession``), for a lookup."""
        return accession.digest(self._accession_key, box_id, accession_number)

    # -- issuing ------------------------------------------------------------------------------------------
    def issue(self, box_id: str, kind: Kind, args: dict[str, Any], by: str, ttl_s: float = DEFAULT_TTL_S,
              rollout_id: int | None = None) -> CommandRow:
        """Queue a command; ``ValueError`` for arguments or a lifetime out of range. A config command gets
        the box's next configuration version, numbered in the store's transaction (two operators at once
        get two versions)."""
        if not 60.0 <= ttl_s <= command_wire.MAX_LIFETIME_S:
            raise ValueError(f"a command lives 60 s to {command_wire.MAX_LIFETIME_S:.0f} s")
        checked = command_rules.check_args(kind, args, 2**62)  # the largest version: the size is checked
        if len(json.dumps({"args": checked, "by": by}).encode()) > command_wire.MAX_ARGS_BYTES:
            raise ValueError(f"the arguments are larger than {command_wire.MAX_ARGS_BYTES} bytes")
        command_id = os.urandom(command_wire.ID_BYTES).hex()

        def seal(version: int) -> tuple[bytes, bytes | None]:
            if kind is not Kind.CONFIG:
                return self.seal_at_rest(command_id, box_id, {**checked, "_by": by}), None
            return (self.seal_at_rest(command_id, box_id, {**checked, "version": version, "_by": by}),
                    self.seal_at_rest(command_id, box_id, {"document": checked["document"]}))

        now = self._clock()
        row = self.store.add(command_id, box_id, kind.value, seal, by, now, now + ttl_s, rollout_id,
                             config=kind is Kind.CONFIG)
        log.info("command queued", extra={"MESSAGE_ID": MSG.COMMAND_QUEUED.value, "BOX_ID": box_id,
                                          "COMMAND": row.id, "SEQ": row.seq, "KIND": kind.value, "BY": by})
        return row

    def args_of(self, row: CommandRow) -> dict[str, Any]:
        args = command_rules.open_args(self._key, row.id, row.box_id, row.sealed)
        args.pop("_by", None)
        return args

    def config_document(self, box_id: str, version: int) -> str | None:
        found = self.store.config_version(box_id, version)
        if found is None:
            return None
        return str(command_rules.open_args(self._key, found[0], box_id, found[1])["document"])

    # -- publishing (the leader) --------------------------------------------------------------------------
    def publish(self, send: Publish, online: Callable[[str], bool]) -> int:
        """Publish each online box's next command when it is due; the frames sent."""
        now, sent = self._clock(), 0
        for row in self.store.first_open():
            if row.expires_at <= now or not online(row.box_id):
                continue
            if row.sent_at is not None and now - row.sent_at < self.resend_s:
                continue
            box = self.store.box(row.box_id)
            if box is None or not box.inbound_key:
                continue  # the box announced no inbound key (yet): it waits for a birth with one
            try:
                frame = self._frame(row, bytes.fromhex(box.inbound_key))
            except (IntegrityError, ValueError) as exc:  # altered in the store, or a key that is not one
                self.store.record_result(row.id, row.box_id, row.seq, FAILED, "", f"not sent: {exc}"[:500], "{}",
                                         now)
                log.error("command not sent", extra={"MESSAGE_ID": MSG.COMMAND_NOT_SENT.value, "BOX_ID": row.box_id,
                                                     "COMMAND": row.id, "SEQ": row.seq, "ERROR": str(exc)})
                continue  # the box's next command goes next round; other boxes are not held up
            if not send(topics.command_topic(self._prefix, row.box_id), frame):
                continue  # the link is down: the next round tries again
            self.store.sent(row.id, now)
            self.published += 1
            log.info("command published", extra={"MESSAGE_ID": MSG.COMMAND_PUBLISHED.value, "BOX_ID": row.box_id,
                                                 "COMMAND": row.id, "SEQ": row.seq, "KIND": row.kind,
                                                 "SENDS": row.sends + 1})
            sent += 1
        return sent

    def _frame(self, row: CommandRow, box_public: bytes) -> bytes:
        args = command_rules.open_args(self._key, row.id, row.box_id, row.sealed)
        by = str(args.pop("_by", row.issued_by))
        return command_wire.seal(row.box_id, box_public, self._signer, command_id=bytes.fromhex(row.id),
                                 seq=row.seq, kind=Kind(row.kind), args=args, issued_by=by,
                                 issued_at=row.issued_at, expires_at=row.expires_at, data_key=os.urandom(32),
                                 eph_private=os.urandom(32), nonce=os.urandom(command_wire.NONCE_BYTES))

    def expire(self) -> list[CommandRow]:
        rows = self.store.expire(self._clock(), RESULT_GRACE_S)
        for row in rows:
            log.warning("command expired", extra={"MESSAGE_ID": MSG.COMMAND_EXPIRED.value, "BOX_ID": row.box_id,
                                                  "COMMAND": row.id, "SEQ": row.seq, "KIND": row.kind})
        return rows

    # -- replies from the boxes ---------------------------------------------------------------------------
    def take_result(self, box_id: str, payload: bytes) -> CommandRow | None:
        """Store a box's result; the command after (None: a refusal of a frame that did not parse)."""
        result = schema.parse(schema.CommandResult, payload, "command result", schema.MAX_RESULT_BYTES)
        if result.box_id != box_id:
            raise FrameError("command result: box id differs from the topic's")
        now = self._clock()
        if result.state == "refused":
            self.refusals += 1
            code = result.reason if result.reason in REFUSAL_CODES else "other"  # bounded metric labels
            self.refused_by[(box_id, code)] = self.refused_by.get((box_id, code), 0) + 1
            self.store.add_refusal(box_id, now, result.reason or "", result.id or "", result.message or "")
            log.warning("command refused by the box", extra={
                "MESSAGE_ID": MSG.COMMAND_REFUSAL_REPORTED.value, "BOX_ID": box_id, "COMMAND": result.id or "",
                "SEQ": result.seq or 0, "REASON": result.reason or "", "DETAIL": result.message or ""})
        if result.id is None or result.seq is None:
            if result.state != "refused":
                raise FrameError("command result: no command id or seq")
            return None
        state = DELIVERED if result.state == "received" else result.state
        row = self.store.record_result(result.id, box_id, result.seq, state, result.reason or "",
                                       result.message or "", json.dumps(dict(result.detail), sort_keys=True), now)
        if row is None:
            raise CommandReplyRefused("command result: not a command of this box")
        self.results += 1
        if row.state in FINAL_STATES and row.state == state:
            log.info("command finished", extra={"MESSAGE_ID": MSG.COMMAND_RESULT_TAKEN.value, "BOX_ID": box_id,
                                                "COMMAND": row.id, "SEQ": row.seq, "KIND": row.kind,
                                                "STATE": row.state})
        return row

    def take_blob_part(self, box_id: str, payload: bytes) -> bool:
        """Keep one part of a command's sealed blob; True once the whole blob is stored."""
        part = schema.parse(schema.CommandBlobPart, payload, "command blob part", schema.MAX_BLOB_PART_BYTES)
        if part.box_id != box_id:
            raise FrameError("command blob part: box id differs from the topic's")
        row = self.store.command(part.id)
        if row is None or row.box_id != box_id or row.kind != Kind.BUNDLE.value:
            raise CommandReplyRefused("command blob part: not a bundle command of this box")
        if self.store.blob(part.id) is not None:
            return True  # a resend of a blob already kept
        if part.part >= part.parts or part.size > command_wire.MAX_BLOB_BYTES \
                or part.parts * command_wire.BLOB_PART_BYTES < part.size:
            raise FrameError("command blob part: part, parts and size disagree")
        parts = self.store.add_blob_part(part.id, part.part, part.parts, part.size, part.sha256, part.data,
                                         self._clock())
        if any((p["parts"], int(p["size"]), p["sha256"]) != (part.parts, part.size, part.sha256) for p in parts):
            self.store.drop_blob_parts(part.id)
            raise FrameError("command blob part: parts of one blob disagree on its size or digest")
        if len(parts) < part.parts:
            return False
        sealed = b"".join(bytes.fromhex(p["data"]) for p in parts)
        if len(sealed) != part.size or hashlib.sha256(sealed).hexdigest() != part.sha256:
            self.store.drop_blob_parts(part.id)
            raise FrameError("command blob: size or SHA-256 does not match (the parts are dropped)")
        self.store.add_blob(part.id, box_id, sealed, part.sha256, self._clock())
        log.info("command blob stored", extra={"MESSAGE_ID": MSG.COMMAND_BLOB_STORED.value, "BOX_ID": box_id,
                                               "COMMAND": part.id, "BYTES": len(sealed)})
        return True

    def bundle(self, command_id: str) -> tuple[str, bytes] | None:
        """``(box_id, bundle)`` of a command's blob, opened with the envelope key; None if there is none.
        ``EnvelopeTamperedError`` / ``FrameError`` if it does not open."""
        found = self.store.blob(command_id)
        if found is None:
            return None
        box_id, sealed, _ = found
        return box_id, command_wire.open_blob(self._envelope, box_id, command_id, sealed)

    def note_box(self, box_id: str, body: dict[str, Any], born: bool) -> None:
        """A birth's inbound key and a birth's or heartbeat's ``config_version``."""
        raw = body.get("config_version")
        version = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        key = str(body.get("worklist_key") or "") if born else None
        seen = self._seen.get(box_id)
        if not born and (version is None or (seen is not None and seen[1] == version)):
            return  # a heartbeat that changes nothing is not written
        self._seen[box_id] = (key if key is not None else (seen[0] if seen else ""),
                              version if version is not None else (seen[1] if seen else 0))
        self.store.note_box(box_id, key, version, self._clock(), born)


def is_open(row: CommandRow) -> bool:
    return row.state in (PENDING, DELIVERED, "running")
