"""The one error tree of the gateway.

``PeerError`` means the other side (modality, broker, cloud, a box) broke the
contract; ``LocalError`` means our configuration, resources or caller did.
Bugs stay ``AssertionError``: the top level logs them and exits non-zero.
Adapters translate library exceptions into these with ``raise ... from exc``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class PeerError(GatewayError):
    """The remote side sent something that breaks the protocol."""


class FrameError(PeerError):
    """Bytes on the wire are not a well-formed frame of a known version."""


class WorklistRefused(FrameError):
    """A well-formed worklist status the box may not send: a ref not routed to it, or unknown."""


class CommandReplyRefused(FrameError):
    """A well-formed command result or blob part the box may not send: not a command of that box."""


class UnsupportedVersionError(FrameError):
    """A well-formed frame of a wire version we no longer (or do not yet) speak.

    Distinct from other ``FrameError``s so that a refusal of an old box's frames can
    be routed and counted on its own (``version`` is the byte the frame carries).
    """

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class KeyringError(PeerError):
    """A set of trusted acknowledgement keys that does not parse, or keys that are not Ed25519."""


class DatasetStructureError(PeerError):
    """The modality sent bytes that are not one complete, well-formed DICOM dataset."""


class DatasetLimitError(DatasetStructureError):
    """A dataset would cost more to read than the reader allows (inflated size, elements, depth, time)."""


class InstanceMismatchError(DatasetStructureError):
    """A well-formed dataset that is not the instance its C-STORE command names (no SOP Instance
    UID, or another one, or another SOP Class); ``status`` is the DIMSE status that refuses it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class EnvelopeTamperedError(PeerError):
    """Authentication of sealed data failed: altered, replayed, swapped or wrong key."""


class UnexpectedAckError(PeerError):
    """An acknowledgement that does not match anything we sent, or whose signature fails."""


class IntegrityError(PeerError):
    """A restored object does not match the hash or size its manifest promised."""


class CodecError(IntegrityError):
    """A compressed payload is corrupt, truncated, or uses a codec we do not know."""


class LocalError(GatewayError):
    """Our configuration, resources or caller are at fault."""


class ConfigError(LocalError):
    """A configuration file is missing, unreadable or invalid (names file and key)."""


class SpoolFullError(LocalError):
    """The spool is above its high-water mark; the modality must retry later."""


class StorageError(LocalError):
    """The disk or database failed underneath us."""


class PortInUseError(LocalError):
    """A port picked free was taken by someone else before the process given it could bind it."""


class IllegalTransitionError(LocalError):
    """A state machine was asked to take a transition its table does not allow."""


class AlertRequestError(LocalError):
    """A request about alerts the caller got wrong: an unknown alert, no name given, a silence
    that would match everything, a window that ends before it starts."""


class RequestError(PeerError):
    """An HTTP client's request is malformed or out of range (the console answers 400 with this reason)."""


class AccountError(LocalError):
    """A console account or API token request the caller got wrong: an unknown or taken name, a weak
    password, a role or site that is not one (the console answers 400, the CLI exits 1)."""
