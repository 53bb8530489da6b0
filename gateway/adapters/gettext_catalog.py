"""gettext catalogues through babel: extraction, .pot/.po files, and compiling a .po for ``gettext``.

The only importer of babel. Two domains use it: the console's (``cloud/fleet/i18n.py``, msgids
from ``web/app.js``) and the CLI's (``gateway/i18n.py``, msgids from the CLI's Python modules).
Each keeps a committed template (``<domain>.pot``) equal to a fresh extraction and one
``<ll_CC>/LC_MESSAGES/<domain>.po`` per language. Nothing is compiled at build time: a ``.po`` is
compiled in memory when a language other than English is asked for (``compile_po``), so the
committed catalogue is the only source and there is no stale ``.mo`` to forget.

Rules: files are rendered without dates or line numbers (a template is reproducible and its diff
is the strings that changed), sorted by msgid; entries the sources no longer have are dropped
from a language's catalogue when it is merged (git keeps their history).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog as Catalog  # re-exported: the type callers annotate with
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

# the CLI's markers (gateway/i18n.py): _("text"), ngettext("one", "many", n), N_("text"), tr("text", name=...)
PYTHON_KEYWORDS: Mapping[str, Any] = {"_": None, "N_": None, "ngettext": (1, 2), "tr": None}


def new_catalog(project: str, domain: str) -> Catalog:
    return Catalog(project=project, domain=domain, charset="utf-8", fuzzy=False)


def extract(catalog: Catalog, method: str, sources: Iterable[Path], root: Path,
            keywords: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Catalog:
    """Add every message the sources mark (``method`` is babel's: "python", "javascript") to ``catalog``."""
    for source in sources:
        for lineno, message, comments, _context in extract_from_file(
                method, str(source), keywords=dict(keywords), options=dict(options or {})):
            catalog.add(message, locations=[(source.relative_to(root).as_posix(), lineno)],
                        auto_comments=comments)
    return catalog


def render(catalog: Catalog) -> str:
    out = io.BytesIO()
    write_po(out, catalog, omit_header=True, sort_output=True, width=120, include_lineno=False)
    return out.getvalue().decode()


def read(path: Path, domain: str) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, domain=domain)


def merge(template: Catalog, path: Path, locale: str, domain: str) -> None:
    """Merge a fresh template into a language's catalogue: new msgids untranslated, gone ones dropped."""
    catalog = read(path, domain) if path.exists() else Catalog(locale=locale, domain=domain)
    catalog.update(template, no_fuzzy_matching=True)
    catalog.obsolete.clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(catalog), encoding="utf-8")


def write_template(template: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(template), encoding="utf-8")


def compile_po(path: Path, domain: str) -> bytes:
    """The .po as a GNU .mo image (for ``gettext.GNUTranslations``); fuzzy and empty entries left out."""
    out = io.BytesIO()
    write_mo(out, read(path, domain), use_fuzzy=False)
    return out.getvalue()


def translations(path: Path, domain: str) -> dict[str, str]:
    """msgid -> translation of a .po (singular messages; untranslated and fuzzy ones left out)."""
    return {m.id: m.string for m in read(path, domain) if m.id and m.string and not m.fuzzy
            and isinstance(m.id, str) and isinstance(m.string, str)}
