"""What the weight initialisation does to the paper's question: `init_study`
of ./experiments.yaml (the same digits lineages under the paper's init and
torchvision's), as paired differences between the schemes.

    python -m bench.init_study            # run the sweep (resumes), then print the table
    python -m bench.init_study --no-run   # only the table, from a finished sweep

What it prints is also written to bench/results/init_study.md (--out), which is
committed: docs/imp.md quotes it, and tests/test_readme_claims.py reads that
page's numbers back from it.

For each training size and seed, the lineage under one scheme is paired with
the same grid point under the other (same data subset, augmentation draws
and data order: only the initial weights differ). Per pair: the dense
network's test accuracy (round 0), the winning ticket's (held-out
selection, `--select val`, the project's default), and the gain (ticket -
dense). The table gives the mean over seeds of `paper - torchvision` for
each, with its 95% t interval over the seeds, the paired t-test's p and its
Holm adjustment over the table's differences (one family), and each
scheme's own means.
"""
from __future__ import annotations

import argparse
import os

import pandas as pd
from scipy import stats

from bench.common import run_experiment, write_output
from orchestrator.api import load_results, winning_tickets

OUTPUT = os.path.join("bench", "results", "init_study.md")

SCHEMES = ("paper", "torchvision")


def paired(df: pd.DataFrame, select: str = "val") -> pd.DataFrame:
    """One row per (size, seed, scheme): dense, ticket and gain test accuracies."""
    dense = df[df["round"] == 0].set_index("trial_id")["test_acc"]
    w = winning_tickets(df, select).set_index("trial_id")
    rows = []
    for tid, t in w.iterrows():
        rows.append({"images_per_class": int(t["images_per_class"]), "seed": int(t["seed"]),
                     "scheme": t["init_scheme"], "dense": dense[tid], "ticket": t["test_acc"],
                     "density": t["density"], "gain": t["test_acc"] - dense[tid]})
    return pd.DataFrame(rows)


def _mean_ci(x) -> tuple[float, float, float, float]:
    """Mean, 95% t interval over the seeds and the paired t-test's p."""
    x = pd.Series(x, dtype=float)
    m = float(x.mean())
    if len(x) < 2 or x.std(ddof=1) == 0:
        return m, float("nan"), float("nan"), float("nan")
    se = float(x.std(ddof=1) / len(x) ** 0.5)
    half = float(stats.t.ppf(0.975, len(x) - 1) * se)
    return m, m - half, m + half, float(2 * stats.t.sf(abs(m) / se, len(x) - 1))


def table(p: pd.DataFrame) -> str:
    """docs/imp.md's init table: per size, each scheme's means, and the paired
    differences with their interval, p and Holm-adjusted p over the table's
    differences (one family: the 3 sizes x dense, ticket, gain)."""
    from orchestrator.stats import holm
    rows, diffs = [], []
    for size, g in p.groupby("images_per_class"):
        wide = g.pivot(index="seed", columns="scheme", values=["dense", "ticket", "gain"]).dropna()
        means = [f"{wide[w]['paper'].mean():.3f} / {wide[w]['torchvision'].mean():.3f}"
                 for w in ("dense", "ticket", "gain")]
        rows.append((size, len(wide), means))
        diffs += [_mean_ci(wide[w]["paper"] - wide[w]["torchvision"]) for w in ("dense", "ticket", "gain")]
    adjusted = holm([d[3] for d in diffs])
    lines = ["| images / class | seeds | dense: paper / torchvision | ticket: paper / torchvision | "
             "gain: paper / torchvision | paper - torchvision: dense | ticket | gain |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (size, n, means) in enumerate(rows):
        cells = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] p {pv:.2g}, Holm {ph:.2g}"
                 for (m, lo, hi, pv), ph in zip(diffs[3 * i:3 * i + 3], adjusted[3 * i:3 * i + 3])]
        lines.append(f"| {size} | {n} | " + " | ".join(means + cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.init_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="runs")
    ap.add_argument("--no-run", action="store_true", help="only print the table of a finished sweep")
    ap.add_argument("--select", default="val", choices=["val", "test"])
    ap.add_argument("--out", default=None,
                    help=f"also write the output here (default {OUTPUT}; with --select test, none)")
    a = ap.parse_args(argv)
    if a.out is None and a.select == "val":
        a.out = OUTPUT
    if not a.no_run and (rc := run_experiment("init_study", a.storage)):
        return rc
    p = paired(load_results(a.storage, "init_study"), a.select)
    write_output(a.out, [
        f"Paired differences between init schemes, test accuracy, winning ticket selected on `{a.select}`; "
        f"mean over seeds [95% t interval], the paired t-test's p and its Holm adjustment over the "
        f"table's {3 * p['images_per_class'].nunique()} differences:\n",
        table(p)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
