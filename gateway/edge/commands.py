"""The box's end of remote commands (docs/operations.md, "Remote operations"; docs/protocol.md, "Remote commands").

``CommandChannel`` rides the telemetry connection, as the worklist feed does: paho's callback only
queues a frame (bounded); the telemetry thread (``pump``) judges it, in this order:

1. a redelivery: the header names a command this box already accepted (same id and seq) and a
   trusted key signed it for this box: its stored last result is published again, nothing runs;
2. ``command_wire.check``: signed by a key of ``pki/command_keys.json`` for this box id, not
   expired, not issued in the future, seq above the last accepted;
3. ``command_wire.open_frame`` with the box's X25519 inbound key (the birth's ``worklist_key``),
   then ``command_args.parse``: typed arguments for the kind;
4. recorded as accepted in ``commands.db`` (``CommandStore.accept``, durable, seq checked again in
   its transaction) BEFORE it runs, and ``received`` published.

A frame that fails any step is refused: the reason is published on ``cmd/result`` (state
``refused``), counted by reason (``mgw_edge_commands_refused_total``) and logged
(``COMMAND_REFUSED``); nothing of it runs, and the loop goes on.

Accepted commands run on the ``commands`` worker thread, one at a time, in seq order
(``edge/command_kinds.py``); each result is stored, then handed back to the telemetry thread
through a queue and published (a result not yet published when the link is down waits there, and
a redelivery answers from the store). A command the edge stopped during is finished at the next
start: a ``restart`` of the edge as succeeded, anything else as failed (interrupted).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.adapters.command_store import AlreadyAccepted, CommandStore
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.core import command_args, command_wire, envelope, schema, topics
from gateway.core.acksig import AckKeyring
from gateway.core.command_wire import CommandRefused, Header, Kind, Refusal
from gateway.core.errors import ConfigError, GatewayError
from gateway.edge import command_keyring
from gateway.logs import MSG

log = logging.getLogger(__name__)
INBOX_FRAMES = 64  # frames waiting for the telemetry thread; more are dropped (counted; the cloud resends)
RUNNING_KINDS = (Kind.BUNDLE, Kind.RESEND, Kind.CONFIG, Kind.RENEW, Kind.UPDATE)  # publish ``running`` first
MAX_MESSAGE_CHARS = 500


@dataclass
class Outcome:
    """What a command came to: the result's message and detail (no PHI), the blob parts to send first
    (encoded ``schema.CommandBlobPart``), and what to do once the result is published (``then``)."""

    ok: bool
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)
    then: Callable[[], None] | None = None
    final: bool = True  # False: the command goes on after ``then`` (a configuration, across a restart)
    then_at_once: bool = False  # run ``then`` once the result is stored, not once it is published


class Runner(Protocol):
    def run(self, command_id: str, args: command_args.Args) -> Outcome: ...

    def resume(self, command_id: str, kind: Kind) -> Outcome | None:
        """A command the edge stopped during (None: it was interrupted, report it failed)."""
        ...


@dataclass(frozen=True)
class _Out:
    topic: str
    body: bytes
    then: Callable[[], None] | None = None  # run on the telemetry thread once published
    command_id: str = ""  # a result: marked published in the store


@dataclass(frozen=True)
class _Job:
    header: Header
    args: command_args.Args | None  # None: resume a command the edge stopped during


class CommandChannel:
    """Driven by the telemetry thread (``pump``); runs commands on a worker thread of its own."""

    def __init__(self, store: CommandStore, box_id: str, prefix: str, private_key: bytes, keyring_file: Path,
                 runner: Runner, clock: Callable[[], float]) -> None:
        self._store = store
        self._box = box_id
        self._private = private_key
        self.public_hex = envelope.public_key_of(private_key).hex()  # the birth's ``worklist_key``
        self._keyring_file = keyring_file
        self._keyring: tuple[float, AckKeyring | None] | None = None  # (mtime, keyring)
        self._runner = runner
        self._clock = clock
        self._topic = topics.command_topic(prefix, box_id)
        self._result_topic = topics.command_result_topic(prefix, box_id)
        self._blob_topic = topics.command_blob_topic(prefix, box_id)
        self._inbox: queue.Queue[Inbound] = queue.Queue(INBOX_FRAMES)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._outbound: queue.Queue[_Out] = queue.Queue()
        self._unsent: list[_Out] = []  # the telemetry thread's: published in order
        self._thread: threading.Thread | None = None
        self.refused: Counter[str] = Counter()  # by reason code
        self.finished: Counter[str] = Counter()  # by state: succeeded, failed
        self.redelivered = 0
        self.dropped = 0

    # -- wiring ----------------------------------------------------------------------------------------
    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self._topic, 1)]

    def wants(self, topic: str) -> bool:
        return topic == self._topic

    def offer(self, message: Inbound) -> None:
        """paho's thread: queue only."""
        try:
            self._inbox.put_nowait(message)
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._finish_interrupted()
        self._thread = threading.Thread(target=self._work, name="commands", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(30)
        self._store.close()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    # -- the telemetry thread ----------------------------------------------------------------------------
    def pump(self, link: MqttLink) -> None:
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._on_frame(message.payload)
        while True:
            try:
                self._unsent.append(self._outbound.get_nowait())
            except queue.Empty:
                break
        while self._unsent and link.connected:
            out = self._unsent[0]
            if not link.publish(out.topic, out.body, qos=1):
                return  # down or stalled: the next round tries again
            self._unsent.pop(0)
            if out.command_id:
                self._store.mark_published(out.command_id, out.body)
            if out.then is not None:
                out.then()  # a restart of the edge: only once its result is on its way

    def _on_frame(self, frame: bytes) -> None:
        try:
            self._judge(frame)
        except CommandRefused as exc:
            self._refuse(exc)
        except AlreadyAccepted as exc:  # the store's own seq check: a replay that raced ours
            self._refuse(CommandRefused(Refusal.REPLAYED, str(exc)))
        except (GatewayError, ValueError) as exc:
            log.error("command frame not handled: %s", exc, extra={
                "MESSAGE_ID": MSG.COMMAND_REFUSED.value, "REASON": "error", "ERROR": str(exc)})
            self.refused["error"] += 1

    def _judge(self, frame: bytes) -> None:
        header = command_wire.peek(frame)
        keyring = self._current_keyring()
        stored = self._store.get(header.command_id)
        if stored is not None and stored.seq == header.seq:
            command_wire.verify_signature(frame, self._box, keyring)
            self._redelivered(header, stored.result)
            return
        header = command_wire.check(frame, self._box, keyring, self._clock(), self._store.last_seq())
        command = command_wire.open_frame(frame, header, self._box, self._private)
        args = command_args.parse(header, command.args)
        self._store.accept(header.command_id, header.seq, header.kind.value, self._clock())
        log.info("command %s accepted", header.kind.value, extra={
            "MESSAGE_ID": MSG.COMMAND_ACCEPTED.value, "COMMAND_ID": header.command_id, "SEQ": header.seq,
            "KIND": header.kind.value, "ISSUED_BY": command.issued_by})
        self._report(header, "received", "accepted")
        self._jobs.put(_Job(header, args))

    def _redelivered(self, header: Header, result: bytes | None) -> None:
        self.redelivered += 1
        log.info("command delivered again: answered with its stored result", extra={
            "MESSAGE_ID": MSG.COMMAND_REDELIVERED.value, "COMMAND_ID": header.command_id, "SEQ": header.seq})
        if result is not None:
            self._outbound.put(_Out(self._result_topic, result))

    def _refuse(self, exc: CommandRefused) -> None:
        reason = exc.refusal.value
        self.refused[reason] += 1
        log.warning("command refused (%s): %s", reason, exc.detail, extra={
            "MESSAGE_ID": MSG.COMMAND_REFUSED.value, "REASON": reason, "ERROR": exc.detail,
            "COMMAND_ID": exc.command_id or "", "SEQ": exc.seq or 0})
        body = schema.CommandResult(v=1, box_id=self._box, state="refused", at=round(self._clock(), 3),
                                    id=exc.command_id, seq=exc.seq, reason=reason, message=_text(exc.detail))
        self._outbound.put(_Out(self._result_topic, schema.encode(body)))

    def _current_keyring(self) -> AckKeyring | None:
        """``pki/command_keys.json``, read again whenever the file changed (provisioning, a renewal)."""
        try:
            mtime = self._keyring_file.stat().st_mtime
        except OSError:
            mtime = -1.0
        if self._keyring is None or self._keyring[0] != mtime:
            try:
                self._keyring = (mtime, command_keyring.load(self._keyring_file))
            except ConfigError as exc:
                log.error("command keyring unreadable: every command is refused", extra={
                    "MESSAGE_ID": MSG.COMMAND_KEYRING_REFUSED.value, "ERROR": str(exc)})
                self._keyring = (mtime, None)
        return self._keyring[1]

    # -- results -----------------------------------------------------------------------------------------
    def _report(self, header: Header, state: schema.CommandState, message: str,
                detail: dict[str, Any] | None = None, then: Callable[[], None] | None = None) -> bytes:
        body = schema.encode(schema.CommandResult(
            v=1, box_id=self._box, state=state, at=round(self._clock(), 3), id=header.command_id, seq=header.seq,
            kind=header.kind.value, message=_text(message), detail=detail or {}))
        self._store.record(header.command_id, state, body, self._clock())
        self._outbound.put(_Out(self._result_topic, body, then, header.command_id))
        return body

    def _finish_interrupted(self) -> None:
        """At start: publish what the last run stored but never sent, and finish (or resume on the
        worker, a configuration's health check) what it stopped during."""
        for stored in self._store.unpublished():
            if stored.result is not None:
                self._outbound.put(_Out(self._result_topic, stored.result, None, stored.id))
        for stored in self._store.unfinished():
            header = Header(b"", stored.seq, stored.accepted_at, stored.accepted_at, Kind(stored.kind), stored.id)
            if stored.kind == Kind.RESTART.value:
                self._finished(header, Outcome(True, "the edge restarted"))
            else:
                self._jobs.put(_Job(header, None))

    def _finished(self, header: Header, outcome: Outcome) -> None:
        state: schema.CommandState = "succeeded" if outcome.ok else "failed"
        for part in outcome.parts:
            self._outbound.put(_Out(self._blob_topic, part))
        self._report(header, state, outcome.message, outcome.detail,
                     None if outcome.then_at_once else outcome.then)
        self.finished[state] += 1
        log.log(logging.INFO if outcome.ok else logging.WARNING, "command %s %s", header.kind.value, state, extra={
            "MESSAGE_ID": MSG.COMMAND_FINISHED.value, "COMMAND_ID": header.command_id, "SEQ": header.seq,
            "KIND": header.kind.value, "STATE": state, "DETAIL": _text(outcome.message)})

    # -- the worker thread ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.header.kind in RUNNING_KINDS and job.args is not None:
                self._report(job.header, "running", "running")
            try:
                outcome = self._outcome(job)
            except Exception as exc:  # one command must never end the worker
                log.exception("command %s raised", job.header.kind.value)
                outcome = Outcome(False, f"{type(exc).__name__}: {exc}")
            try:
                if not outcome.final:
                    self._report(job.header, "running", outcome.message, outcome.detail,
                                 None if outcome.then_at_once else outcome.then)
                else:
                    self._finished(job.header, outcome)
                if outcome.then is not None and outcome.then_at_once:
                    outcome.then()
            except Exception:
                log.exception("command %s: result not recorded", job.header.kind.value)

    def _outcome(self, job: _Job) -> Outcome:
        if job.args is not None:
            return self._runner.run(job.header.command_id, job.args)
        resumed = self._runner.resume(job.header.command_id, job.header.kind)
        return resumed or Outcome(False, "interrupted: the edge stopped while the command waited or ran")

    # -- figures ----------------------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        return {"last_seq": self._store.last_seq(), "refused": sum(self.refused.values()),
                "succeeded": self.finished["succeeded"], "failed": self.finished["failed"]}


def _text(message: str) -> str:
    """A message fit for ``CommandResult.message``: no control characters, bounded."""
    return "".join(c if c.isprintable() else " " for c in message)[:MAX_MESSAGE_CHARS]
