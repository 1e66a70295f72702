"""The digits_study table and figure (docs/statistics.md; the figure heads the README): `digits_study` of
./experiments.yaml (does a winning ticket beat its dense network on scarce
digits? 5 seeds), run and summarised by the project's own compare().

    python -m bench.digits_study            # run the sweep (resumes), then print the table, write the figure
    python -m bench.digits_study --no-run   # only the table and the figure, from a finished sweep

What it prints is also written to bench/results/digits_study.md (--out), which
is committed: docs/statistics.md quotes it, and tests/test_readme_claims.py reads
that page's numbers back from it.

The table has one row per grid cell (training images per class x
augmentation): dense and winning-ticket test accuracy (mean ± sd over the
seeds), the ticket's density, the paired gain with its 95% interval (the
default: seeds and shared test images, orchestrator/stats.py), its p-value,
the Holm-adjusted p over the table's rows, and the share of seeds whose
ticket wins. The figure is the report's paired-gain figure.
"""
from __future__ import annotations

import argparse
import os

import pandas as pd

from bench.common import run_experiment, write_output
from orchestrator.api import compare, load_results, protocols
from orchestrator.formatting import p_text

FIGURE = os.path.join("docs", "digits_study_gain.png")
OUTPUT = os.path.join("bench", "results", "digits_study.md")


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def table(c: pd.DataFrame) -> str:
    """Markdown rows of a compare() table of digits_study."""
    lines = ["| images/class | augmentation | seeds | dense | winning ticket | ticket density | gain | "
             "95% interval | p | p (Holm) | ticket better |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in c.sort_values(["images_per_class", "augmentation"], ascending=[True, False]).itertuples(index=False):
        interval = "–" if pd.isna(r.gain_ci_low) else f"[{_signed(r.gain_ci_low)}, {_signed(r.gain_ci_high)}]"
        lines.append(f"| {int(r.images_per_class)} | {r.augmentation} | {int(r.n_seeds)} | "
                     f"{r.dense_test_acc:.3f} ± {r.dense_test_std:.3f} | {r.ticket_test_acc:.3f} ± "
                     f"{r.ticket_test_std:.3f} | {r.ticket_density:.2f} | {_signed(r.gain)} | {interval} | "
                     f"{p_text(r.p_value)} | {p_text(r.p_holm)} | {r.prob_ticket_better:.1f} |")
    return "\n".join(lines)


def survivors(c: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """The cells whose gain survives Holm's correction at `alpha`, as "<n>/class <aug>"."""
    ok = c[c["p_holm"] < alpha].sort_values(["images_per_class", "augmentation"], ascending=[True, False])
    return [f"{int(r.images_per_class)}/class {r.augmentation} ({_signed(r.gain)})" for r in ok.itertuples()]


def write_figure(df: pd.DataFrame, path: str = FIGURE) -> str:
    from orchestrator.report.views import fig_gain
    with open(path, "wb") as f:
        f.write(fig_gain(df, "val").png)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.digits_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="runs")
    ap.add_argument("--no-run", action="store_true", help="only the table and the figure, from a finished sweep")
    ap.add_argument("--out", default=OUTPUT, help=f"also write the output here (default {OUTPUT})")
    a = ap.parse_args(argv)
    if not a.no_run and (rc := run_experiment("digits_study", a.storage)):
        return rc
    df = load_results(a.storage, "digits_study")
    c = compare(df)
    p = protocols(df)
    write_output(a.out, [
        table(c),
        f"\nsurvive Holm at 0.05 over the {int(c['p_value'].notna().sum())} rows: "
        f"{', '.join(survivors(c)) or 'none'}",
        f"selection bias (--select test minus --select val, same lineages): "
        f"{p['selection_bias'].min():+.3f} to {p['selection_bias'].max():+.3f}",
        f"figure: {write_figure(df)}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
