"""Which figures and tables `lth-sweep report` shows, in what order, with what
titles and captions; evaluations add their own (workers/evaluations/, `views`)
after the view their `report_after` names.

Each builder turns derivations (derive.py) into a `Plot` (drawn by figures.py)
or a `Table` of formatted cells, or raises `Skip` when its data is missing.
Datasets are grouped by the traits their registry entries declare (Table 2:
many_class, Table 3: long_tail), never by name.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from orchestrator import adaptive_views, stats, tables
from orchestrator.formatting import MISSING, fixed, interval, p_text, pm, value_text
from orchestrator.results import load_layers
from workers.evaluations import EVALUATIONS
from workers.store import SweepStore

from . import figures
from .evaluation_views import evaluation_views
from .derive import (CAPACITY, accuracy_vs_density, capacity_bars, datasets_with, density_curves, finished,
                     gain_points, layer_density_lines, methods_table, size_points, trial_summary, with_size)
from .items import Plot, ReportInputs, ReportItem, ReportView, Skip, Table, plot


# --- tables -------------------------------------------------------------------

def _extras(t: pd.DataFrame, cells: str) -> dict:
    """Columns for the spec fields in which the table's rows differ."""
    e = tables.cell_columns(t[cells])
    return {k: e[k].map(value_text) for k in e.columns if k not in ("fraction", "images_per_class")}


def show_methods(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "method": t["method"], "dataset": t["dataset"], "arch": t["arch"],
        **_extras(t, "cell_noaug"),
        "data size": t["size"],
        "dense + aug*": [pm(m, s) for m, s in zip(t["dense_test_acc_mean"], t["dense_test_acc_std"])],
        "aug* (dense)": t["dense_aug"].map(value_text),
        "winning ticket + aug*": [pm(m, s) for m, s in zip(t["ticket_test_acc_mean"], t["ticket_test_acc_std"])],
        "aug* (ticket)": t["ticket_aug"].map(value_text),
        "ticket density": t["ticket_density_mean"].map(fixed),
        "gain": t["gain"].map(fixed),
    })


TABLE1_CAPTION = ("Test accuracy; aug* = the augmentation with the best mean accuracy on the selection split, "
                  "chosen separately for the dense network (round 0) and the winning ticket; gain = ticket + aug* "
                  "− dense + aug*. Mean ± std over the seeds of finished lineages.")


def table_methods(trials: pd.DataFrame) -> Table:
    if finished(trials).empty:
        raise Skip("no finished lineage yet")
    return Table(show_methods(methods_table(trials)), TABLE1_CAPTION)


def _trait_table(trials: pd.DataFrame, trait: str, caption: str) -> Table:
    """Table 1 restricted to the datasets registered with `trait`."""
    names = datasets_with(trait)
    if not names:
        raise Skip(f"no registered dataset has the {trait} trait")
    subset = trials[trials["dataset"].isin(names)]
    if finished(subset).empty:
        raise Skip(f"no finished trials on {' or '.join(names)}")
    return Table(show_methods(methods_table(subset)), caption)


def table_many_class(trials: pd.DataFrame) -> Table:
    return _trait_table(trials, "many_class", f"{TABLE1_CAPTION} Datasets with many classes: "
                                              f"{', '.join(datasets_with('many_class'))}.")


def table_long_tail(trials: pd.DataFrame) -> Table:
    return _trait_table(trials, "long_tail", TABLE1_CAPTION + " One row per imbalance ratio.")


def show_compare(c: pd.DataFrame) -> pd.DataFrame:
    """A compare() table for reading: accuracies, the paired gain, its interval
    and p-values, and whether the effect survives Holm's correction."""
    return pd.DataFrame({
        **{k: c[k].map(value_text) for k in c.columns
           if k not in tables.FIXED and k not in _COMPARE_STATS},
        "dataset": c["dataset"], "method": c["method"], "arch": c["arch"],
        "data size": with_size(c)["size"], "augmentation": c["augmentation"],
        "seeds": c["n_seeds"],
        "dense": [pm(m, s) for m, s in zip(c["dense_test_acc"], c["dense_test_std"])],
        "winning ticket": [pm(m, s) for m, s in zip(c["ticket_test_acc"], c["ticket_test_std"])],
        "ticket density": c["ticket_density"].map(fixed),
        "gain": c["gain"].map(fixed),
        "95% interval": [interval(lo, hi) for lo, hi in zip(c["gain_ci_low"], c["gain_ci_high"])],
        "interval": c["ci_method"].map(value_text),
        "p": c["p_value"].map(p_text), "p (Holm)": c["p_holm"].map(p_text),
        f"survives Holm (p < {stats.ALPHA:g})": [MISSING if pd.isna(p) else "yes" if p < stats.ALPHA else "no"
                                                 for p in c["p_holm"]],
        "P(ticket > dense)": c["prob_ticket_better"].map(fixed),
    })


_COMPARE_STATS = {"selection", *tables.COMPARE_STATS, "n_unfinished", "cell_id"}


def table_compare(df: pd.DataFrame, select: str, ci: str = tables.DEFAULT_CI) -> Table:
    if df.empty:
        raise Skip("no rows yet")
    c = tables.compare(df, select, ci)
    caption = ("Per grid cell (every spec field but the seed, and the numerics): dense (round 0) and winning-ticket "
               "test accuracy, mean ± std over the seeds of finished lineages with a winning ticket (every number "
               "of a row over the same seeds); gain = mean of the per-seed paired differences (ticket − dense of "
               "the same lineage) with its 95% interval (method per row under 'interval') and two-sided p-value. "
               f"The rows are one family: 'survives Holm' marks the gains whose Holm-adjusted p is below "
               f"{stats.ALPHA:g}, the effects this table supports after testing all its rows at once. "
               + tables.family(c))
    remarks = tables.notes(c, select)
    return Table(show_compare(c), caption + (" Note: " + "; ".join(remarks) + "." if remarks else ""))


def table_power(df: pd.DataFrame, select: str, effect: float = 0.02) -> Table:
    if df.empty:
        raise Skip("no rows yet")
    p = tables.power(df, select, effect)
    if not (p["n_seeds"] >= 2).any():
        raise Skip("no cell has two seeds with a winning ticket yet: a spread between seeds needs two")
    shown = pd.DataFrame({
        **{k: p[k].map(value_text) for k in p.columns if k not in tables.FIXED and k not in _POWER_STATS},
        "dataset": p["dataset"], "method": p["method"], "arch": p["arch"], "data size": with_size(p)["size"],
        "augmentation": p["augmentation"], "seeds": p["n_seeds"], "gain": p["gain"].map(fixed),
        "sd of per-seed gains": p["gain_sd"].map(fixed),
        "smallest gain detectable (80% power)": p["min_detectable_gain"].map(fixed),
        f"power for a gain of {effect:g}": p["power_for_effect"].map(lambda v: MISSING if pd.isna(v) else f"{v:.0%}"),
        f"seeds for a gain of {effect:g}": [
            "not reachable on this test split" if r is False else value_text(v)
            for v, r in zip(p["seeds_for_effect"], p["reachable"].astype(object))],
        "test": p["power_test"]})
    remarks = tables.power_notes(p, effect)
    return Table(shown, "How many seeds: per cell, what its interval's test can detect with the seeds it has, "
                        f"and the seeds a gain of {effect:g} would need (`lth-sweep query --power --effect X` for "
                        "another gain). " + tables.power_line(effect)
                 + (" Note: " + "; ".join(remarks) + "." if remarks else ""))


_POWER_STATS = {"selection", "n_seeds", "gain", "gain_sd", "min_detectable_gain", "effect", "power_for_effect",
                "seeds_for_effect", "cell_id", "split_sd", "reachable", "power_test"}


def table_protocols(df: pd.DataFrame, ci: str = tables.DEFAULT_CI) -> Table:
    if df.empty:
        raise Skip("no rows yet")
    p = tables.protocols(df, ci)
    shown = pd.DataFrame({
        **{k: p[k].map(value_text) for k in p.columns if k not in tables.FIXED and k not in _PROTOCOL_STATS},
        "dataset": p["dataset"], "method": p["method"], "arch": p["arch"], "data size": with_size(p)["size"],
        "augmentation": p["augmentation"],
        "gain (val)": p["gain_val"].map(fixed),
        "95% interval (val)": [interval(lo, hi) for lo, hi in zip(p["gain_ci_low_val"], p["gain_ci_high_val"])],
        "gain (test)": p["gain_test"].map(fixed),
        "95% interval (test)": [interval(lo, hi) for lo, hi in zip(p["gain_ci_low_test"], p["gain_ci_high_test"])],
        "selection bias": p["selection_bias"].map(fixed),
        "seeds (val, test, both)": [f"{v}, {t}, {b}" for v, t, b in
                                    zip(p["n_seeds_val"].fillna(0).astype(int), p["n_seeds_test"].fillna(0).astype(int),
                                        p["n_seeds_both"])]})
    return Table(shown, "The same lineages under both protocols: the winning ticket selected on held-out images "
                        "(val) and on the test split (test, the paper's protocol). Selection bias = the mean over "
                        "the lineages with a ticket under both of test-selected gain − val-selected gain: how much "
                        "choosing on the test split flatters the ticket. Missing under val where no image was held "
                        "out.", both_protocols=True)


_PROTOCOL_STATS = {"val_per_class", "n_seeds_val", "gain_val", "gain_ci_low_val", "gain_ci_high_val", "n_seeds_test",
                   "gain_test", "gain_ci_low_test", "gain_ci_high_test", "n_seeds_both", "selection_bias", "cell_id"}


# --- figures ------------------------------------------------------------------

def fig_accuracy_density(df: pd.DataFrame, select: str) -> Plot:
    return plot("fig1_accuracy_vs_density.png", density_curves(df, select).dropna(subset=["density", "mean"]),
                "no IMP rounds yet", lambda d: figures.accuracy_vs_density(d, "IMP: test accuracy against density"),
                "One panel per cell without augmentation (dataset, training-data size, ...), one line per "
                "augmentation: mean test accuracy over seeds at each IMP round (band: ± std when several seeds). "
                "★ = the winning ticket of the seed-mean curve (best mean accuracy on the selection split, ties: "
                "the sparser).")


def fig_data_efficiency(trials: pd.DataFrame) -> Plot:
    return plot("fig2_data_efficiency.png", size_points(trials, "test_acc"), "no finished IMP lineage yet",
                lambda d: figures.against_size(d, "Dense vs winning ticket against training-data size",
                                               "test accuracy (%)"),
                "IMP's dense network (round 0) and winning ticket, test accuracy against the training-data size: "
                "without augmentation and with aug* (the augmentation with the best mean accuracy on the selection "
                "split at that size, named beside its point). Error bars: std over seeds.")


def fig_gain(df: pd.DataFrame, select: str, ci: str = tables.DEFAULT_CI) -> Plot:
    return plot("fig2b_gain.png", gain_points(df, select, ci), "no finished IMP lineage with a winning ticket yet",
                lambda d: figures.gains_against_size(d, "Winning ticket minus dense network, paired over seeds",
                                                     "gain in test accuracy (points)"),
                "Per cell, the mean over seeds of the paired gain (winning-ticket minus dense test accuracy of the "
                "same lineage), one line per augmentation, with its 95% interval (the method in the protocol below; "
                "no bar where a cell has none). Above zero: the ticket beats its dense network.")


def fig_capacity(trials: pd.DataFrame) -> Plot:
    bars = capacity_bars(trials) if finished(trials)["method"].isin(CAPACITY).any() else pd.DataFrame()
    return plot("fig4_capacity.png", bars, f"no finished {', '.join(CAPACITY)} trials: nothing to compare IMP with",
                lambda d: figures.grouped_bars(d, "Capacity and connectivity: test accuracy"),
                "Per (dataset, training-data size) and augmentation: IMP's dense network (round 0) and winning "
                "ticket, and each control method at its winning round. Mean over seeds, error bars std.")


def fig_layers(df: pd.DataFrame, layers: pd.DataFrame) -> Plot:
    return plot("fig5_layer_density.png", layer_density_lines(df, layers) if len(layers) else pd.DataFrame(),
                "no per-layer densities of IMP trials yet (layers/ table)",
                lambda d: figures.layer_lines(d, "Layer-wise density of the sparsest ticket"),
                "Per IMP trial its sparsest committed round; each line is the mean per-layer density of those "
                "rounds over the seeds and augmentations of one training-data size (on a partial sweep they "
                "can be different rounds: the legend gives their mean overall density).")


def summary(frame: pd.DataFrame, caption: str = "") -> Table:
    if frame.empty:
        raise Skip("no rows yet")
    return Table(frame, caption)


# --- the report's order -------------------------------------------------------------

def core_views(report: ReportInputs) -> list[tuple[str, str, Callable[[], ReportItem]]]:
    """(key, title, builder) of the report's own views, in report order; the key
    is what an evaluation's `report_after` names."""
    df, trials, select, ci = report.results, report.trials, report.select, report.ci
    long_tail = ", ".join(datasets_with("long_tail"))
    return [
        ("fig1", "Figure 1: test accuracy against density", lambda: fig_accuracy_density(df, select)),
        ("fig2", "Figure 2: dense vs winning ticket against training-data size", lambda: fig_data_efficiency(trials)),
        ("fig2b", "Figure 2b: paired gain of the winning ticket, with 95% intervals",
         lambda: fig_gain(df, select, ci)),
        ("fig4", "Figure 4: capacity and connectivity controls", lambda: fig_capacity(trials)),
        ("fig5", "Figure 5: layer-wise density of the sparsest ticket",
         lambda: fig_layers(df, load_layers(report.sweep))),
        ("compare", "Dense vs winning ticket per grid cell, paired over seeds",
         lambda: table_compare(df, select, ci)),
        ("adaptive", "Adaptive seeds: which claims resolved, and at how many seeds",
         lambda: adaptive_views.table_adaptive(report)),
        ("power", "How many seeds: the gains each cell can detect", lambda: table_power(df, select)),
        ("protocols", "Both selection protocols side by side", lambda: table_protocols(df, ci)),
        ("table1", "Table 1: methods x datasets, dense + aug* vs winning ticket + aug*",
         lambda: table_methods(trials)),
        ("table2", "Table 2: many-class subsets", lambda: table_many_class(trials)),
        ("table3", f"Table 3: long-tail ({long_tail})" if long_tail else "Table 3: long-tail",
         lambda: table_long_tail(trials)),
        ("accuracy", "Test accuracy against round/density (mean over seeds)",
         lambda: summary(accuracy_vs_density(df))),
        ("tickets", "Winning ticket of every trial",
         lambda: summary(tables.winning_tickets(df, select)[["trial_id", *tables.FIXED, "seed", "round", "density",
                                                            "val_acc", "test_acc"]] if len(df) else df)),
    ]


def views(sweep: SweepStore, df: pd.DataFrame, select: str, ci: str = tables.DEFAULT_CI) -> list[ReportView]:
    """(title, builder) of every figure and table, in report order: the report's
    own, each followed by the views of the evaluations placed after it (in
    registry order). A builder runs lazily so that one view's missing data
    skips that view only."""
    if df.empty:
        def nothing(why="no rows yet"):
            def build():
                raise Skip(why)
            return build
        return [("Figure 1: test accuracy against density", nothing("no IMP rounds yet")),
                ("Dense vs winning ticket per grid cell, paired over seeds", nothing())]
    report = ReportInputs(sweep, df, select, trial_summary(df, select), ci)
    core = core_views(report)
    keys = [key for key, _, _ in core]
    for ev in EVALUATIONS.values():
        if ev.report_after not in keys:  # a typo would drop its views without a word
            raise ValueError(f"evaluation {ev.name}: report_after {ev.report_after!r} is not a report view; "
                             f"one of {', '.join(keys)}")
    out: list[ReportView] = []
    for key, title, build in core:
        out.append((title, build))
        for ev in EVALUATIONS.values():
            if ev.report_after == key:
                out += evaluation_views(report, ev)
    return out
