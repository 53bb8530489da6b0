"""The CLI's language: English or Simplified Chinese, through the gettext catalogue of domain ``mgw``.

Every message ``mgw`` shows a person is an English msgid marked ``_("...")`` (``ngettext`` for a
count, ``N_`` for a constant translated where it is shown), with ``{name}`` placeholders filled by
``.format`` after translation, never an f-string inside ``_()``. The template is
``gateway/locale/mgw.pot`` (a fresh babel extraction of ``SOURCES``); the Chinese is
``gateway/locale/zh_CN/LC_MESSAGES/mgw.po``. ``tests/test_cli_i18n.py`` fails on a msgid without a
translation, a stale entry, or placeholders that differ.

The language is chosen once per process, before the parser is built (help text is translated
too): ``mgw --lang en|zh``, else the locale (``LC_ALL``, then ``LC_MESSAGES``, then ``LANG``; a
value starting ``zh`` is Chinese), else English. English needs no catalogue; Chinese compiles the
.po in memory (``adapters/gettext_catalog.compile_po``). Machine output (``--json``) and log
lines never go through here.

Regenerate the template after changing the strings: ``python -m gateway.i18n`` (then translate
what is new in the .po).
"""

from __future__ import annotations

import argparse
import gettext
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.adapters.gettext_catalog import Catalog

HERE = Path(__file__).parent
LOCALE_DIR = HERE / "locale"
TEMPLATE = LOCALE_DIR / "mgw.pot"
DOMAIN = "mgw"
LANGUAGES = {"en": "", "zh": "zh_CN"}  # --lang -> the catalogue's locale ("" = the msgids themselves)
PLACEHOLDER = re.compile(r"\{[a-z_0-9]*(?:[:!][^{}]*)?\}|%\([a-z_]+\)[sdr]|%[sdr]")
LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")
# the modules whose messages a person reads (relative to the package); the lint test reads the same list
SOURCES = (
    "i18n.py", "cli.py", "field.py", "doctor.py", "cloud_init.py", "demo.py", "settings_files.py",
    "appliance/glance.py", "edge/commission.py", "edge/commission_report.py", "edge/provision.py", "simulator.py",
    "site_tables.py", "edge/quarantine.py", "cloud/fleet/accounts.py",
    "cloud/worklist/cli.py", "cloud/fleet/accounts_cli.py", "cloud/archive/versions_cli.py",
    "cloud/authority/ack_key_cli.py", "cloud/archive/versions.py", "cloud/commands/cli.py",
)
# modules read for messages but not linted: the configuration loader translates its general reasons (file not
# found, unknown or missing key, wrong type); each key's own validation reason stays English (docs/cli.md)
EXTRACTED_ONLY = ("config.py",)

_translations: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def N_(message: str) -> str:  # noqa: N802 (gettext's name for "mark, translate later")
    return message


def _(message: str) -> str:
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translations.ngettext(singular, plural, n)


@dataclass(frozen=True)
class Message:
    """A message kept in English for a record or machine output (a signed report, JSON) and shown
    to the person in the CLI's language: ``tr("{where} answered C-ECHO", where=...)``."""

    msgid: str
    args: Mapping[str, object] = field(default_factory=dict)

    def english(self) -> str:
        return self.msgid.format(**self.args)

    def shown(self) -> str:
        return _(self.msgid).format(**self.args)


def tr(msgid: str, **args: object) -> Message:
    return Message(msgid, args)


def language() -> str:
    return _language


def choose(flag: str | None, environ: Mapping[str, str]) -> str:
    """``--lang`` if given, else the first set locale variable (``zh...`` is Chinese), else English."""
    if flag in LANGUAGES:
        return flag
    for name in LOCALE_VARIABLES:
        value = environ.get(name, "")
        if value:  # the first one set decides, as in POSIX (LC_ALL=C wins over LANG=zh_CN.UTF-8)
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def use(lang: str) -> None:
    """Show messages in ``lang`` (one of ``LANGUAGES``) from now on, argparse's own words included."""
    global _translations, _language
    locale = LANGUAGES[lang]
    if locale:
        from gateway.adapters import gettext_catalog

        _translations = gettext.GNUTranslations(io.BytesIO(gettext_catalog.compile_po(catalogue_path(locale),
                                                                                        DOMAIN)))
    else:
        _translations = gettext.NullTranslations()
    _language = lang
    # argparse looks its words up through the module's ``_``/``ngettext`` at call time
    argparse._ = _  # type: ignore[attr-defined]
    argparse.ngettext = ngettext  # type: ignore[attr-defined]


def flag_in(argv: Sequence[str]) -> str | None:
    """The value of ``--lang`` in a command line, read before the parser is built (None when absent or unknown)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg.startswith("--lang="):
            return arg.partition("=")[2]
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def catalogue_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text))


# argparse's own words (Python 3.11's argparse), so that usage, headings and its errors follow the language
ARGPARSE_WORDS = (
    N_("usage: "), N_("positional arguments"), N_("options"), N_("show this help message and exit"),
    N_("%(prog)s: error: %(message)s\n"), N_("one of the arguments %s is required"),
    N_("unrecognized arguments: %s"), N_("the following arguments are required: %s"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"), N_("expected one argument"),
    N_("expected at most one argument"),
    N_("invalid %(type)s value: %(value)r"), N_("argument %(argument_name)s: %(message)s"),
    N_("not allowed with argument %s"), N_("ambiguous option: %(option)s could match %(matches)s"),
)


def update(locale: str = "zh_CN") -> None:
    """Write a fresh template, and merge it into the language's catalogue (new msgids untranslated)."""
    from gateway.adapters import gettext_catalog

    template = extract()
    gettext_catalog.write_template(template, TEMPLATE)
    gettext_catalog.merge(template, catalogue_path(locale), locale, DOMAIN)


def extract() -> Catalog:
    """Every marked message of ``SOURCES``, as a catalogue."""
    from gateway.adapters import gettext_catalog

    return gettext_catalog.extract(gettext_catalog.new_catalog("mgw", DOMAIN), "python",
                                   [HERE / s for s in (*SOURCES, *EXTRACTED_ONLY)], HERE,
                                   gettext_catalog.PYTHON_KEYWORDS)


if __name__ == "__main__":
    update()
