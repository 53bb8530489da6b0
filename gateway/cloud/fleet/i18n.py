"""The console's languages: gettext catalogues read and extracted with babel. Only importer of babel.

The console's strings are English msgids in ``web/app.js``, each written ``t("English text",
{vars})`` with ``{name}`` placeholders. ``extract()`` collects them with babel's JavaScript
extractor into a catalogue; the committed template is ``locale/console.pot`` and each language's
translation ``locale/<ll_CC>/LC_MESSAGES/console.po``. A test holds the template equal to a
fresh extraction and every msgid translated with the same placeholders. ``messages(lang)``
serves a language to the browser as ``{"lang", "messages": {msgid: msgstr}}``; English is the
msgids themselves.

Regenerate the template after changing the strings:
``python -m gateway.cloud.fleet.i18n`` (then translate what is new in the .po files).
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po, write_po

HERE = Path(__file__).parent
LOCALE_DIR = HERE / "locale"
SOURCES = (HERE / "web" / "app.js", HERE / "web" / "commands.js")
TEMPLATE = LOCALE_DIR / "console.pot"
DOMAIN = "console"
LANGUAGES = {"en": "", "zh-CN": "zh_CN"}  # the browser's tag -> the catalogue's locale ("" = the msgids)
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def extract() -> Catalog:
    """Every ``t("...")`` of the console's sources, as a catalogue (no dates: the file is reproducible)."""
    catalog = Catalog(project="mgw console", domain=DOMAIN, charset="utf-8", fuzzy=False)
    for source in SOURCES:
        options = {"jsx": False, "parse_template_string": False}
        for lineno, message, _comments, _context in extract_from_file("javascript", str(source), keywords={"t": None},
                                                                      options=options):
            catalog.add(message, locations=[(source.relative_to(HERE).as_posix(), lineno)])
    return catalog


def render(catalog: Catalog) -> str:
    out = io.BytesIO()
    write_po(out, catalog, omit_header=True, sort_output=True, width=120, include_lineno=False)
    return out.getvalue().decode()


def read(path: Path) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, domain=DOMAIN)


def catalogue_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def known(lang: str) -> bool:
    return lang in LANGUAGES


@functools.cache
def messages(lang: str) -> dict[str, Any]:
    """The browser's document for ``lang`` (one of ``LANGUAGES``): msgid -> translation, untranslated left out."""
    locale = LANGUAGES[lang]
    if not locale:
        return {"lang": lang, "messages": {}}
    catalog = read(catalogue_path(locale))
    return {"lang": lang, "messages": {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy
                                       and isinstance(m.id, str) and isinstance(m.string, str)}}


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def update(locale: str = "zh_CN") -> None:
    """Write a fresh template, and merge it into the language's catalogue (new msgids untranslated)."""
    template = extract()
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(render(template), encoding="utf-8")
    path = catalogue_path(locale)
    catalog = read(path) if path.exists() else Catalog(locale=locale, domain=DOMAIN)
    catalog.update(template, no_fuzzy_matching=True)
    catalog.obsolete.clear()  # strings app.js no longer has: git keeps their history
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(catalog), encoding="utf-8")


if __name__ == "__main__":
    update()
