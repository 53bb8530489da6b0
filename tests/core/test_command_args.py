"""core.command_args: a command runs only with the arguments its kind takes, as typed values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import command_args as ca
from gateway.core.command_wire import CommandRefused, Header, Kind, Refusal


def _header(kind: Kind) -> Header:
    return Header(b"k" * 8, 7, 0.0, 60.0, kind, "ab" * 16)


def _bad(kind: Kind, args: dict[str, Any]) -> str:
    with pytest.raises(CommandRefused) as caught:
        ca.parse(_header(kind), args)
    assert caught.value.refusal is Refusal.BAD_ARGS and caught.value.seq == 7
    return caught.value.detail


def test_arguments_parse_into_typed_values_when_they_are_what_the_kind_takes() -> None:
    assert ca.parse(_header(Kind.ECHO), {}) == ca.Echo()
    assert ca.parse(_header(Kind.BUNDLE), {}) == ca.Bundle(ca.DEFAULT_LOG_LINES)
    assert ca.parse(_header(Kind.BUNDLE), {"log_lines": 20000}) == ca.Bundle(20000)
    assert ca.parse(_header(Kind.RESEND), {"study_instance_uid": "1.2.840.1"}) == ca.Resend("1.2.840.1", None)
    assert ca.parse(_header(Kind.RESEND), {"accession": "ACC 1"}) == ca.Resend(None, "ACC 1")
    assert ca.parse(_header(Kind.QUARANTINE), {"action": "list"}) == ca.Quarantine("list", None)
    assert ca.parse(_header(Kind.QUARANTINE), {"action": "drop", "item": 3}) == ca.Quarantine("drop", 3)
    assert ca.parse(_header(Kind.CONFIG), {"version": 2, "document": ""}) == ca.Config(2, "")
    assert ca.parse(_header(Kind.RESTART), {"service": "edge"}) == ca.Restart("edge")
    assert ca.parse(_header(Kind.UPDATE), {"url": "https://x/y.raucb", "sha256": "0" * 64, "version": "1.2.3"}) \
        == ca.Update("https://x/y.raucb", "0" * 64, "1.2.3")


def test_arguments_are_refused_with_the_key_named_when_missing_extra_mistyped_or_out_of_range() -> None:
    assert "unknown argument 'x'" in _bad(Kind.ECHO, {"x": 1})
    assert "'log_lines'" in _bad(Kind.BUNDLE, {"log_lines": 0})
    assert "'log_lines'" in _bad(Kind.BUNDLE, {"log_lines": True})  # a bool is not a count
    assert "exactly one" in _bad(Kind.RESEND, {})
    assert "exactly one" in _bad(Kind.RESEND, {"study_instance_uid": "1.2", "accession": "A"})
    assert "'study_instance_uid'" in _bad(Kind.RESEND, {"study_instance_uid": "1.2.x"})
    assert "'accession'" in _bad(Kind.RESEND, {"accession": "a\nb"})
    assert "'action'" in _bad(Kind.QUARANTINE, {"action": "purge"})
    assert "missing argument 'item'" in _bad(Kind.QUARANTINE, {"action": "replay"})
    assert "'item'" in _bad(Kind.QUARANTINE, {"action": "replay", "item": "3"})
    assert "'document'" in _bad(Kind.CONFIG, {"version": 1, "document": "x" * (ca.MAX_CONFIG_BYTES + 1)})
    assert "'version'" in _bad(Kind.CONFIG, {"version": 0, "document": ""})
    assert "'service'" in _bad(Kind.RESTART, {"service": "../../bin/sh"})
    assert "'url'" in _bad(Kind.UPDATE, {"url": "http://x/y", "sha256": "0" * 64, "version": "1"})
    assert "'sha256'" in _bad(Kind.UPDATE, {"url": "https://x/y", "sha256": "0" * 63, "version": "1"})


@given(st.sampled_from(list(Kind)), st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40), st.lists(st.integers(), max_size=3))))
def test_parse_answers_typed_arguments_or_bad_arguments_only_when_given_anything(
        kind: Kind, args: dict[str, Any]) -> None:
    try:
        parsed = ca.parse(_header(kind), args)
    except CommandRefused as exc:
        assert exc.refusal is Refusal.BAD_ARGS
        return
    assert type(parsed).__name__.lower() == kind.value
