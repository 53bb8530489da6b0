"""The CLI in English and Simplified Chinese (gateway/i18n.py, catalogue domain ``mgw`` in gateway/locale/).

The catalogue is what the code says: the committed template equals a fresh babel extraction, every
msgid has a Chinese translation with the same placeholders, and nothing stale is left. The real
console script speaks the language ``--lang`` or the locale chose, and ``--json`` never changes.
No message a person reads leaves a CLI module untranslated (a lint over the sources).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import i18n
from gateway.adapters import gettext_catalog
from tests.test_doctor import materialise

MGW = Path(sys.executable).with_name("mgw")  # the console script pip installed, as a person runs it


def _catalogue() -> dict[str, gettext_catalog.Catalog]:
    return {m.id: m for m in gettext_catalog.read(i18n.catalogue_path("zh_CN"), i18n.DOMAIN) if m.id}


def test_template_equals_a_fresh_extraction_when_the_sources_are_read() -> None:
    assert i18n.TEMPLATE.read_text(encoding="utf-8") == gettext_catalog.render(i18n.extract()), (
        "the CLI's messages changed: run python -m gateway.i18n and translate what is new")


def test_every_msgid_has_chinese_with_its_placeholders_when_the_catalogue_is_read() -> None:
    template = {m.id for m in i18n.extract() if m.id}
    catalog = _catalogue()
    assert len(template) > 300, "far fewer messages than the CLI has: is extraction reading the sources?"
    assert template <= set(catalog), f"untranslated: {sorted(template - set(catalog))[:5]}"
    for msgid in template:
        message = catalog[msgid]
        assert isinstance(msgid, str) and isinstance(message.string, str) and message.string.strip(), msgid
        assert not message.fuzzy, msgid
        assert i18n.placeholders(message.string) == i18n.placeholders(msgid), msgid


def test_catalogue_has_no_stale_entry_when_compared_with_the_sources() -> None:
    stale = set(_catalogue()) - {m.id for m in i18n.extract() if m.id}
    assert not stale, f"msgids no source has (run python -m gateway.i18n): {sorted(stale)[:5]}"


@pytest.mark.parametrize(("flag", "environ", "expected"), [
    ("zh", {"LANG": "en_US.UTF-8"}, "zh"), ("en", {"LANG": "zh_CN.UTF-8"}, "en"),
    (None, {"LANG": "zh_CN.UTF-8"}, "zh"), (None, {"LC_MESSAGES": "zh_TW", "LANG": "en_GB"}, "zh"),
    (None, {"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}, "en"), (None, {}, "en"), ("fr", {"LANG": "fr_FR"}, "en"),
])
def test_language_is_the_flag_then_the_locale_then_english_when_chosen(
        flag: str | None, environ: dict[str, str], expected: str) -> None:
    assert i18n.choose(flag, environ) == expected


def _mgw(*args: str, lang_env: dict[str, str] | None = None, cwd: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    assert MGW.exists(), f"{MGW}: the console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE", "STATE_DIRECTORY", "CONFIGURATION_DIRECTORY")}
    env.update(lang_env or {})
    return subprocess.run([str(MGW), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_help_is_chinese_when_asked_by_flag_or_locale_and_english_when_asked_by_flag() -> None:
    flag, locale = _mgw("--lang", "zh", "--help"), _mgw("--help", lang_env={"LANG": "zh_CN.UTF-8"})
    english = _mgw("--lang", "en", "--help", lang_env={"LANG": "zh_CN.UTF-8"})
    for done in (flag, locale):
        assert done.returncode == 0 and "用法：mgw" in done.stdout, done.stdout
        assert "检查配置，不启动任何服务" in done.stdout, done.stdout
    assert english.returncode == 0 and "usage: mgw" in english.stdout, english.stdout
    assert "validate configuration without starting anything" in english.stdout
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in english.stdout), "Chinese in the English help"


def test_refusal_is_chinese_on_stderr_when_zh_and_english_when_en() -> None:
    chinese = _mgw("decommission", lang_env={"LANG": "zh_CN.UTF-8"})
    english = _mgw("--lang", "en", "decommission", lang_env={"LANG": "zh_CN.UTF-8"})
    assert chinese.returncode == 1 and chinese.stderr.startswith("mgw：错误：停用会销毁本设备的密钥"), chinese.stderr
    assert english.returncode == 1 and english.stderr.startswith("mgw: error: decommission destroys"), english.stderr
    usage = _mgw("--lang", "zh", "status", "--bogus")
    assert usage.returncode == 2 and "无法识别的参数：--bogus" in usage.stderr, usage.stderr


def test_status_says_why_in_the_chosen_language_when_the_edge_never_ran(tmp_path: Path) -> None:
    m = materialise("edge", tmp_path)
    configs = [a for f in m.files for a in ("--config", str(f))]
    chinese = _mgw("--lang", "zh", "status", *configs, cwd=m.tmp)
    english = _mgw("--lang", "en", "status", *configs, cwd=m.tmp)
    assert chinese.returncode == 2 and "尚无缓存数据库" in chinese.stderr, chinese.stderr
    assert english.returncode == 2 and "no spool database yet" in english.stderr, english.stderr


def test_doctor_speaks_the_chosen_language_and_its_json_never_changes_when_run_on_the_edge_example(
        tmp_path: Path) -> None:
    m = materialise("edge", tmp_path)
    configs = [a for f in m.files for a in ("--config", str(f))]
    chinese = _mgw("doctor", *configs, lang_env={"LANG": "zh_CN.UTF-8"}, cwd=m.tmp)
    english = _mgw("--lang", "en", "doctor", *configs, lang_env={"LANG": "zh_CN.UTF-8"}, cwd=m.tmp)
    assert chinese.returncode == 0 and "正常：" in chinese.stdout and "由 'mgw fleet" in chinese.stdout, chinese.stdout
    assert english.returncode == 0 and "ok: " in english.stdout and "issued by 'mgw fleet" in english.stdout
    as_json = [json.loads(_mgw("--lang", lang, "doctor", "--json", *configs, cwd=m.tmp).stdout)
               for lang in ("zh", "en")]
    for doc in as_json:
        for check in doc["checks"]:
            check.pop("days_left")  # moves with the clock between the two runs
    assert as_json[0] == as_json[1] and "issued by 'mgw fleet" in json.dumps(as_json[0])


# -- every message a person reads goes through gettext ---------------------------------------------
SHOWN = {"print", "_tell", "say"}  # calls whose first argument a person reads
MARK = "# untranslated:"  # machine output (values, a command to paste) says so, and why, on its line or the one above


def _literal(node: ast.expr) -> bool:
    """A bare string or f-string, or one joined or chosen among them, is text nobody translated."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and any(ch.isalpha() for ch in node.value)
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and any(ch.isalpha() for ch in str(v.value)) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) or _literal(node.right)
    if isinstance(node, ast.IfExp):
        return _literal(node.body) or _literal(node.orelse)
    return False


def _untranslated(path: Path, root: Path = i18n.HERE) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        helps = [k.value for k in node.keywords if k.arg in ("help", "description", "epilog") and _literal(k.value)]
        if helps:  # argparse's help=_("...")
            found.append(f"{path.relative_to(root)}:{helps[0].lineno}: {lines[helps[0].lineno - 1].strip()}")
        if not node.args:
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        marked = MARK in lines[node.lineno - 1] or (node.lineno > 1 and MARK in lines[node.lineno - 2])
        if (name in SHOWN or name.endswith("Error")) and _literal(node.args[0]) and not marked:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_no_cli_message_escapes_translation_when_the_sources_are_read() -> None:
    found = [f for source in i18n.SOURCES for f in _untranslated(i18n.HERE / source)]
    assert not found, "wrap it in _(\"...\").format(...) (or mark machine output '# untranslated: why'):\n" + \
        "\n".join(found)


def test_lint_catches_a_bare_print_when_one_is_written(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('print(f"sent {n} items")\nraise ConfigError("no such box")\nprint(_("ok"))\n'
                     'print(f"{value}")\nprint(f"mgw provision {url}")  # untranslated: a command\n'
                     '# untranslated: a command\nprint(f"mgw provision {url}")\nsay("waiting for the cloud")\n'
                     'p.add_argument("--box", help="box id")\np.add_argument("--site", help=_("site"))\n')
    assert sorted(int(f.split(":")[1]) for f in _untranslated(probe, tmp_path)) == [1, 2, 8, 9]


def _helps(parser: argparse.ArgumentParser, path: str = "mgw") -> list[tuple[str, str]]:
    """(where, text) of every help and description in the parser tree, subcommands included."""
    found = [(path, parser.description or "")]
    for action in parser._actions:
        found.append((f"{path} {'/'.join(action.option_strings) or action.dest}", action.help or ""))
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{path} {choice.dest}", choice.help or "") for choice in action._choices_actions]
            for name, sub in action.choices.items():
                found += _helps(sub, f"{path} {name}")
    return found


def test_every_help_is_chinese_when_zh_builds_the_parser() -> None:
    """A help passed through a variable (a loop over names and texts) escapes the source lint; the built
    parser does not."""
    from gateway import cli

    i18n.use("zh")
    try:
        helps = _helps(cli.build_parser())
    finally:
        i18n.use("en")
    english = [(where, text) for where, text in helps if text != argparse.SUPPRESS
               and any(ch.isalpha() for ch in text) and not any("\u4e00" <= ch <= "\u9fff" for ch in text)]
    assert len(helps) > 300 and not english, english[:5]


def test_commissioning_report_text_is_chinese_and_its_record_english_when_zh_is_chosen(tmp_path: Path) -> None:
    from gateway.edge import commission

    i18n.use("zh")
    try:
        report = commission.run([tmp_path / "missing.toml"], commission.Options(engineer="Li Wei"))
        text = report.to_text()
    finally:
        i18n.use("en")
    assert "调试报告" in text and "请修正所指的文件和配置项" in text and "结果：未通过" in text, text
    (check,) = json.loads(report.to_json())["checks"]
    # the record's own words stay English; a reason quoted from an error is as it was raised
    assert check["detail"].endswith(": fix the named file and key") and "missing.toml" in check["detail"]
    assert "shown" not in check
    assert report.document().checks[0].detail == check["detail"] and report.result == "FAILED"
