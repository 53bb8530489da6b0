"""Migration scripts split into statements, a trigger's or a function's body kept whole."""

from __future__ import annotations

from gateway.core.sqlscript import AppendOnly, statements


def test_statements_split_at_semicolons_when_outside_a_trigger_or_function_body() -> None:
    script = ('CREATE TABLE t (a TEXT, "end" REAL);\n CREATE INDEX i ON t (a);\n'
              "CREATE TRIGGER t_x BEFORE UPDATE ON t BEGIN SELECT RAISE(ABORT, 'no'); END;\n"
              "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;\n  ")
    assert [s.strip() for s in statements(script)] == [
        'CREATE TABLE t (a TEXT, "end" REAL)', "CREATE INDEX i ON t (a)",
        "CREATE TRIGGER t_x BEFORE UPDATE ON t BEGIN SELECT RAISE(ABORT, 'no'); END",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$"]


def test_append_only_renders_triggers_for_each_dialect_when_a_script_names_a_table() -> None:
    lite = statements("{append_only:audit_log}".format_map({"append_only": AppendOnly("sqlite")}))
    pg = statements("{append_only:audit_log}".format_map({"append_only": AppendOnly("postgres")}))
    assert [s.split()[2] for s in lite] == ["audit_log_no_update", "audit_log_no_delete"]
    assert [s.split()[2] for s in pg] == ["audit_log_append_only()", "audit_log_no_change", "audit_log_no_truncate"]
