"""Pieces of the self-contained HTML reports: the style sheet, inlined PNGs and tables (no template engine)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.6em 0;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.n{text-align:right}"
    "th{background:#f2f2f2}img{max-width:100%;margin:.3em 0}"
    ".note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em 1em}"
    ".good{background:#e6f5e6;border-left:4px solid #3a3;padding:.5em 1em}pre{background:#f7f7f7;padding:1em;"
    "overflow:auto;font-size:12px}"
)


def inline_png(path: Path, alt: str) -> str:
    """A PNG inlined as a data URI (the page stays one file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(path.name)}">'


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; floats with three decimals, NaN and None as a dash; numbers right-aligned (so that their
    digits line up), text left-aligned."""

    def cell(v: Any) -> str:
        if v is None or v is pd.NA:
            return "<td>—</td>"
        if isinstance(v, bool | np.bool_):
            return f"<td>{v}</td>"
        if isinstance(v, float | np.floating):
            return "<td>—</td>" if np.isnan(v) else f'<td class="n">{v:.3f}</td>'
        if isinstance(v, int | np.integer):
            return f'<td class="n">{v}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, parts: list[str]) -> str:
    """A whole page: title, style and the parts in order."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
