"""`lth-sweep report`: the paper's figures (PNG) and tables for one sweep, as
report.md (linking the PNGs) and a self-contained report.html (embedding them).

Works on a partial sweep: a figure or table whose data is not there (yet) is
skipped with a one-line note, and a missing cell stays missing, never zero.

The selections every view shares:
  dense           a trial's round 0
  winning ticket  a trial's best round on the selection split (`select`: val,
                  held-out images, the default; or test, the paper's protocol),
                  ties to the sparser (workers/selection.py)
  aug*            per cell, the augmentation whose dense (or ticket) round has
                  the best mean accuracy on the selection split over seeds; its
                  test metric is reported. Chosen among all augmentations.
  cell            every spec field but the seed (orchestrator/tables.py): rows
                  that differ in anything else are never averaged together
Numbers are means over seeds (sample std beside them); gains are paired
(ticket minus dense of the same lineage) with a 95% t interval. Every caption
ends with the protocol: selection, validation budget, BatchNorm statistics.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from dataclasses import dataclass
from typing import Callable, Union

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from orchestrator import figures
from orchestrator import tables as T
from orchestrator.results import format_frame, load_layers, load_results, to_pandas
from orchestrator.status import sweep_status
from workers import selection as S
from workers.evaluations import EVALUATIONS
from workers.methods import METHODS
from workers.store import SweepStore

# Accuracy on distribution-shifted test sets, when the results carry it.
ROBUSTNESS = {c: label for e in EVALUATIONS.values() for c, label in e.labels.items()}
MANY_CLASS = ["cifar100", "imagenet"]
CAPACITY = [name for name, m in METHODS.items() if m.control]  # in registry order
# One (dataset, data size) cell; size_kind/size_x keep sizes in numeric order.
SIZE = ["size_kind", "size_x", "size"]
# Cells without the axes a view compares along: the groups it draws or tabulates.
NO_AUG, NO_SIZE = ("augmentation",), ("augmentation", "fraction", "images_per_class")
MISSING = "–"


class Skip(Exception):
    """A view whose data this sweep does not have (yet): a note, not an error."""


@dataclass
class Plot:
    filename: str
    png: bytes
    caption: str


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    both_protocols: bool = False  # shows val and test selection side by side


# --- the shared selections ----------------------------------------------------

def with_size(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds the data-size columns: a cell is sized by `fraction` or, in its
    place, by `images_per_class` (size_x is the number to plot against)."""
    d = frame.copy()
    fraction = d["fraction"].astype("Float64")
    d["size_kind"] = ["fraction" if pd.notna(f) else "images per class" for f in fraction]
    d["size_x"] = fraction.fillna(d["images_per_class"].astype("Float64")).astype(float)
    d["size"] = [MISSING if pd.isna(x) else f"{x * 100:g}%" if k == "fraction" else f"{x:g} img/class"
                 for k, x in zip(d["size_kind"], d["size_x"])]
    return d


def trial_summary(df: pd.DataFrame, select: str = S.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial: its dense round and its winning ticket under `select`
    side by side (dense_<metric>, ticket_<metric>, ticket_round; a round it lacks
    stays NaN), its cell (and the cell without augmentation / size / method, the
    groups the views use) and whether its lineage is finished."""
    df = T.with_cells(df)
    keys = ["trial_id", "cell_id", "cell", *T.FIXED, "seed", *[c for c in ("imbalance",) if c in df]]
    metrics = ["density", "val_acc", "test_acc", *[c for c in ROBUSTNESS if c in df]]
    winners = T.winning_tickets(df[["trial_id", "round", "density", "val_acc", "test_acc"]], select)
    out = df.drop_duplicates("trial_id")[keys]
    rounds = df.groupby("trial_id")["round"].count().rename("n_rounds")
    planned = df.groupby("trial_id")["lineage_rounds"].max()
    out["complete"] = [planned.get(t) is None or pd.isna(planned.get(t)) or rounds[t] >= planned[t]
                       for t in out["trial_id"]]
    for role, rows in (("dense", df[df["round"] == 0]),
                       ("ticket", df.merge(winners[["trial_id", "round"]], on=["trial_id", "round"]))):
        values = rows[metrics].astype(float).add_prefix(f"{role}_")
        values["trial_id"], values[f"{role}_round"] = rows["trial_id"], rows["round"]
        out = out.merge(values, on="trial_id", how="left")
    for name, drop in (("cell_noaug", NO_AUG), ("cell_nosize", NO_SIZE)):
        out[name] = T.cell_without(out["cell"], drop)
    out.attrs["select"] = select
    return with_size(out)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose lineage is complete: only those have a winning ticket."""
    return trials[trials["complete"]]


def over_seeds(frame: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """<col>_mean and <col>_std (sample std: NaN for one seed) per `keys` cell."""
    out = frame.groupby(keys, dropna=False, sort=True)[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{stat}" for c, stat in out.columns]
    return out.reset_index()


def best_augmentation(trials: pd.DataFrame, keys: list[str], role: str, metrics: list[str],
                      select: str) -> pd.DataFrame:
    """Per `keys` group, aug*: the augmentation whose `role` round has the best
    mean selection-split accuracy over seeds (ties: the first by name), with
    mean/std of each of its `role` metrics. Columns: keys, <role>_aug, <role>_<metric>_mean/_std."""
    by = f"{role}_{S.metric(select)}"
    cells = over_seeds(trials, [*keys, "augmentation"], list(dict.fromkeys([by, *(f"{role}_{m}" for m in metrics)])))
    cells = cells.dropna(subset=[f"{by}_mean"])
    best = cells.sort_values([f"{by}_mean", "augmentation"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates(keys).rename(columns={"augmentation": f"{role}_aug"})
    stats = [f"{role}_{m}_{s}" for m in metrics for s in ("mean", "std")]
    return best[[*keys, f"{role}_aug", *stats]]


def group_labels(cells: pd.Series, base: pd.DataFrame, fixed: list[str]) -> list[str]:
    """A readable name per group: the `fixed` columns of `base` plus the spec
    fields in which the shown groups differ (so two groups never share a name)."""
    extras = T.cell_columns(cells)
    out = []
    for i, row in enumerate(base[fixed].itertuples(index=False)):
        parts = [f"train {v}" if k == "size" else str(v) for k, v in zip(fixed, row)]
        parts += [f"{k} {text(extras.iloc[i][k])}" for k in extras.columns
                  if k not in ("fraction", "images_per_class") and pd.notna(extras.iloc[i][k])]
        out.append(" · ".join(parts))
    return out


# --- tables -------------------------------------------------------------------

def methods_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Table 1 in numbers: per cell without augmentation (method, dataset, arch,
    data size and any other field the cells differ in), dense + aug* and winning
    ticket + aug* test accuracy, the ticket's density, and the gain."""
    select = trials.attrs.get("select", S.DEFAULT_SELECTION)
    trials = finished(trials)
    keys = ["cell_noaug"]
    shown = ["method", "dataset", "arch", *SIZE]
    out = trials[[*keys, *shown]].drop_duplicates(keys).sort_values([*shown, *keys], kind="stable")
    out = out.merge(best_augmentation(trials, keys, "dense", ["test_acc"], select), on=keys, how="left")
    out = out.merge(best_augmentation(trials, keys, "ticket", ["test_acc", "density"], select), on=keys,
                    how="left")
    out["gain"] = out["ticket_test_acc_mean"] - out["dense_test_acc_mean"]
    return out.reset_index(drop=True)


def pm(mean, std) -> str:
    if pd.isna(mean):
        return MISSING
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def number(v) -> str:
    return MISSING if pd.isna(v) else f"{v:.4f}"


def text(v) -> str:
    return MISSING if v is None or (not isinstance(v, str) and pd.isna(v)) else \
        f"{v:g}" if isinstance(v, float) else str(v)


def interval(lo, hi) -> str:
    return MISSING if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.4f}, {hi:+.4f}]"


def _extras(t: pd.DataFrame, cells: str) -> dict:
    """Columns for the spec fields in which the table's rows differ."""
    e = T.cell_columns(t[cells])
    return {k: e[k].map(text) for k in e.columns if k not in ("fraction", "images_per_class")}


def show_methods(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "method": t["method"], "dataset": t["dataset"], "arch": t["arch"],
        **_extras(t, "cell_noaug"),
        "data size": t["size"],
        "dense + aug*": [pm(m, s) for m, s in zip(t["dense_test_acc_mean"], t["dense_test_acc_std"])],
        "aug* (dense)": t["dense_aug"].map(text),
        "winning ticket + aug*": [pm(m, s) for m, s in zip(t["ticket_test_acc_mean"], t["ticket_test_acc_std"])],
        "aug* (ticket)": t["ticket_aug"].map(text),
        "ticket density": t["ticket_density_mean"].map(number),
        "gain": t["gain"].map(number),
    })


TABLE1_CAPTION = ("Test accuracy; aug* = the augmentation with the best mean accuracy on the selection split, "
                  "chosen separately for the dense network (round 0) and the winning ticket; gain = ticket + aug* "
                  "− dense + aug*. Mean ± std over the seeds of finished lineages.")


def table_methods(trials: pd.DataFrame) -> Table:
    if finished(trials).empty:
        raise Skip("no finished lineage yet")
    return Table(show_methods(methods_table(trials)), TABLE1_CAPTION)


def table_many_class(trials: pd.DataFrame) -> Table:
    subset = trials[trials["dataset"].isin(MANY_CLASS)]
    if finished(subset).empty:
        raise Skip(f"no finished trials on {' or '.join(MANY_CLASS)}")
    return Table(show_methods(methods_table(subset)), TABLE1_CAPTION)


def table_long_tail(trials: pd.DataFrame) -> Table:
    subset = trials[trials["dataset"] == "cifar100_lt"]
    if finished(subset).empty:
        raise Skip("no finished trials on cifar100_lt")
    return Table(show_methods(methods_table(subset)), TABLE1_CAPTION + " One row per imbalance ratio.")


def show_compare(c: pd.DataFrame) -> pd.DataFrame:
    """A compare() table for reading: accuracies, the paired gain and its interval."""
    return pd.DataFrame({
        **{k: c[k].map(text) for k in c.columns
           if k not in T.FIXED and k not in _COMPARE_STATS},
        "dataset": c["dataset"], "method": c["method"], "arch": c["arch"],
        "data size": with_size(c)["size"], "augmentation": c["augmentation"],
        "seeds": c["n_seeds"],
        "dense": [pm(m, s) for m, s in zip(c["dense_test_acc"], c["dense_test_std"])],
        "winning ticket": [pm(m, s) for m, s in zip(c["ticket_test_acc"], c["ticket_test_std"])],
        "ticket density": c["ticket_density"].map(number),
        "gain": c["gain"].map(number),
        "95% interval": [interval(lo, hi) for lo, hi in zip(c["gain_ci_low"], c["gain_ci_high"])],
    })


_COMPARE_STATS = {"selection", "val_per_class", "n_seeds", "dense_test_acc", "dense_test_std", "ticket_test_acc",
                  "ticket_test_std", "ticket_density", "gain", "gain_ci_low", "gain_ci_high", "n_unfinished",
                  "cell_id"}


def table_compare(df: pd.DataFrame, select: str) -> Table:
    if df.empty:
        raise Skip("no rows yet")
    c = T.compare(df, select)
    caption = ("Per grid cell (every spec field but the seed): dense (round 0) and winning-ticket test accuracy, "
               "mean ± std over the seeds of finished lineages; gain = mean of the per-seed paired differences "
               "(ticket − dense of the same lineage) with its 95% t interval (none for one seed).")
    remarks = T.notes(c, select)
    return Table(show_compare(c), caption + (" Note: " + "; ".join(remarks) + "." if remarks else ""))


def table_protocols(df: pd.DataFrame) -> Table:
    if df.empty:
        raise Skip("no rows yet")
    p = T.protocols(df)
    shown = pd.DataFrame({
        **{k: p[k].map(text) for k in p.columns if k not in T.FIXED and k not in _PROTOCOL_STATS},
        "dataset": p["dataset"], "method": p["method"], "arch": p["arch"], "data size": with_size(p)["size"],
        "augmentation": p["augmentation"],
        "gain (val)": p["gain_val"].map(number),
        "95% interval (val)": [interval(lo, hi) for lo, hi in zip(p["gain_ci_low_val"], p["gain_ci_high_val"])],
        "gain (test)": p["gain_test"].map(number),
        "95% interval (test)": [interval(lo, hi) for lo, hi in zip(p["gain_ci_low_test"], p["gain_ci_high_test"])],
        "selection bias": p["selection_bias"].map(number),
        "seeds": p["n_seeds_test"]})
    return Table(shown, "The same lineages under both protocols: the winning ticket selected on held-out images "
                        "(val) and on the test split (test, the paper's protocol). Selection bias = test-selected "
                        "gain − val-selected gain: how much choosing on the test split flatters the ticket. "
                        "Missing under val where no image was held out.", both_protocols=True)


_PROTOCOL_STATS = {"val_per_class", "n_seeds_val", "gain_val", "gain_ci_low_val", "gain_ci_high_val", "n_seeds_test",
                   "gain_test", "gain_ci_low_test", "gain_ci_high_test", "selection_bias", "cell_id",
                   "ticket_density_val", "ticket_density_test"}


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
        "gain": t["gain"].map(number)})
    return Table(shown, "Linear-probe accuracy on each target of the dense network (round 0) and of the "
                        "winning ticket. Mean ± std over seeds.")


# --- figures ------------------------------------------------------------------

def density_curves(df: pd.DataFrame, select: str = S.DEFAULT_SELECTION) -> pd.DataFrame:
    """IMP test accuracy per round, over seeds, per (cell, augmentation); `star`
    marks each curve's winning ticket: the selection rule applied to the seed means."""
    imp = T.with_cells(df[df["method"] == "imp"])
    imp = with_size(imp.assign(cell_noaug=T.cell_without(imp["cell"], NO_AUG)))
    c = over_seeds(imp, ["cell_noaug", "dataset", "arch", *SIZE, "augmentation", "round"],
                   ["density", "val_acc", "test_acc"])
    ranked = c.rename(columns={"val_acc_mean": "val_acc", "test_acc_mean": "test_acc", "density_mean": "density"})
    best = S.winners_frame(ranked, select, ["cell_noaug", "augmentation"])
    return pd.DataFrame({"panel": group_labels(c["cell_noaug"], c, ["dataset", "arch", "size"]),
                         "series": c["augmentation"],
                         "round": c["round"], "density": 100 * c["density_mean"],
                         "mean": 100 * c["test_acc_mean"], "std": 100 * c["test_acc_std"],
                         "star": c.index.isin(best.index)})


def plot(filename: str, data: pd.DataFrame, empty: str, draw: Callable[[pd.DataFrame], bytes], caption: str) -> Plot:
    """A figure of `data` (drawn by `draw`), or Skip(`empty`) when there is none."""
    if data.empty:
        raise Skip(empty)
    return Plot(filename, draw(data), caption)


def fig_accuracy_density(df: pd.DataFrame, select: str) -> Plot:
    return plot("fig1_accuracy_vs_density.png", density_curves(df, select).dropna(subset=["density", "mean"]),
                "no IMP rounds yet", lambda d: figures.accuracy_vs_density(d, "IMP: test accuracy against density"),
                "One panel per cell without augmentation (dataset, training-data size, ...), one line per "
                "augmentation: mean test accuracy over seeds at each IMP round (band: ± std when several seeds). "
                "★ = the winning ticket of the seed-mean curve (best mean accuracy on the selection split, ties: "
                "the sparser).")


ROLE = {"dense": "dense", "ticket": "winning ticket"}
XLABEL = {"fraction": "training data (% of the train split, log)",
          "images per class": "training images per class (log)"}


def _points(cells: pd.DataFrame, role: str, metric: str, series: str, note) -> pd.DataFrame:
    # Sizes by fraction and by images per class share no x axis: separate panels.
    titles = group_labels(cells["cell_nosize"], cells, ["dataset", "arch"])
    panels = [t if kind == "fraction" else f"{t} · per class" for t, kind in zip(titles, cells["size_kind"])]
    return pd.DataFrame({"panel": panels,
                         "xlabel": cells["size_kind"].map(XLABEL), "series": series, "x": cells["size_x"],
                         "xtick": [s.replace(" img/class", "") for s in cells["size"]],
                         "mean": 100 * cells[f"{role}_{metric}_mean"], "std": 100 * cells[f"{role}_{metric}_std"],
                         "note": note})


def size_points(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """IMP's dense and winning-ticket `metric` (in %) against data size, per cell
    without augmentation and size: without augmentation (`none`) and with aug*,
    whose choice is the point's note. aug* is left out when `none` is the only
    augmentation."""
    select = trials.attrs.get("select", S.DEFAULT_SELECTION)
    imp = finished(trials[trials["method"] == "imp"])
    keys = ["cell_noaug", "cell_nosize", "dataset", "arch", *SIZE]
    parts = []
    for role, name in ROLE.items():
        none = over_seeds(imp[imp["augmentation"] == "none"], keys, [f"{role}_{metric}"])
        parts.append(_points(none, role, metric, f"{name}, no augmentation", ""))
        if (imp["augmentation"] != "none").any():
            best = best_augmentation(imp, keys, role, [metric], select)
            parts.append(_points(best, role, metric, f"{name}, aug*", best[f"{role}_aug"]))
    return pd.concat(parts, ignore_index=True).dropna(subset=["x", "mean"])


def fig_data_efficiency(trials: pd.DataFrame) -> Plot:
    return plot("fig2_data_efficiency.png", size_points(trials, "test_acc"), "no finished IMP lineage yet",
                lambda d: figures.against_size(d, "Dense vs winning ticket against training-data size",
                                               "test accuracy (%)"),
                "IMP's dense network (round 0) and winning ticket, test accuracy against the training-data size: "
                "without augmentation and with aug* (the augmentation with the best mean accuracy on the selection "
                "split at that size, named beside its point). Error bars: std over seeds.")


def gain_points(df: pd.DataFrame, select: str) -> pd.DataFrame:
    """Per IMP cell: the paired gain (in points) with its 95% interval, against data size."""
    c = T.compare(df[df["method"] == "imp"], select)
    c = c.dropna(subset=["gain"])
    if c.empty:
        return pd.DataFrame(columns=["panel", "xlabel", "series", "x", "xtick", "gain", "lo", "hi"])
    c = with_size(c)
    cells = df[["cell_id", "cell"]].drop_duplicates("cell_id") if "cell" in df else \
        T.with_cells(df)[["cell_id", "cell"]].drop_duplicates("cell_id")
    c = c.merge(cells, on="cell_id", how="left")
    c["cell_nosize"] = T.cell_without(c["cell"], NO_SIZE)
    titles = group_labels(c["cell_nosize"], c, ["dataset", "arch"])
    return pd.DataFrame({"panel": [t if k == "fraction" else f"{t} · per class"
                                   for t, k in zip(titles, c["size_kind"])],
                         "xlabel": c["size_kind"].map(XLABEL), "series": c["augmentation"], "x": c["size_x"],
                         "xtick": [s.replace(" img/class", "") for s in c["size"]],
                         "gain": 100 * c["gain"], "lo": 100 * c["gain_ci_low"].astype(float),
                         "hi": 100 * c["gain_ci_high"].astype(float), "n": c["n_seeds"]})


def fig_gain(df: pd.DataFrame, select: str) -> Plot:
    return plot("fig2b_gain.png", gain_points(df, select), "no finished IMP lineage with a winning ticket yet",
                lambda d: figures.gains_against_size(d, "Winning ticket minus dense network, paired over seeds",
                                                     "gain in test accuracy (points)"),
                "Per cell, the mean over seeds of the paired gain (winning-ticket minus dense test accuracy of the "
                "same lineage), one line per augmentation, with its 95% t interval (no bar for one seed). Above "
                "zero: the ticket beats its dense network.")


def fig_robustness(trials: pd.DataFrame, column: str) -> Plot:
    if f"dense_{column}" not in trials:
        raise Skip(f"the results table has no {column} column")
    label = ROBUSTNESS[column]
    return plot(f"fig3_robustness_{column}.png", size_points(trials, column),
                f"no IMP trial has a value of {column} yet",
                lambda d: figures.against_size(d, f"Robustness: accuracy on {label} against training-data size",
                                               f"{label} accuracy (%)"),
                f"As Figure 2, with the accuracy on {ROBUSTNESS[column]} (`{column}`) of the same selected rounds.")


def capacity_bars(trials: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (in %) per (cell without method, augmentation) of IMP's dense
    and winning ticket and of each capacity/connectivity control at its winning
    round; only cells where some control ran."""
    trials = finished(trials)
    imp, controls = trials[trials["method"] == "imp"], trials[trials["method"].isin(CAPACITY)]
    rows = pd.concat([imp.assign(series="dense", value=imp["dense_test_acc"]),
                      imp.assign(series="winning ticket", value=imp["ticket_test_acc"]),
                      controls.assign(series=controls["method"], value=controls["ticket_test_acc"])])
    rows["cell_nomethodaug"] = T.cell_without(rows["cell"], ("augmentation", "method"))
    have = set(rows.loc[rows["method"].isin(CAPACITY), "cell_nomethodaug"])
    rows = rows[rows["cell_nomethodaug"].isin(have)]
    rows["order"] = rows["series"].map({s: i for i, s in enumerate(["dense", "winning ticket", *CAPACITY])})
    b = over_seeds(rows, ["cell_nomethodaug", "dataset", "arch", *SIZE, "augmentation", "order", "series"],
                   ["value"])
    return pd.DataFrame({"panel": group_labels(b["cell_nomethodaug"], b, ["dataset", "arch", "size"]),
                         "group": b["augmentation"], "series": b["series"], "mean": 100 * b["value_mean"],
                         "std": 100 * b["value_std"]})


def fig_capacity(trials: pd.DataFrame) -> Plot:
    bars = capacity_bars(trials) if finished(trials)["method"].isin(CAPACITY).any() else pd.DataFrame()
    return plot("fig4_capacity.png", bars, f"no finished {', '.join(CAPACITY)} trials: nothing to compare IMP with",
                lambda d: figures.grouped_bars(d, "Capacity and connectivity: test accuracy"),
                "Per (dataset, training-data size) and augmentation: IMP's dense network (round 0) and winning "
                "ticket, and each control method at its winning round. Mean over seeds, error bars std.")


def layer_density_lines(df: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per IMP trial its sparsest committed round; the per-layer densities (in %)
    of those rounds, averaged per data size over seeds and augmentations.
    The series name carries the mean overall density of the rounds averaged."""
    imp = T.with_cells(df[df["method"] == "imp"].dropna(subset=["density"]))
    imp = imp.assign(cell_nosize=T.cell_without(imp["cell"], NO_SIZE))
    sparsest = imp.sort_values(["density", "round"], ascending=[True, False]).drop_duplicates("trial_id")
    sparsest = with_size(sparsest.rename(columns={"density": "round_density"}))
    group = ["cell_nosize", "dataset", "arch", *SIZE]
    rows = layers.merge(sparsest[["trial_id", "round", "round_density", *group]], on=["trial_id", "round"])
    # The layers table keeps the model's order within a round.
    rows["position"] = rows.groupby(["trial_id", "round"]).cumcount()
    overall = sparsest.groupby(group, dropna=False)["round_density"].mean()
    out = rows.groupby([*group, "position"], dropna=False, sort=True).agg(
        layer=("layer", "first"), density=("density", "mean")).reset_index()
    out["series"] = [f"train {s} (overall {100 * overall[k]:.3g}%)"
                     for s, k in zip(out["size"], out[group].itertuples(index=False))]
    out["panel"] = group_labels(out["cell_nosize"], out, ["dataset", "arch"])
    out["density"] *= 100
    out["layer"] = [str(n).removesuffix(".weight") for n in out["layer"]]
    return out[["panel", "series", "position", "layer", "density"]]


def fig_layers(df: pd.DataFrame, layers: pd.DataFrame) -> Plot:
    return plot("fig5_layer_density.png", layer_density_lines(df, layers) if len(layers) else pd.DataFrame(),
                "no per-layer densities of IMP trials yet (layers/ table)",
                lambda d: figures.layer_lines(d, "Layer-wise density of the sparsest ticket"),
                "Per IMP trial its sparsest committed round; each line is the mean per-layer density of those "
                "rounds over the seeds and augmentations of one training-data size (on a partial sweep they "
                "can be different rounds: the legend gives their mean overall density).")


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


# --- optional tables ------------------------------------------------------------

def load_optional(sweep: SweepStore, name: str) -> pd.DataFrame:
    """A table other analyses write beside the results (cka/, probe/): empty when
    the folder does not exist; read through the sweep's filesystem (S3 too)."""
    folder = sweep.table_dir(name)
    if not sweep.fs.exists(folder):
        return pd.DataFrame()
    try:
        return to_pandas(pads.dataset(folder, format="parquet", filesystem=sweep.fs.fs).to_table())
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Skip(f"{name}/ is not readable: {first}")


def need_columns(frame: pd.DataFrame, name: str, columns: list[str]) -> None:
    if frame.empty:
        raise Skip(f"no {name}/ table in this sweep")
    missing = [c for c in columns if c not in frame]
    if missing:
        raise Skip(f"the {name}/ table lacks the column(s) {', '.join(missing)}")


# --- the existing summary tables --------------------------------------------------

def accuracy_vs_density(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean over seeds) per round, one column per grid cell."""
    if df.empty:
        return df
    d = T.with_cells(df)
    names = dict(zip(d["cell_id"], group_labels(d["cell"], d, T.FIXED)))
    d = d.assign(column=d["cell_id"].map(names))
    t = d.groupby(["round", "column"], dropna=False).agg(density=("density", "mean"),
                                                        test_acc=("test_acc", "mean")).reset_index()
    wide = t.pivot(index="round", columns="column", values="test_acc")
    wide.insert(0, "density", t.groupby("round")["density"].mean())
    return wide.reset_index()


def summary(frame: pd.DataFrame, caption: str = "") -> Table:
    if frame.empty:
        raise Skip("no rows yet")
    return Table(frame, caption)


# --- the report -------------------------------------------------------------------

View = Union[Plot, Table]


def views(sweep: SweepStore, df: pd.DataFrame, select: str) -> list[tuple[str, Callable[[], View]]]:
    """(title, builder) of every figure and table, in report order. A builder
    runs lazily so that one view's missing data skips that view only."""
    if df.empty:
        def nothing(why="no rows yet"):
            def build():
                raise Skip(why)
            return build
        return [("Figure 1: test accuracy against density", nothing("no IMP rounds yet")),
                ("Dense vs winning ticket per grid cell, paired over seeds", nothing())]
    trials = trial_summary(df, select)
    return [
        ("Figure 1: test accuracy against density", lambda: fig_accuracy_density(df, select)),
        ("Figure 2: dense vs winning ticket against training-data size", lambda: fig_data_efficiency(trials)),
        ("Figure 2b: paired gain of the winning ticket, with 95% intervals", lambda: fig_gain(df, select)),
        *[(f"Figure 3{letter}: robustness on {label}", lambda c=c: fig_robustness(trials, c))
          for letter, (c, label) in zip("ab", ROBUSTNESS.items())],
        ("Figure 4: capacity and connectivity controls", lambda: fig_capacity(trials)),
        ("Figure 5: layer-wise density of the sparsest ticket", lambda: fig_layers(df, load_layers(sweep))),
        ("Figure 6: CKA heatmaps", lambda: fig_cka(load_optional(sweep, "cka"), trials)),
        ("Dense vs winning ticket per grid cell, paired over seeds", lambda: table_compare(df, select)),
        ("Both selection protocols side by side", lambda: table_protocols(df)),
        ("Table 1: methods x datasets, dense + aug* vs winning ticket + aug*", lambda: table_methods(trials)),
        ("Table 2: many-class subsets", lambda: table_many_class(trials)),
        ("Table 3: long-tail (cifar100_lt)", lambda: table_long_tail(trials)),
        ("Table 4: linear probe, dense vs winning ticket",
         lambda: table_probe(load_optional(sweep, "probe"), trials)),
        ("Test accuracy against round/density (mean over seeds)", lambda: summary(accuracy_vs_density(df))),
        ("Winning ticket of every trial",
         lambda: summary(T.winning_tickets(df, select)[["trial_id", *T.FIXED, "seed", "round", "density",
                                                       "val_acc", "test_acc"]] if len(df) else df)),
    ]


def render_md(title: str, view: Union[View, Skip]) -> list[str]:
    if isinstance(view, Skip):
        return [f"## {title}", "", f"_Skipped: {view}._", ""]
    if isinstance(view, Plot):
        return [f"## {title}", "", f"![{title}]({view.filename})", "", view.caption, ""]
    caption = [view.caption, ""] if view.caption else []
    return [f"## {title}", "", *caption, format_frame(view.frame, "markdown"), ""]


def render_html(title: str, view: Union[View, Skip]) -> list[str]:
    head = f"<h2>{html.escape(title)}</h2>"
    if isinstance(view, Skip):
        return [head, f"<p><em>Skipped: {html.escape(str(view))}.</em></p>"]
    if isinstance(view, Plot):
        data = base64.b64encode(view.png).decode("ascii")
        return [head, f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
                      f"<figcaption>{html.escape(view.caption)}</figcaption></figure>"]
    caption = [f"<p>{html.escape(view.caption)}</p>"] if view.caption else []
    return [head, *caption,
            view.frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4f}")]


SELECTIONS = ("Dense = a trial's round 0; winning ticket = its best round on the selection split (ties: the "
              "sparser), counted only for finished lineages. A cell is every spec field but the seed. Accuracies "
              "are fractions in the tables and percent in the figures; a missing value is shown as – or left "
              "blank, never as zero.")


def intro(sweep: SweepStore) -> str:
    st = sweep_status(sweep)
    t, r = st["trials"], st["rounds"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Sweep `{sweep.sweep}` at `{sweep.fs.to_uri(sweep.dir)}`, {stamp}: "
            f"{t['done']}/{t['total']} trials done ({t['running']} running, {t['pending']} pending, "
            f"{t['failed']} failed), {r['committed']}/{r['total']} rounds committed.")


def write_report(sweep: SweepStore, out_dir: str, select: str = S.DEFAULT_SELECTION) -> list[str]:
    """Writes report.md, report.html and one PNG per figure into out_dir; returns their paths."""
    S.check(select)
    df = load_results(sweep)
    line = intro(sweep)
    protocol = T.protocol_line(select, df) if len(df) else f"Winning ticket: {S.describe(select)}."
    neutral = T.protocol_line(None, df) if len(df) else ""
    md = [f"# lth-sweep report: {sweep.sweep}", "", line, "", f"**Protocol.** {protocol}", "", SELECTIONS, ""]
    page = [f"<h1>lth-sweep report: {html.escape(sweep.sweep)}</h1>", f"<p>{html.escape(line)}</p>",
            f"<p><strong>Protocol.</strong> {html.escape(protocol)}</p>", f"<p>{html.escape(SELECTIONS)}</p>"]
    os.makedirs(out_dir, exist_ok=True)
    pngs = []
    for title, build in views(sweep, df, select):
        try:
            view = build()
        except Skip as skip:
            view = skip
        if isinstance(view, (Plot, Table)):
            # Every table and figure states the protocol it was made with.
            both = isinstance(view, Table) and view.both_protocols
            view.caption = f"{view.caption} {neutral if both else protocol}".strip()
        if isinstance(view, Plot):
            pngs.append(os.path.join(out_dir, view.filename))
            with open(pngs[-1], "wb") as f:
                f.write(view.png)
        md += render_md(title, view)
        page += render_html(title, view)
    paths = [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")]
    # ±, – and ★ are in the text: never the locale's encoding
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write("<!doctype html><meta charset=utf-8><title>lth-sweep report</title>"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
                "img{max-width:100%}figcaption{font-size:90%;color:#444}</style>\n"
                + "\n".join(page))
    return paths + pngs
