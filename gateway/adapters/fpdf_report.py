"""A printable report as PDF bytes, with fpdf2 and an embedded CJK font. Only importer of fpdf.

``render(PdfReport)`` lays out a title, a table of fields and a table of rows on A4, in the
language the caller already chose (the texts arrive translated). Chinese needs a font with its
glyphs: WenQuanYi Micro Hei (Debian package ``fonts-wqy-microhei``, installed by .ci/install),
embedded as a subset so the PDF reads the same on any machine. Why fpdf2: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.core.errors import LocalError

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
_FAMILY = "cjk"


@dataclass(frozen=True)
class PdfReport:
    title: str
    fields: list[tuple[str, str]]  # label, value
    headings: tuple[str, ...]  # the rows' column headings
    widths: tuple[float, ...]  # each column's share of the page width (sums to 1)
    rows: list[tuple[str, ...]]
    verdict: str  # the line under the rows, large
    footer: str


def render(report: PdfReport, font: Path = CJK_FONT) -> bytes:
    from fpdf import FPDF
    from fpdf.errors import FPDFException
    from fpdf.fonts import FontFace

    if not font.exists():
        raise LocalError(f"font {font} is missing: install the Debian package fonts-wqy-microhei")
    try:
        pdf = FPDF(format="A4")
        pdf.set_title(report.title)
        pdf.set_creator("mgw")
        pdf.add_font(_FAMILY, fname=str(font), collection_font_number=0)
        pdf.set_auto_page_break(True, margin=15)
        pdf.add_page()
        pdf.set_font(_FAMILY, size=16)
        pdf.multi_cell(0, 9, report.title, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        pdf.set_font(_FAMILY, size=10)
        for label, value in report.fields:
            pdf.cell(55, 6, label)
            pdf.multi_cell(0, 6, value or "-", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.set_font(_FAMILY, size=9)
        with pdf.table(col_widths=tuple(w * 100 for w in report.widths), text_align="LEFT", line_height=5,
                       headings_style=FontFace(emphasis="", fill_color=(234, 238, 242))) as table:
            table.row(report.headings)
            for row in report.rows:
                table.row(row)
        pdf.ln(4)
        pdf.set_font(_FAMILY, size=14)
        pdf.multi_cell(0, 8, report.verdict, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(_FAMILY, size=8)
        pdf.multi_cell(0, 5, report.footer, new_x="LMARGIN", new_y="NEXT")
        return bytes(pdf.output())
    except (FPDFException, OSError, ValueError) as exc:
        raise LocalError(f"PDF report: {exc}") from exc
