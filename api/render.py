"""Report rendering: CSV and PDF (fpdf2, core fonts) from the plain dicts the store reads return."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from fpdf import FPDF


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _latin1(text: str) -> str:
    # The PDF core fonts are latin-1 only; anything else is replaced rather than failing the report.
    return text.encode("latin-1", errors="replace").decode("latin-1")


def sla_pdf(report: dict[str, Any], org_id: str) -> bytes:
    """SLA report: per-objective compliance over the period, then every violation."""
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Lifeline SLA report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 6, _latin1(f"Organisation: {org_id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 6, f"Period: {cell(report['from'])} to {cell(report['to'])}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    _table(pdf, "Compliance", ["SLA", "Objective", "Target", "Violations", "Violated (s)", "Compliance"],
           [[s["name"], o["objective"], cell(o["target"]), str(o["violations"]), cell(o["violated_s"]),
             f"{o['compliance'] * 100:.3f}%"] for s in report["slas"] for o in s["objectives"]],
           [50, 45, 30, 30, 35, 35])
    pdf.ln(4)
    _table(pdf, "Violations", ["Id", "SLA", "Objective", "Started", "Ended", "Duration (s)", "Worst"],
           [[str(v["id"]), v["sla"], v["objective"], cell(v["started_at"])[:19], cell(v["ended_at"])[:19] or "open",
             cell(v["duration_s"]), cell(v["worst_value"])] for v in report["violations"]],
           [18, 45, 40, 50, 50, 32, 30])
    return bytes(pdf.output())


def _table(pdf: FPDF, title: str, header: list[str], rows: list[list[str]], widths: list[int]) -> None:
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 9)
    for h, w in zip(header, widths, strict=True):
        pdf.cell(w, 6, h, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", size=9)
    if not rows:
        pdf.cell(sum(widths), 6, "none", border=1, new_x="LMARGIN", new_y="NEXT")
        return
    for r in rows:
        for v, w in zip(r, widths, strict=True):
            pdf.cell(w, 6, _latin1(v)[:60], border=1)
        pdf.ln()
