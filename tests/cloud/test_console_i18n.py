"""The console's gettext catalogues (gateway/cloud/fleet/i18n.py): the committed template is what the
sources say, and every string has a Chinese translation with the same placeholders."""

from __future__ import annotations

import pytest

from gateway.cloud.fleet import i18n


def test_template_equals_a_fresh_extraction_when_the_sources_are_read() -> None:
    assert i18n.TEMPLATE.read_text(encoding="utf-8") == i18n.render(i18n.extract()), (
        "app.js changed its strings: run python -m gateway.cloud.fleet.i18n and translate what is new")


@pytest.mark.parametrize("locale", [loc for loc in i18n.LANGUAGES.values() if loc])
def test_every_msgid_is_translated_with_its_placeholders_when_a_catalogue_is_read(locale: str) -> None:
    template = {m.id for m in i18n.extract() if m.id}
    catalog = {m.id: m for m in i18n.read(i18n.catalogue_path(locale)) if m.id}
    assert template, "no strings extracted"
    assert template <= set(catalog), f"untranslated: {sorted(template - set(catalog))[:5]}"
    for msgid in template:
        message = catalog[msgid]
        assert isinstance(msgid, str) and isinstance(message.string, str) and message.string, msgid
        assert not message.fuzzy, msgid
        assert i18n.placeholders(message.string) == i18n.placeholders(msgid), msgid


def test_browser_document_maps_english_to_chinese_when_zh_cn_is_asked() -> None:
    doc = i18n.messages("zh-CN")
    assert doc["lang"] == "zh-CN" and doc["messages"]["Acknowledge"] == "确认"
    assert i18n.messages("en") == {"lang": "en", "messages": {}}
    assert not i18n.known("fr")
