"""A migration script split into its statements, and the shared spelling of an append-only table. Pure.

Both SQL dialects (``adapters/sqlite_db.py``, ``adapters/postgres_db.py``) run a numbered
migration script statement by statement. A statement ends at ``;``, except inside a
trigger's ``BEGIN ... END`` (SQLite) or a ``$$ ... $$`` function body (PostgreSQL), whose own
``;`` belong to the body. A script names an append-only table as ``{append_only:<table>}``:
each dialect renders it as the triggers that refuse ``UPDATE`` and ``DELETE`` on that table
(and ``TRUNCATE`` on PostgreSQL), so not even a process holding the database's credentials
rewrites it through SQL without first dropping a trigger.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\$\$.*?\$\$|\bBEGIN\b.*?\bEND\b|;", re.S | re.I)
TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def statements(script: str) -> list[str]:
    """The statements of ``script``, each without its ``;``; empty ones dropped."""
    out, start = [], 0
    for m in _TOKEN.finditer(script):
        if m.group(0) == ";":
            out.append(script[start:m.start()])
            start = m.end()
    out.append(script[start:])
    return [s for s in out if s.strip()]


class AppendOnly:
    """``{append_only:<table>}`` in a migration script: ``sqlite`` or ``postgres`` triggers."""

    def __init__(self, dialect: str) -> None:
        assert dialect in ("sqlite", "postgres")  # noqa: S101 - a bug, not input
        self.dialect = dialect

    def __format__(self, table: str) -> str:
        assert TABLE.fullmatch(table), table  # noqa: S101 - a constant of a migration script
        refusal = f"'{table} is append-only'"
        if self.dialect == "sqlite":
            return ";\n".join(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, {refusal}); END" for verb in ("UPDATE", "DELETE"))
        return (f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION {refusal}; END $$;\n"
                f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW "
                f"EXECUTE FUNCTION {table}_append_only();\n"
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {table}_append_only()")
