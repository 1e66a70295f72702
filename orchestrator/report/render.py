"""Writing the report: each view as Markdown (report.md, linking the PNGs) and
as HTML (report.html, self-contained: the PNGs embedded), and the files.

Every caption ends with the protocol it was made with: selection, validation
budget, BatchNorm statistics.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from typing import Union

from orchestrator import tables
from orchestrator.formatting import format_frame
from orchestrator.results import load_results
from orchestrator.status import sweep_status
from workers import selection
from workers.store import SweepStore

from .items import Plot, ReportItem, Skip, Table
from .views import views

SELECTIONS = ("Dense = a trial's round 0; winning ticket = its best round on the selection split (ties: the "
              "sparser), counted only for finished lineages. A cell is every spec field but the seed. Accuracies "
              "are fractions in the tables and percent in the figures; a missing value is shown as – or left "
              "blank, never as zero.")

CSS = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
       "img{max-width:100%}figcaption{font-size:90%;color:#444}")


def render_md(title: str, item: Union[ReportItem, Skip]) -> list[str]:
    if isinstance(item, Skip):
        return [f"## {title}", "", f"_Skipped: {item}._", ""]
    if isinstance(item, Plot):
        return [f"## {title}", "", f"![{title}]({item.filename})", "", item.caption, ""]
    caption = [item.caption, ""] if item.caption else []
    return [f"## {title}", "", *caption, format_frame(item.frame, "markdown"), ""]


def render_html(title: str, item: Union[ReportItem, Skip]) -> list[str]:
    head = f"<h2>{html.escape(title)}</h2>"
    if isinstance(item, Skip):
        return [head, f"<p><em>Skipped: {html.escape(str(item))}.</em></p>"]
    if isinstance(item, Plot):
        data = base64.b64encode(item.png).decode("ascii")
        return [head, f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
                      f"<figcaption>{html.escape(item.caption)}</figcaption></figure>"]
    caption = [f"<p>{html.escape(item.caption)}</p>"] if item.caption else []
    return [head, *caption,
            item.frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4f}")]


def intro(sweep: SweepStore) -> str:
    st = sweep_status(sweep)
    t, r = st["trials"], st["rounds"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Sweep `{sweep.sweep}` at `{sweep.fs.to_uri(sweep.dir)}`, {stamp}: "
            f"{t['done']}/{t['total']} trials done ({t['running']} running, {t['pending']} pending, "
            f"{t['failed']} failed), {r['committed']}/{r['total']} rounds committed.")


def write_report(sweep: SweepStore, out_dir: str, select: str = selection.DEFAULT_SELECTION,
                 ci: str = tables.DEFAULT_CI) -> list[str]:
    """Writes report.md, report.html and one PNG per figure into out_dir; returns their paths."""
    selection.check(select)
    tables.check_ci(ci)
    df = load_results(sweep)
    line = intro(sweep)
    protocol = tables.protocol_line(select, df, ci) if len(df) else f"Winning ticket: {selection.describe(select)}."
    neutral = tables.protocol_line(None, df, ci) if len(df) else ""
    md = [f"# lth-sweep report: {sweep.sweep}", "", line, "", f"**Protocol.** {protocol}", "", SELECTIONS, ""]
    page = [f"<h1>lth-sweep report: {html.escape(sweep.sweep)}</h1>", f"<p>{html.escape(line)}</p>",
            f"<p><strong>Protocol.</strong> {html.escape(protocol)}</p>", f"<p>{html.escape(SELECTIONS)}</p>"]
    os.makedirs(out_dir, exist_ok=True)
    pngs = []
    for title, build in views(sweep, df, select, ci):
        try:
            item = build()
        except Skip as skip:
            item = skip
        if isinstance(item, (Plot, Table)):
            # Every table and figure states the protocol it was made with.
            both = isinstance(item, Table) and item.both_protocols
            item.caption = f"{item.caption} {neutral if both else protocol}".strip()
        if isinstance(item, Plot):
            pngs.append(os.path.join(out_dir, item.filename))
            with open(pngs[-1], "wb") as f:
                f.write(item.png)
        md += render_md(title, item)
        page += render_html(title, item)
    paths = [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")]
    # ±, – and ★ are in the text: never the locale's encoding
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(f"<!doctype html><meta charset=utf-8><title>lth-sweep report</title><style>{CSS}</style>\n"
                + "\n".join(page))
    return paths + pngs
