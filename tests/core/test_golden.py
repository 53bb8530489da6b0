"""Golden bytes that freeze wire format v2 (after pynetdicom's ``encoded_pdu_items.py``).

The vectors in ``tests/core/golden/`` were sealed once from the FIXED inputs below and are
annotated field by field. The tests recompute them and compare byte for byte, and check that
the stored frames still open with the fixed cloud key. A failure here means the wire format
changed: an edge and a cloud of different versions would no longer understand each other.
That needs a new WIRE_VERSION, not new golden files.

docs/protocol.md (Test vectors) prints the same fixed inputs and the expected hex in
``vector`` blocks; a test parses them out of the page and recomputes every value, so the
page cannot drift from the code. ``--doc`` prints those blocks.

``chunk_v1.txt`` and ``ack_v1.txt`` are frozen frames of the retired version 1 (HMAC acks):
they are kept, never regenerated, to prove both ends refuse them with
``UnsupportedVersionError``.

The files are never rewritten by the tests. To regenerate them on purpose::

    python -m tests.core.test_golden --regenerate

zstd output may differ between zstandard versions (the format is stable, the encoder is not),
so the ZSTD vector only has to OPEN to the payload (decoder compatibility); the IDENTITY vector
and the acks are fully deterministic and must match exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

from gateway.core.acksig import AckKeyring, AckSigner, sign_util_ack, util_ack_message
from gateway.core.codec import Codec
from gateway.core.envelope import public_key_of, unwrap_data_key
from gateway.core.errors import UnsupportedVersionError
from gateway.core.framing import (
    ACK_MAGIC,
    CHUNK_HEADER_BYTES,
    CHUNK_MAGIC,
    MAX_FRAME_BYTES,
    MIN_FRAME_BYTES,
    WIRE_VERSION,
    AckFrame,
    AckKind,
    RejectReason,
    parse_ack,
    parse_chunk,
)
from gateway.core.instance import InstanceIdentity
from gateway.core.transfer import Manifest, ObjectKeys, open_object, seal_object, unwrap_key

GOLDEN_DIR = Path(__file__).parent / "golden"
CHUNK_FILE = GOLDEN_DIR / "chunk_v2.txt"
CHUNK_ZSTD_FILE = GOLDEN_DIR / "chunk_zstd_v2.txt"
ACK_FILE = GOLDEN_DIR / "ack_v2.txt"
LEGACY_CHUNK_V1 = GOLDEN_DIR / "chunk_v1.txt"
LEGACY_ACK_V1 = GOLDEN_DIR / "ack_v1.txt"
PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
REGENERATE = "python -m tests.core.test_golden --regenerate"

# --- the fixed inputs (never change them: the golden files are derived from them) ---------

BOX_ID = "golden-box"
CLOUD_PRIVATE = bytes(range(0x00, 0x20))
EPH_PRIVATE = bytes(range(0x20, 0x40))
DATA_KEY = bytes(range(0x40, 0x60))
ACK_KEY = bytes(range(0x60, 0x80))  # the cloud's Ed25519 ack signing key (seed), current
NEXT_ACK_KEY = bytes(range(0x80, 0xA0))  # the next key of a rotation
STUDY_KEY = "3f9c0e4d1b2a5f6e7d8c9b0a1f2e3d4c"
REVISION = 3
TRANSFER_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
PAYLOAD = b"".join(b"golden payload line %03d\n" % i for i in range(44))  # 1056 bytes
ZSTD_LEVEL = 3
FRAME_BYTES = MIN_FRAME_BYTES  # 1024 payload bytes per frame: the IDENTITY vector has two payload chunks


def golden_manifest(codec: Codec) -> Manifest:
    identity = InstanceIdentity(
        size=len(PAYLOAD),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.10",
        study_instance_uid="1.2.826.0.1.3680043.8.498.11",
        series_instance_uid="1.2.826.0.1.3680043.8.498.12",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    return Manifest(identity, codec=int(codec), item_id=1)


def golden_keys() -> ObjectKeys:
    return ObjectKeys.create(public_key_of(CLOUD_PRIVATE), TRANSFER_ID, DATA_KEY, EPH_PRIVATE)


def seal_golden(codec: Codec) -> list[bytes]:
    frames = seal_object(BOX_ID, golden_keys(), golden_manifest(codec), [PAYLOAD], FRAME_BYTES, ZSTD_LEVEL)
    return list(frames)


def golden_acks() -> dict[str, AckFrame]:
    return {
        "ack PROGRESS": AckFrame(AckKind.PROGRESS, TRANSFER_ID, ((0, 3), (5, 6))),
        "ack STORED": AckFrame(AckKind.STORED, TRANSFER_ID, ((0, 3),), hashlib.sha256(PAYLOAD).digest()),
        "ack REJECTED": AckFrame(AckKind.REJECTED, TRANSFER_ID, (), reason=RejectReason.INTEGRITY),
    }


def golden_keyring() -> AckKeyring:
    return AckKeyring((AckSigner(ACK_KEY).public, AckSigner(NEXT_ACK_KEY).public))


def encode_golden_acks() -> dict[str, bytes]:
    signer = AckSigner(ACK_KEY)
    return {name: ack.encode(BOX_ID, signer) for name, ack in golden_acks().items()}


# --- the annotated text format ------------------------------------------------------------
# "[name]" starts a vector; other lines are hex bytes, and everything after '#' is a comment.
# Only the hex is compared, so comments may be improved by hand.


def read_text(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it deliberately with: {REGENERATE}")
    return path.read_text(encoding="ascii")


def read_vectors(path: Path) -> dict[str, bytes]:
    vectors: dict[str, bytearray] = {}
    current = None
    for number, raw in enumerate(read_text(path).splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            vectors[current] = bytearray()
        elif current is None:
            raise AssertionError(f"{path}:{number}: hex before the first [section]")
        else:
            vectors[current] += bytes.fromhex(line)
    return {name: bytes(data) for name, data in vectors.items()}


def hex_lines(data: bytes, comment: str) -> list[str]:
    rows = [data[i:i + 16] for i in range(0, len(data), 16)] or [b""]
    out = []
    for index, row in enumerate(rows):
        text = " ".join(f"{b:02x}" for b in row).ljust(48)
        out.append(f"{text}  # {comment}" if index == 0 else text.rstrip())
    return out


def field(offset: int, length: int, name: str) -> str:
    return f"{offset:<5} {length:>4}  {name}"


def annotate_chunk(frame: bytes, what: str) -> list[str]:
    parsed = parse_chunk(frame)
    seq_name = "sealed manifest" if parsed.seq == 0 else "payload piece"
    flags = "FINAL set: last chunk of the object" if parsed.final else "FINAL clear"
    body = len(frame) - CHUNK_HEADER_BYTES - 16
    rows = [
        (0, 4, 'magic "MGWC"'),
        (4, 1, f"version {frame[4]}"),
        (5, 1, f"flags: {flags}"),
        (6, 2, "reserved, zero"),
        (8, 16, "transfer id"),
        (24, 4, f"seq {parsed.seq} ({seq_name})"),
        (28, 32, "ephemeral X25519 public key"),
        (60, 48, "wrapped data key: AES-256-GCM(KEK, data key) || tag"),
        (108, body, f"ciphertext: AES-256-GCM(data key, nonce 0^4 || seq u64, {what})"),
        (108 + body, 16, "GCM tag; AAD = b'mgw/v1 chunk' || u16 len(box id) || box id || bytes 0..107"),
    ]
    lines = []
    for offset, length, name in rows:
        lines += hex_lines(frame[offset:offset + length], field(offset, length, name))
    return lines


def annotate_ack(frame: bytes, ack: AckFrame) -> list[str]:
    rows = [
        (0, 4, 'magic "MGWA"'),
        (4, 1, f"version {frame[4]}"),
        (5, 1, f"kind {ack.kind.name}"),
        (6, 2, f"reason {ack.reason.name}"),
        (8, 16, "transfer id"),
        (24, 8, "key id: SHA-256(ack public key)[:8]"),
        (32, 2, f"n = {len(ack.ranges)} ranges"),
    ]
    offset = 34
    for start, stop in ack.ranges:
        rows.append((offset, 8, f"range: start u32 {start}, stop u32 {stop} (exclusive)"))
        offset += 8
    if ack.kind is AckKind.STORED:
        rows.append((offset, 32, "SHA-256 of the original object"))
        offset += 32
    rows.append((offset, 64, "Ed25519(ack key, b'mgw/v2 ack' || u16 len(box id) || box id || bytes above)"))
    lines = []
    for start, length, name in rows:
        lines += hex_lines(frame[start:start + length], field(start, length, name))
    return lines


def inputs_comment() -> list[str]:
    keys = golden_keys()
    return [
        "# Fixed inputs (tests/core/test_golden.py):",
        f"#   box id           {BOX_ID}",
        f"#   cloud private    {CLOUD_PRIVATE.hex()}",
        f"#   cloud public     {public_key_of(CLOUD_PRIVATE).hex()}",
        f"#   eph private      {EPH_PRIVATE.hex()}",
        f"#   eph public       {keys.eph_public.hex()}",
        f"#   data key         {DATA_KEY.hex()}",
        f"#   ack key (seed)   {ACK_KEY.hex()}  (Ed25519, the cloud's; never on a box)",
        f"#   ack public key   {AckSigner(ACK_KEY).public.hex()}",
        f"#   ack key id       {AckSigner(ACK_KEY).key_id.hex()}  (SHA-256 of the public key, first 8 bytes)",
        f"#   transfer id      {TRANSFER_ID.hex()}",
        f"#   payload          {len(PAYLOAD)} bytes, sha256 {hashlib.sha256(PAYLOAD).hexdigest()}",
        f"#   max_frame_bytes  {FRAME_BYTES} (MIN_FRAME_BYTES), zstd level {ZSTD_LEVEL}",
        "# Offsets are decimal, within the frame. All integers are big-endian.",
    ]


def render_chunks(codec: Codec, note: str) -> str:
    frames = seal_golden(codec)
    manifest = golden_manifest(codec).encode().decode()
    lines = [
        f"# Wire format v{WIRE_VERSION} golden vector: the chunk frames of one object, codec {codec.name}.",
        f"# {note}",
        f"# Written by: {REGENERATE}. Do not edit the hex by hand.",
        "#",
        *inputs_comment(),
        f"#   manifest (seq 0) {manifest}",
    ]
    for index, frame in enumerate(frames):
        what = "the manifest JSON" if index == 0 else f"{codec.name} stream piece"
        lines += ["", f"[frame {index}]", *annotate_chunk(frame, what)]
    return "\n".join(lines) + "\n"


def render_acks() -> str:
    frames = encode_golden_acks()
    lines = [
        f"# Wire format v{WIRE_VERSION} golden vector: acknowledgement frames (cloud -> edge).",
        "# Exact bytes: the acks are fully deterministic and the test compares them byte for byte.",
        f"# Written by: {REGENERATE}. Do not edit the hex by hand.",
        "#",
        *inputs_comment(),
    ]
    for name, ack in golden_acks().items():
        lines += ["", f"[{name}]", *annotate_ack(frames[name], ack)]
    return "\n".join(lines) + "\n"


def regenerate() -> list[Path]:
    GOLDEN_DIR.mkdir(exist_ok=True)
    CHUNK_FILE.write_text(
        render_chunks(Codec.IDENTITY, "Exact bytes: the test recomputes these and compares them byte for byte."),
        encoding="ascii",
    )
    CHUNK_ZSTD_FILE.write_text(
        render_chunks(Codec.ZSTD, "Decoder check only: the test asserts these open to the payload, as zstd "
                      "encoders may differ."),
        encoding="ascii",
    )
    ACK_FILE.write_text(render_acks(), encoding="ascii")
    return [CHUNK_FILE, CHUNK_ZSTD_FILE, ACK_FILE]


# --- the tests ----------------------------------------------------------------------------


def first_difference(expected: bytes, actual: bytes) -> str:
    for offset, (a, b) in enumerate(zip(expected, actual)):
        if a != b:
            return f"first difference at offset {offset}: golden {a:#04x}, now {b:#04x}"
    return f"lengths differ: golden {len(expected)}, now {len(actual)}"


def open_vectors(frames: list[bytes]) -> tuple[Manifest, bytes]:
    parsed = [parse_chunk(frame) for frame in frames]
    data_key = unwrap_key(CLOUD_PRIVATE, parsed[0])
    it = open_object(BOX_ID, data_key, parsed, MAX_FRAME_BYTES * 16)
    manifest = next(it)
    assert isinstance(manifest, Manifest)
    return manifest, b"".join(piece for piece in it if isinstance(piece, bytes))


def test_wire_constants_are_unchanged_when_the_format_is_v2() -> None:
    assert (WIRE_VERSION, CHUNK_MAGIC, ACK_MAGIC) == (2, b"MGWC", b"MGWA")
    assert (CHUNK_HEADER_BYTES, MIN_FRAME_BYTES, MAX_FRAME_BYTES) == (108, 1148, 131072)


def test_identity_chunk_frames_match_the_golden_bytes_when_sealed_from_the_fixed_inputs() -> None:
    golden = read_vectors(CHUNK_FILE)
    now = {f"frame {index}": frame for index, frame in enumerate(seal_golden(Codec.IDENTITY))}
    assert list(golden) == list(now) == ["frame 0", "frame 1", "frame 2"]
    for name, frame in now.items():
        assert frame == golden[name], f"{CHUNK_FILE.name} [{name}]: {first_difference(golden[name], frame)}"


def test_ack_frames_match_the_golden_bytes_when_encoded_from_the_fixed_inputs() -> None:
    golden = read_vectors(ACK_FILE)
    now = encode_golden_acks()
    assert list(golden) == list(now)
    for name, frame in now.items():
        assert frame == golden[name], f"{ACK_FILE.name} [{name}]: {first_difference(golden[name], frame)}"


@pytest.mark.parametrize(
    "path, codec", [(CHUNK_FILE, Codec.IDENTITY), (CHUNK_ZSTD_FILE, Codec.ZSTD)], ids=["IDENTITY", "ZSTD"]
)
def test_golden_chunk_frames_open_to_the_payload_when_given_the_fixed_cloud_key(path: Path, codec: Codec) -> None:
    frames = list(read_vectors(path).values())
    manifest, payload = open_vectors(frames)
    assert payload == PAYLOAD
    assert manifest == golden_manifest(codec)


def test_golden_chunk_headers_decode_to_the_fixed_inputs_when_parsed() -> None:
    frames = [parse_chunk(frame) for frame in read_vectors(CHUNK_FILE).values()]
    assert [(f.seq, f.final) for f in frames] == [(0, False), (1, False), (2, True)]
    assert {f.transfer_id for f in frames} == {TRANSFER_ID}
    assert {f.eph_public for f in frames} == {public_key_of(EPH_PRIVATE)}
    assert unwrap_data_key(CLOUD_PRIVATE, frames[0].eph_public, frames[0].wrapped_key, TRANSFER_ID) == DATA_KEY
    assert len(frames[1].ciphertext) == FRAME_BYTES - CHUNK_HEADER_BYTES


def test_golden_acks_parse_to_the_fixed_acks_when_given_the_fixed_key() -> None:
    golden = read_vectors(ACK_FILE)
    for name, ack in golden_acks().items():
        assert parse_ack(golden[name], BOX_ID, golden_keyring()) == ack


def test_golden_files_are_annotated_when_read_as_text() -> None:
    """The files are documentation too: each header field is named next to its bytes."""
    chunk_text = read_text(CHUNK_FILE)
    for label in ('magic "MGWC"', "transfer id", "seq 0", "ephemeral X25519 public key", "wrapped data key", "GCM tag"):
        assert label in chunk_text
    ack_text = read_text(ACK_FILE)
    for label in ('magic "MGWA"', "kind STORED", "reason INTEGRITY", "key id", "Ed25519"):
        assert label in ack_text


def test_v1_frames_are_refused_with_unsupported_version_error_when_parsed() -> None:
    """The retired version's real frames: the cloud refuses the chunks, the edge the acks,
    each with the error of its own that a dead-letter route can pick out."""
    for frame in read_vectors(LEGACY_CHUNK_V1).values():
        with pytest.raises(UnsupportedVersionError) as caught:
            parse_chunk(frame)
        assert caught.value.version == 1
    for frame in read_vectors(LEGACY_ACK_V1).values():
        with pytest.raises(UnsupportedVersionError):
            parse_ack(frame, BOX_ID, golden_keyring())


# --- the vectors printed in docs/protocol.md ---------------------------------------------------

DOC_BLOCK = re.compile(r"^```vector\n(.*?)^```", re.S | re.M)


def doc_vectors() -> dict[str, dict[str, str]]:
    """Every ```vector block of docs/protocol.md: 'name' and 'key: value' lines; a line that
    starts with spaces continues the previous value (hex is compared without spaces)."""
    blocks: dict[str, dict[str, str]] = {}
    for body in DOC_BLOCK.findall(PROTOCOL_DOC.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        last = ""
        for line in body.splitlines():
            if line.startswith(" ") and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                last, value = (part.strip() for part in line.split(":", 1))
                fields[last] = value
        blocks[fields.pop("vector")] = fields
    return blocks


def computed_doc_vectors() -> dict[str, dict[str, str]]:
    """The same values, from the fixed inputs and the code."""
    current, nxt = AckSigner(ACK_KEY), AckSigner(NEXT_ACK_KEY)
    acks = encode_golden_acks()
    chunks = seal_golden(Codec.IDENTITY)
    util = sign_util_ack(current, BOX_ID, STUDY_KEY, REVISION)
    return {
        "ack keys": {"box id": BOX_ID, "ack key": ACK_KEY.hex(), "public key": current.public.hex(),
                     "key id": current.key_id.hex(), "next ack key": NEXT_ACK_KEY.hex(),
                     "next public key": nxt.public.hex(), "next key id": nxt.key_id.hex(),
                     "keyring": json.dumps(golden_keyring().to_doc(), separators=(",", ":"))},
        **{name: {"frame": frame.hex(), "signature": frame[-64:].hex()} for name, frame in acks.items()},
        "util ack": {"study key": STUDY_KEY, "revision": str(REVISION),
                     "signed": util_ack_message(BOX_ID, STUDY_KEY, REVISION).hex(),
                     "json": json.dumps(util, separators=(",", ":"))},
        "chunk frame 0": {"cloud private": CLOUD_PRIVATE.hex(), "eph private": EPH_PRIVATE.hex(),
                          "data key": DATA_KEY.hex(), "transfer id": TRANSFER_ID.hex(),
                          "manifest": golden_manifest(Codec.IDENTITY).encode().decode(),
                          "header": chunks[0][:CHUNK_HEADER_BYTES].hex(),
                          "sha256 of frames": " ".join(hashlib.sha256(f).hexdigest() for f in chunks)},
    }


def render_doc_vectors() -> str:
    out = []
    for name, fields in computed_doc_vectors().items():
        lines = [f"vector: {name}"]
        for key, value in fields.items():
            if key in ("keyring", "json", "manifest") or len(value) <= 64:
                lines.append(f"{key}: {value}")
            else:
                words = value.split(" ") if " " in value else [value[i:i + 64] for i in range(0, len(value), 64)]
                lines += [f"{key}: {words[0]}", *(f"  {w}" for w in words[1:])]
        out.append("```vector\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(out)


def _normal(key: str, value: str) -> str:
    return value if key in ("keyring", "json", "manifest", "box id", "study key", "revision") \
        else value.replace(" ", "")


def test_protocol_doc_vectors_match_the_code_when_recomputed_from_the_fixed_inputs() -> None:
    documented, now = doc_vectors(), computed_doc_vectors()
    assert list(documented) == list(now), "docs/protocol.md: the vector blocks differ from the set the code makes"
    for name, fields in now.items():
        for key, value in fields.items():
            assert key in documented[name], f"docs/protocol.md [{name}] lacks '{key}'"
            assert _normal(key, documented[name][key]) == _normal(key, value), \
                f"docs/protocol.md [{name}] '{key}' differs from the code; print the blocks with --doc"


def test_protocol_doc_ack_frames_verify_when_parsed_with_the_documented_keyring() -> None:
    """The page alone is enough: its keyring JSON verifies its frames."""
    documented = doc_vectors()
    keyring = AckKeyring.from_doc(json.loads(documented["ack keys"]["keyring"]))
    for name, ack in golden_acks().items():
        assert parse_ack(bytes.fromhex(_normal("frame", documented[name]["frame"])), BOX_ID, keyring) == ack


if __name__ == "__main__":
    if sys.argv[1:] == ["--doc"]:
        print(render_doc_vectors())
        sys.exit(0)
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE} | --doc\n(rewrites {GOLDEN_DIR}/*_v{WIRE_VERSION}.txt; only for a deliberate "
                 "format change. --doc prints the vector blocks of docs/protocol.md)")
    for written in regenerate():
        print(f"wrote {written}")
