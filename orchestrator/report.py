"""`lth-sweep report`: the sweep's tables as report.md and a self-contained
report.html. Works on a partial sweep: missing cells stay missing.

(The paper's figures, PNGs embedded in the HTML, are issue 8's remaining work.)
"""
from __future__ import annotations

import datetime as _dt
import html
import os

import pandas as pd

from orchestrator.results import compare, format_frame, load_results, winning_tickets
from orchestrator.status import sweep_status
from workers.store import SweepStore

CELL = ["dataset", "fraction", "images_per_class", "augmentation", "method", "arch"]


def accuracy_vs_density(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean over seeds) per round, one column per grid cell."""
    if df.empty:
        return df
    d = df.copy()
    d["cell"] = [" ".join(str(v) for v in row if not pd.isna(v)) for row in d[CELL].itertuples(index=False)]
    t = d.groupby(["round", "cell"], dropna=False).agg(density=("density", "mean"),
                                                      test_acc=("test_acc", "mean")).reset_index()
    wide = t.pivot(index="round", columns="cell", values="test_acc")
    wide.insert(0, "density", t.groupby("round")["density"].mean())
    return wide.reset_index()


def write_report(sweep: SweepStore, out_dir: str) -> list[str]:
    df = load_results(sweep)
    st = sweep_status(sweep)
    sections = [
        ("Dense (round 0) vs winning ticket (best validation round), test accuracy",
         compare(df) if len(df) else df),
        ("Test accuracy against round/density (mean over seeds)", accuracy_vs_density(df)),
        ("Winning ticket of every trial",
         winning_tickets(df)[["trial_id", *CELL, "seed", "round", "density", "val_acc", "test_acc"]]
         if len(df) else df),
    ]
    t, r = st["trials"], st["rounds"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"Sweep `{sweep.sweep}` at `{sweep.fs.to_uri(sweep.dir)}`, {stamp}: "
             f"{t['done']}/{t['total']} trials done ({t['running']} running, {t['pending']} pending, "
             f"{t['failed']} failed), {r['committed']}/{r['total']} rounds committed.")
    md = [f"# lth-sweep report: {sweep.sweep}", "", intro, ""]
    page = [f"<h1>lth-sweep report: {html.escape(sweep.sweep)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for title, frame in sections:
        md += [f"## {title}", "", format_frame(frame, "markdown") if len(frame) else "(no rows yet)", ""]
        page += [f"<h2>{html.escape(title)}</h2>",
                 frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4f}")
                 if len(frame) else "<p>(no rows yet)</p>"]
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")]
    with open(paths[0], "w") as f:
        f.write("\n".join(md))
    with open(paths[1], "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>lth-sweep report</title>"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>\n"
                + "\n".join(page))
    return paths
