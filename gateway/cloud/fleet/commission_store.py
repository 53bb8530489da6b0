"""Signed commissioning reports in the fleet database. SQL only; verification is ``commission_verify``.

Written once for SQLite and PostgreSQL (``gateway.cloud.sql``), in the fleet store's database
(``COMMISSION_MIGRATION``, a step of ``store.MIGRATIONS``). A row keeps the report's exact signed
bytes (``report``, the canonical JSON), the signature and the certificate, so a report can be
verified again at any time, and a few columns to list and filter by. Reports are kept for ever
(they are the hand-over record); a report id is stored once.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.cloud.sql import Database
from gateway.core import schema

COMMISSION_MIGRATION = """
    CREATE TABLE commission_reports (
        report_id TEXT PRIMARY KEY, box_id TEXT NOT NULL, site TEXT NOT NULL, result TEXT NOT NULL,
        engineer TEXT NOT NULL, started_at {real} NOT NULL, finished_at {real} NOT NULL,
        received_at {real} NOT NULL, report TEXT NOT NULL, signature TEXT NOT NULL, certificate TEXT NOT NULL
    );
    CREATE INDEX commission_reports_by_box ON commission_reports (box_id, started_at)
"""
_SUMMARY = "report_id, box_id, site, result, engineer, started_at, finished_at, received_at"


class CommissionStore:
    """The ``commission_reports`` table. Thread-safe as the backend is."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, report: schema.CommissioningReport, signed: schema.SignedCommissioningReport,
            received_at: float) -> bool:
        """Store a verified report; False if its id was stored before (a resend)."""
        row = (report.report_id, report.box_id, report.site or report.box_id, report.result, report.engineer,
               report.started_at, report.finished_at, received_at, signed.report.decode("utf-8"),
               base64.b64encode(signed.signature).decode(), signed.certificate)
        with self._db.transaction() as tx:
            added = tx.execute("INSERT INTO commission_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (report_id) DO NOTHING RETURNING report_id", row)
        return bool(added)

    def list(self, *, box_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Summaries, newest first."""
        if box_id is None:
            return self._db.execute(f"SELECT {_SUMMARY} FROM commission_reports "  # noqa: S608 - constant
                                    "ORDER BY started_at DESC LIMIT ?", (limit,))
        return self._db.execute(f"SELECT {_SUMMARY} FROM commission_reports WHERE box_id = ? "  # noqa: S608
                                "ORDER BY started_at DESC LIMIT ?", (box_id, limit))

    def get(self, report_id: str) -> dict[str, Any] | None:
        """One report: its summary, the report document (parsed from the signed bytes), signature and
        certificate."""
        rows = self._db.execute("SELECT * FROM commission_reports WHERE report_id = ?", (report_id,))
        if not rows:
            return None
        row = dict(rows[0])
        row["document"] = json.loads(row.pop("report"))
        return row
