"""The console's languages: gettext catalogues read and extracted with babel (``adapters/gettext_catalog.py``).

The console's strings are English msgids in ``web/app.js``, each written ``t("English text",
{vars})`` with ``{name}`` placeholders. ``extract()`` collects them with babel's JavaScript
extractor into a catalogue; the committed template is ``locale/console.pot`` and each language's
translation ``locale/<ll_CC>/LC_MESSAGES/console.po``. A test holds the template equal to a
fresh extraction and every msgid translated with the same placeholders. ``messages(lang)``
serves a language to the browser as ``{"lang", "messages": {msgid: msgstr}}``; English is the
msgids themselves.

Regenerate the template after changing the strings:
``python -m gateway.cloud.fleet.i18n`` (then translate what is new in the .po files). The CLI's
catalogue (domain ``mgw``) is the same shape, in ``gateway/locale/`` (``gateway/i18n.py``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from gateway.adapters import gettext_catalog
from gateway.adapters.gettext_catalog import Catalog

HERE = Path(__file__).parent
LOCALE_DIR = HERE / "locale"
SOURCES = (HERE / "web" / "app.js", HERE / "web" / "commands.js")
TEMPLATE = LOCALE_DIR / "console.pot"
DOMAIN = "console"
LANGUAGES = {"en": "", "zh-CN": "zh_CN"}  # the browser's tag -> the catalogue's locale ("" = the msgids)
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def extract() -> Catalog:
    """Every ``t("...")`` of the console's sources, as a catalogue (no dates: the file is reproducible)."""
    return gettext_catalog.extract(gettext_catalog.new_catalog("mgw console", DOMAIN), "javascript", SOURCES, HERE,
                                   {"t": None}, {"jsx": False, "parse_template_string": False})


def render(catalog: Catalog) -> str:
    return gettext_catalog.render(catalog)


def read(path: Path) -> Catalog:
    return gettext_catalog.read(path, DOMAIN)


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
    return {"lang": lang, "messages": gettext_catalog.translations(catalogue_path(locale), DOMAIN)}


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def update(locale: str = "zh_CN") -> None:
    """Write a fresh template, and merge it into the language's catalogue (new msgids untranslated)."""
    template = extract()
    gettext_catalog.write_template(template, TEMPLATE)
    gettext_catalog.merge(template, catalogue_path(locale), locale, DOMAIN)


if __name__ == "__main__":
    update()
