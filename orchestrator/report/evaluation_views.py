"""The report views of the evaluations (workers/evaluations/), placed, titled
and skipped like the report's own: what each evaluation declares as data (its
`views`: tables of means, rendered by `declared_views`), and the built-in
evaluations' figures, registered here by name (BUILT_IN). The evaluations
never import this side.

    robustness  Figure 3a, 3b, ...: one per suite column (acc_<suite>)
    probe       Table 4: linear probe, dense vs winning ticket
    cka         Figure 6: CKA heatmaps
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from orchestrator.formatting import fixed, pm
from workers.evaluations import EVALUATIONS

from . import figures
from .derive import SIZE, finished, over_seeds, size_points
from .items import Plot, ReportInputs, ReportView, Skip, Table, need_columns, plot

# Every results column an evaluation fills per round -> its name in captions and axes.
ROUND_LABELS = {c: label for e in EVALUATIONS.values() for c, label in e.labels.items()}


def figure_letters(n: int) -> list[str]:
    """a, b, ..., z, aa, ab, ...: one letter per panel of a numbered figure, however many."""
    out = []
    for i in range(1, n + 1):
        letters = ""
        while i:
            i, r = divmod(i - 1, 26)
            letters = chr(ord("a") + r) + letters
        out.append(letters)
    return out


# --- robustness -----------------------------------------------------------------

def fig_robustness(trials: pd.DataFrame, column: str, label: Optional[str] = None) -> Plot:
    if f"dense_{column}" not in trials:
        raise Skip(f"the results table has no {column} column")
    label = label or ROUND_LABELS.get(column, column)
    return plot(f"fig3_robustness_{column}.png", size_points(trials, column),
                f"no IMP trial has a value of {column} yet",
                lambda d: figures.against_size(d, f"Robustness: accuracy on {label} against training-data size",
                                               f"{label} accuracy (%)"),
                f"As Figure 2, with the accuracy on {label} (`{column}`) of the same selected rounds.")


def robustness_views(report: ReportInputs, labels: dict[str, str]) -> list[ReportView]:
    """Figure 3<letter> per results column in `labels` (column -> suite name)."""
    return [(f"Figure 3{letter}: robustness on {label}",
             lambda c=column, lab=label: fig_robustness(report.trials, c, lab))
            for letter, (column, label) in zip(figure_letters(len(labels)), labels.items())]


# --- linear probe -------------------------------------------------------------------

def probe_numbers(probe: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, target): linear-probe accuracy of the dense round and of the
    winning ticket, over the seeds of finished lineages, and the gain."""
    trials = finished(trials)
    shown = ["dataset", "arch", *SIZE, "augmentation", "method"]
    p = probe.merge(trials[["trial_id", "cell_id", *shown, "ticket_round"]], on="trial_id")
    dense = p[p["round"] == 0][["trial_id", "target", "accuracy"]].rename(columns={"accuracy": "dense"})
    ticket = p[p["round"] == p["ticket_round"]][["trial_id", "target", "accuracy"]].rename(
        columns={"accuracy": "ticket"})
    per_trial = p.drop_duplicates(["trial_id", "target"])[["trial_id", "cell_id", *shown, "target"]]
    per_trial = per_trial.merge(dense, how="left").merge(ticket, how="left")
    out = over_seeds(per_trial, ["cell_id", *shown, "target"], ["dense", "ticket"])
    out["gain"] = out["ticket_mean"] - out["dense_mean"]
    return out


def table_probe(probe: pd.DataFrame, trials: pd.DataFrame) -> Table:
    need_columns(probe, "probe", ["trial_id", "round", "target", "accuracy"])
    t = probe_numbers(probe, trials)
    if t.empty:
        raise Skip("no probe rows of this sweep's finished trials")
    shown = pd.DataFrame({
        "dataset": t["dataset"], "arch": t["arch"], "data size": t["size"], "augmentation": t["augmentation"],
        "method": t["method"], "target": t["target"],
        "dense probe": [pm(m, s) for m, s in zip(t["dense_mean"], t["dense_std"])],
        "winning ticket probe": [pm(m, s) for m, s in zip(t["ticket_mean"], t["ticket_std"])],
        "gain": t["gain"].map(fixed)})
    return Table(shown, "Linear-probe accuracy on each target of the dense network (round 0) and of the "
                        "winning ticket. Mean ± std over seeds.")


def probe_views(report: ReportInputs) -> list[ReportView]:
    return [("Table 4: linear probe, dense vs winning ticket",
             lambda: table_probe(report.table("probe"), report.trials))]


# --- CKA ----------------------------------------------------------------------------

def cka_cells(cka: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """CKA per (pair of networks, layer), averaged over the seeds behind the same
    pair description; a network is named by its cell and role (dense, ticket, round k)."""
    info = {t.trial_id: t for t in trials.itertuples(index=False)}

    def cell(tid):
        t = info.get(tid)
        return tid[:8] if t is None else f"{t.dataset} {t.size} {t.augmentation} {t.method}"

    def role(tid, k):
        t = info.get(tid)
        return "dense" if k == 0 else "ticket" if t is not None and k == t.ticket_round else f"round {k}"

    pairs = []
    for a, ka, b, kb in cka[["trial_a", "round_a", "trial_b", "round_b"]].itertuples(index=False):
        same = cell(a) == cell(b)
        pairs.append(f"{cell(a)}: {role(a, ka)} vs {role(b, kb)}" if same
                     else f"{cell(a)} {role(a, ka)} vs {cell(b)} {role(b, kb)}")
    d = cka.assign(row=pairs, panel=[info[a].dataset if a in info else "trials not in the results"
                                     for a in cka["trial_a"]])
    out = d.groupby(["panel", "row", "layer"], sort=False)["cka"].mean().reset_index()
    out["layer"] = [str(n).removesuffix(".weight") for n in out["layer"]]
    return out.rename(columns={"cka": "value"}).sort_values(["panel", "row"], kind="stable")


def fig_cka(cka: pd.DataFrame, trials: pd.DataFrame) -> Plot:
    need_columns(cka, "cka", ["trial_a", "round_a", "trial_b", "round_b", "layer", "cka"])
    return plot("fig6_cka.png", cka_cells(cka.dropna(subset=["cka"]), trials), "the cka/ table has no values",
                lambda d: figures.heatmaps(d, "Representation similarity (linear CKA) per layer"),
                "Linear CKA between the representations of two networks at each layer, mean over the seeds "
                "behind each row. A network is named by dataset, training-data size, augmentation, method and "
                "round (dense = round 0, ticket = the trial's winning ticket).")


def cka_views(report: ReportInputs) -> list[ReportView]:
    return [("Figure 6: CKA heatmaps", lambda: fig_cka(report.table("cka"), report.trials))]


# --- by evaluation -------------------------------------------------------------------

BUILT_IN = {"robustness": lambda report, ev: robustness_views(report, ev.labels),
            "probe": lambda report, ev: probe_views(report),
            "cka": lambda report, ev: cka_views(report)}


def declared_views(report: ReportInputs, ev) -> list[ReportView]:
    """The tables an evaluation declares (workers/evaluations/base.py `views`):
    the means of `mean` per `by` over its table's rows."""
    out = []
    for v in ev.views:
        by = [v["by"]] if isinstance(v["by"], str) else list(v["by"])

        def build(v=v, by=by):
            rows = report.table(v["table"])
            need_columns(rows, v["table"], by + list(v["mean"]))
            return Table(rows.groupby(by, as_index=False)[list(v["mean"])].mean(),
                         v.get("caption", f"Mean {', '.join(v['mean'])} per {', '.join(by)}."))
        out.append((v["title"], build))
    return out


def evaluation_views(report: ReportInputs, ev) -> list[ReportView]:
    """Every view of evaluation `ev`: its built-in figures, then what it declares."""
    built_in = BUILT_IN.get(ev.name)
    return (built_in(report, ev) if built_in else []) + declared_views(report, ev)
