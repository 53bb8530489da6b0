"""Password hashes with Argon2id (argon2-cffi). Only importer of argon2.

``hash_password`` makes a PHC string (``$argon2id$v=19$m=...``) with argon2-cffi's default
parameters (RFC 9106's low-memory profile); ``verify`` says whether a password matches a stored
hash and never raises for a wrong or malformed one; ``needs_rehash`` says whether a stored hash
was made with weaker parameters than today's (the caller re-hashes after a good login).

``verify_unknown`` spends the time of one verification on a dummy hash: a login for an account
that does not exist (or is disabled) takes as long as one with a wrong password, so account
names cannot be probed by timing.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@functools.cache
def _dummy() -> str:
    return _HASHER.hash(secrets.token_urlsafe(24))


def verify_unknown(password: str) -> bool:
    """As long as ``verify`` takes, and always False."""
    verify(_dummy(), password)
    return False
