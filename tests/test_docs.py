"""The documentation keeps up with the code (after sqlite-utils' ``test_docs.py``).

Fails when a configuration key, an ``mgw`` subcommand or option, or a log MESSAGE_ID exists in
the code but not in docs/, or when a relative link in README.md or docs/*.md points nowhere.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gateway import config
from gateway.cli import build_parser
from gateway.logs import MSG

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKDOWN = sorted([ROOT / "README.md", *DOCS.glob("*.md")])

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _sections(text: str) -> list[tuple[str, str]]:
    """``(heading text, body up to the next heading of the same or a higher level)``."""
    lines = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text).splitlines()
    raw = text.splitlines()
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := _HEADING.match(line))]
    out = []
    for n, (start, level, title) in enumerate(heads):
        end = next((i for i, lvl, _ in heads[n + 1:] if lvl <= level), len(raw))
        out.append((title, "\n".join(raw[start + 1:end])))
    return out


def _slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for title, _ in _sections(path.read_text(encoding="utf-8")):
        slug = _slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return _LINK.findall(_CODE_SPAN.sub("``", text))


def _relative_links() -> list[tuple[Path, str]]:
    out = []
    for md in MARKDOWN:
        if md.exists():
            out += [(md, target) for target in _links(md)
                    if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]
    return out


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:
    """Every subcommand path under ``parser`` with its parser, groups and leaves alike."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*path, name), sub))
                out += _subcommands(sub, (*path, name))
    return out


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _key_id(item: tuple[str, str, str]) -> str:
    return item[0]


COMMANDS = _subcommands(build_parser())
OPTIONS = [
    (path, option)
    for path, parser in COMMANDS if _is_leaf(parser)
    for action in parser._actions
    for option in action.option_strings if option not in ("-h", "--help")
]


def _documented(dotted: str, doc: str) -> bool:
    if f"`{dotted}`" in doc:
        return True
    table, key = dotted.rsplit(".", 1)
    return any(f"[{table}]" in title and f"`{key}`" in body for title, body in _sections(doc))


@pytest.mark.parametrize("key", config.iter_keys(config.EdgeSettings), ids=_key_id)
def test_config_key_is_documented_when_edge_settings_define_it(key: tuple[str, str, str]) -> None:
    assert _documented(key[0], _read("config.md")), f"docs/config.md lacks the edge key {key[0]}"


@pytest.mark.parametrize("key", config.iter_keys(config.CloudSettings), ids=_key_id)
def test_config_key_is_documented_when_cloud_settings_define_it(key: tuple[str, str, str]) -> None:
    assert _documented(key[0], _read("config.md")), f"docs/config.md lacks the cloud key {key[0]}"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_subcommand_is_documented_when_the_parser_defines_it(path: tuple[str, ...]) -> None:
    doc = _read("cli.md")
    command = "mgw " + " ".join(path)
    assert command in doc, f"docs/cli.md never mentions `{command}`"


@pytest.mark.parametrize("path", [p for p, parser in COMMANDS if _is_leaf(parser)], ids=" ".join)
def test_subcommand_has_a_section_when_it_runs_something(path: tuple[str, ...]) -> None:
    command = "mgw " + " ".join(path)
    titles = [title.strip("` ") for title, _ in _sections(_read("cli.md"))]
    assert command in titles, f"docs/cli.md has no heading `{command}`"


@pytest.mark.parametrize("path,option", OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o in OPTIONS])
def test_option_is_documented_when_a_subcommand_accepts_it(path: tuple[str, ...], option: str) -> None:
    command = "mgw " + " ".join(path)
    bodies = [body for title, body in _sections(_read("cli.md")) if title.strip("` ") == command]
    assert any(f"`{option}" in body for body in bodies), f"docs/cli.md, section {command}, lacks `{option}`"


@pytest.mark.parametrize("member", list(MSG), ids=lambda m: m.name)
def test_message_id_is_in_the_catalog_when_logs_define_it(member: MSG) -> None:
    doc = _read("catalog.md")
    assert f"## {member.name}\n" in doc, f"docs/catalog.md has no section for {member.name}"
    assert f"-- {member.value}\n" in doc, f"docs/catalog.md has no catalog block for {member.value}"
    section = next(body for title, body in _sections(doc) if title == member.name)
    assert member.value in section, f"the {member.name} section does not give its id {member.value}"


@pytest.mark.parametrize(
    "source,target", _relative_links(),
    ids=[f"{s.relative_to(ROOT)}->{t}" for s, t in _relative_links()],
)
def test_link_target_exists_when_a_doc_links_to_it(source: Path, target: str) -> None:
    path = target.split("#", 1)[0]
    if not path:
        return  # a link within the same page; its anchor is checked below
    assert (source.parent / path).exists(), f"{source.relative_to(ROOT)} links to missing {path}"


def _heading_links() -> list[tuple[Path, str]]:
    """Links to a heading of a markdown page (this one or another); other anchors are not headings."""
    return [(s, t) for s, t in _relative_links()
            if "#" in t and (t.startswith("#") or t.split("#", 1)[0].endswith(".md"))]


@pytest.mark.parametrize(
    "source,target", _heading_links(),
    ids=[f"{s.relative_to(ROOT)}->{t}" for s, t in _heading_links()],
)
def test_link_anchor_exists_when_a_doc_links_to_a_heading(source: Path, target: str) -> None:
    path, anchor = target.split("#", 1)
    page = source.parent / path if path else source
    assert page.is_file(), f"{source.relative_to(ROOT)} links to missing {path}"
    assert anchor in _anchors(page), f"{source.relative_to(ROOT)} links to #{anchor}, not a heading of {page.name}"


def test_every_markdown_page_is_checked_when_docs_exist() -> None:
    names = {p.name for p in MARKDOWN}
    assert {"README.md", "protocol.md", "architecture.md", "catalog.md", "config.md", "cli.md"} <= names


def _security_test_references() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", text)))


@pytest.mark.parametrize("path, name", _security_test_references())
def test_security_threat_names_a_test_that_exists_when_the_threat_model_cites_it(path: str, name: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"docs/security.md cites {path}::{name}"


def test_security_threat_model_cites_tests_when_read() -> None:
    assert len(_security_test_references()) >= 30
