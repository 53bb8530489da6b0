"""Automatic renewal of the box certificate before it expires (at ~2/3 of its lifetime).

The renewer makes a new key in the key store, sends a CSR to the enrolment
endpoint's ``simplereenroll`` under mutual TLS with the current certificate, and
swaps key and certificate in place; the MQTT link then presents the new identity
at its next connection. A crash mid-swap rolls forward at the next start
(``box.next`` key and ``box.next.pem`` are kept until both are in place).
Failures are logged and retried at the next check; the current certificate stays
in use until it expires. The renewal answer also carries the cloud's ack public keys
(current and, during a rotation, next): they replace ``pki/ack_keys.json``, which is
how a new ack key reaches boxes in the field (docs/protocol.md, key rotation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.adapters import blobs, enrolment_client
from gateway.adapters.keystore import KeyStore
from gateway.config import EdgeSettings
from gateway.core.errors import GatewayError
from gateway.edge import ack_keyring, command_keyring
from gateway.logs import MSG

log = logging.getLogger(__name__)
NEXT_KEY = "box.next"


def renewal_due(not_before: float, not_after: float, now: float, fraction: float) -> bool:
    """True once ``fraction`` of the certificate's lifetime has passed."""
    return now >= not_before + (not_after - not_before) * fraction


class Renewer:
    def __init__(self, settings: EdgeSettings, keystore: KeyStore, on_renewed: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, keyring_file: Path | None = None) -> None:
        self.settings = settings
        self.keyring_file = keyring_file
        self.keystore = keystore
        self.on_renewed = on_renewed
        self._clock = clock
        self.cert_path = Path(settings.mqtt.cert_file or "box.pem")
        self.next_cert = self.cert_path.with_name(self.cert_path.stem + ".next.pem")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.enrolment.url and s.enrolment.ca_fingerprint and s.mqtt.cert_file and s.mqtt.key_file)

    def roll_forward(self) -> None:
        """Finish a swap a crash interrupted: the new certificate exists, so its key does too."""
        if not self.next_cert.exists():
            return
        if self.keystore.exists(NEXT_KEY):
            self.keystore.replace(NEXT_KEY, "box")
        blobs.adopt_atomic(self.next_cert, self.cert_path)

    def check(self) -> bool:
        """Renew if due; True when a new certificate was installed."""
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        if not renewal_due(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                           self._clock(), self.settings.enrolment.renew_at_fraction):
            return False
        self.renew()
        return True

    def renew(self) -> None:
        s = self.settings
        ca_pem = Path(s.mqtt.ca_file).read_bytes()
        self.keystore.generate_ec(NEXT_KEY)
        answer = enrolment_client.reenrol(s.enrolment.url, ca_pem, self.cert_path, Path(s.mqtt.key_file),
                                          self.keystore.csr(NEXT_KEY, s.box.id))
        new = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        key = serialization.load_pem_private_key(self.keystore.path(NEXT_KEY).read_bytes(), None)
        if new.public_key() != key.public_key():
            raise enrolment_client.EnrolmentError("renewed certificate is not for the key this box generated")
        new.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        blobs.write_atomic(self.next_cert, new.public_bytes(serialization.Encoding.PEM), mode=0o644)
        self.roll_forward()
        log.info("box certificate renewed", extra={
            "MESSAGE_ID": MSG.CERT_RENEWED.value, "BOX_ID": s.box.id,
            "NOT_AFTER": int(new.not_valid_after_utc.timestamp())})
        if self.keyring_file is not None:
            ack_keyring.install_from_answer(self.keyring_file, answer)
            command_keyring.install_from_answer(command_keyring.keyring_path(self.keyring_file.parent.parent), answer)
        self.on_renewed()

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            return
        self.roll_forward()
        self._thread = threading.Thread(target=self._run, name="renewal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except (GatewayError, OSError, ValueError, KeyError) as exc:
                log.warning("certificate renewal failed; retrying at the next check", extra={
                    "MESSAGE_ID": MSG.CERT_RENEWAL_FAILED.value, "ERROR": str(exc)})
            if self._stop.wait(self.settings.enrolment.check_interval_s):
                return
