"""Certificate renewal on the box (gateway/edge/renewal.py): when it is due, and how an
interrupted swap of key and certificate is finished at the next start (real key store, real files)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.adapters.keystore import FileKeyStore
from gateway.edge.renewal import NEXT_KEY, Renewer, renewal_due
from tests.edge.conftest import Box

MakeBox = Callable[..., Box]
DAY = 86400.0


def _certificate(path: Path, not_before: float, not_after: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit-box")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(not_before, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.UTC))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _renewer(box: Box) -> tuple[Renewer, FileKeyStore]:
    keys = FileKeyStore(box.paths.state_dir / "keys")
    return Renewer(box.settings, keys, clock=box.clock), keys


def _box(make_box: MakeBox, tmp_path: Path) -> Box:
    return make_box(mqtt={"cert_file": str(tmp_path / "pki" / "box.pem"),
                          "key_file": str(tmp_path / "keys" / "box.key")})


def test_renewal_is_due_once_the_fraction_of_the_lifetime_has_passed_and_not_before() -> None:
    assert not renewal_due(0.0, 90 * DAY, 60 * DAY - 1, 2 / 3)
    assert renewal_due(0.0, 90 * DAY, 60 * DAY, 2 / 3)
    assert renewal_due(0.0, 90 * DAY, 200 * DAY, 2 / 3)  # expired: all the more
    assert renewal_due(10 * DAY, 20 * DAY, 10 * DAY, 0.0)


def test_check_leaves_a_young_certificate_alone_when_it_is_not_due(make_box: MakeBox, tmp_path: Path) -> None:
    box = _box(make_box, tmp_path)
    renewer, keys = _renewer(box)
    renewer.cert_path.parent.mkdir(parents=True)
    _certificate(renewer.cert_path, box.clock() - DAY, box.clock() + 89 * DAY)
    before = renewer.cert_path.read_bytes()
    assert renewer.check() is False  # no enrolment endpoint was needed to decide
    assert renewer.cert_path.read_bytes() == before and not keys.exists(NEXT_KEY)


def test_interrupted_swap_is_finished_when_the_new_certificate_and_key_were_both_kept(
        make_box: MakeBox, tmp_path: Path) -> None:
    box = _box(make_box, tmp_path)
    renewer, keys = _renewer(box)
    renewer.cert_path.parent.mkdir(parents=True)
    _certificate(renewer.cert_path, box.clock() - 80 * DAY, box.clock() + 10 * DAY)
    keys.generate_ec("box")
    keys.generate_ec(NEXT_KEY)
    new_key = keys.path(NEXT_KEY).read_bytes()
    _certificate(renewer.next_cert, box.clock(), box.clock() + 90 * DAY)  # the crash came after this
    new_cert = renewer.next_cert.read_bytes()
    renewer.roll_forward()
    assert keys.path("box").read_bytes() == new_key and not keys.exists(NEXT_KEY)
    assert renewer.cert_path.read_bytes() == new_cert and not renewer.next_cert.exists()


def test_interrupted_swap_installs_the_certificate_when_the_key_had_already_moved(
        make_box: MakeBox, tmp_path: Path) -> None:
    box = _box(make_box, tmp_path)
    renewer, keys = _renewer(box)
    renewer.cert_path.parent.mkdir(parents=True)
    _certificate(renewer.cert_path, box.clock() - 80 * DAY, box.clock() + 10 * DAY)
    keys.generate_ec("box")  # already the new key: the crash came between the two renames
    moved_key = keys.path("box").read_bytes()
    _certificate(renewer.next_cert, box.clock(), box.clock() + 90 * DAY)
    new_cert = renewer.next_cert.read_bytes()
    renewer.roll_forward()
    assert keys.path("box").read_bytes() == moved_key
    assert renewer.cert_path.read_bytes() == new_cert and not renewer.next_cert.exists()


def test_current_key_and_certificate_stay_when_the_renewal_stopped_before_a_certificate_came(
        make_box: MakeBox, tmp_path: Path) -> None:
    box = _box(make_box, tmp_path)
    renewer, keys = _renewer(box)
    renewer.cert_path.parent.mkdir(parents=True)
    _certificate(renewer.cert_path, box.clock() - 80 * DAY, box.clock() + 10 * DAY)
    keys.generate_ec("box")
    keys.generate_ec(NEXT_KEY)  # made, sent in a CSR, no answer yet
    current_key, current_cert = keys.path("box").read_bytes(), renewer.cert_path.read_bytes()
    renewer.roll_forward()
    assert keys.path("box").read_bytes() == current_key  # the certificate in use still matches its key
    assert renewer.cert_path.read_bytes() == current_cert
