"""A console request's JSON body, parsed into typed values at the boundary. No web framework.

The console's ``Guard`` reads at most ``MAX_BODY_BYTES`` of a POST (counting the bytes that
arrive, never trusting Content-Length) and only as ``application/json``; ``Body`` then takes the
bytes: one JSON object, no unknown, repeated or mistyped member, text within its length, numbers
finite and in range. Anything else is ``RequestError`` (400) naming the member and the rule.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from gateway.core.errors import RequestError

MAX_BODY_BYTES = 16 * 1024


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(f"member {key[:40]!r} given twice")
        out[key] = value
    return out


def _finite(text: str) -> float:
    raise RequestError(f"{text} is not a number")


class Body:
    """One JSON object; each member read once by the route, as the type the route needs."""

    def __init__(self, raw: bytes, allowed: Iterable[str]) -> None:
        try:
            doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeats, parse_constant=_finite)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RequestError(f"the body is not a JSON document ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise RequestError("the body must be a JSON object")
        names = set(allowed)
        for key in doc:
            if key not in names:
                raise RequestError(f"unknown member {key[:40]!r}")
        self.doc: dict[str, Any] = doc

    def text(self, name: str, limit: int, *, required: bool = False, pattern: re.Pattern[str] | None = None) -> str:
        value = self.doc.get(name, "")
        if not isinstance(value, str):
            raise RequestError(f"{name!r} must be a string")
        if required and not value.strip():
            raise RequestError(f"{name!r} is required")
        if len(value) > limit:
            raise RequestError(f"{name!r} is longer than {limit} characters")
        if value and pattern is not None and not pattern.fullmatch(value):
            raise RequestError(f"{name!r} must match {pattern.pattern}")
        return value

    def number(self, name: str, low: float, high: float, *, required: bool = False) -> float | None:
        value = self.doc.get(name)
        if value is None:
            if required:
                raise RequestError(f"{name!r} is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestError(f"{name!r} must be a number")
        if not low <= value <= high:
            raise RequestError(f"{name!r} must be in [{low:g}, {high:g}]")
        return float(value)

    def strings(self, name: str, pattern: re.Pattern[str], max_items: int = 100) -> list[str]:
        value = self.doc.get(name, [])
        if not isinstance(value, list) or len(value) > max_items or not all(isinstance(v, str) for v in value):
            raise RequestError(f"{name!r} must be a list of at most {max_items} strings")
        for v in value:
            if not pattern.fullmatch(v):
                raise RequestError(f"{name!r}: {v[:40]!r} must match {pattern.pattern}")
        return list(value)
