"""The report's numbers: pure pandas derivations from the results rows, no
drawing, no files (views.py picks, figures.py draws, render.py writes).

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
(ticket minus dense of the same lineage) with a 95% interval (tables.py).
"""
from __future__ import annotations

import pandas as pd

from orchestrator import tables
from orchestrator.formatting import MISSING, value_text
from orchestrator.results import ROUND_COLUMNS
from workers import selection
from workers.data import DATASETS
from workers.methods import METHODS
from workers.spec import DATASET_PARAMS

CAPACITY = [name for name, m in METHODS.items() if m.control]  # in registry order
# One (dataset, data size) cell; size_kind/size_x keep sizes in numeric order.
SIZE = ["size_kind", "size_x", "size"]
# The order of a figure's panels: dataset, network, then data size by number (not by cell id).
BY_SIZE = ["dataset", "arch", "size_kind", "size_x"]
# Cells without the axes a view compares along: the groups it draws or tabulates.
NO_AUG, NO_SIZE = ("augmentation",), ("augmentation", "fraction", "images_per_class")


def datasets_with(trait: str) -> list[str]:
    """The registered datasets that declare `trait` (DatasetInfo.traits: many_class, long_tail), in registry order."""
    return DATASETS.where(lambda loader: trait in loader.info.traits)


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


def trial_summary(df: pd.DataFrame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial: its dense round and its winning ticket under `select`
    side by side (dense_<metric>, ticket_<metric>, ticket_round; a round it lacks
    stays NaN), its cell (and the cell without augmentation / size / method, the
    groups the views use) and whether its lineage is finished."""
    df = tables.with_cells(df)
    keys = ["trial_id", "cell_id", "cell", *tables.FIXED, "seed", *[c for c in DATASET_PARAMS if c in df]]
    metrics = ["density", "val_acc", "test_acc", *[c for c in ROUND_COLUMNS if c in df]]
    winners = tables.winning_tickets(df[["trial_id", "round", "density", "val_acc", "test_acc"]], select)
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
        out[name] = tables.cell_without(out["cell"], drop)
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
    by = f"{role}_{selection.metric(select)}"
    cells = over_seeds(trials, [*keys, "augmentation"], list(dict.fromkeys([by, *(f"{role}_{m}" for m in metrics)])))
    cells = cells.dropna(subset=[f"{by}_mean"])
    best = cells.sort_values([f"{by}_mean", "augmentation"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates(keys).rename(columns={"augmentation": f"{role}_aug"})
    stats = [f"{role}_{m}_{s}" for m in metrics for s in ("mean", "std")]
    return best[[*keys, f"{role}_aug", *stats]]


def group_labels(cells: pd.Series, base: pd.DataFrame, fixed: list[str]) -> list[str]:
    """A readable name per group: the `fixed` columns of `base` plus the spec
    fields in which the shown groups differ (so two groups never share a name)."""
    extras = tables.cell_columns(cells)
    out = []
    for i, row in enumerate(base[fixed].itertuples(index=False)):
        parts = [f"train {v}" if k == "size" else str(v) for k, v in zip(fixed, row)]
        parts += [f"{k} {value_text(extras.iloc[i][k])}" for k in extras.columns
                  if k not in ("fraction", "images_per_class") and pd.notna(extras.iloc[i][k])]
        out.append(" · ".join(parts))
    return out


# --- tables -------------------------------------------------------------------

def methods_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Table 1 in numbers: per cell without augmentation (method, dataset, arch,
    data size and any other field the cells differ in), dense + aug* and winning
    ticket + aug* test accuracy, the ticket's density, and the gain."""
    select = trials.attrs.get("select", selection.DEFAULT_SELECTION)
    trials = finished(trials)
    keys = ["cell_noaug"]
    shown = ["method", "dataset", "arch", *SIZE]
    out = trials[[*keys, *shown]].drop_duplicates(keys).sort_values([*shown, *keys], kind="stable")
    out = out.merge(best_augmentation(trials, keys, "dense", ["test_acc"], select), on=keys, how="left")
    out = out.merge(best_augmentation(trials, keys, "ticket", ["test_acc", "density"], select), on=keys,
                    how="left")
    out["gain"] = out["ticket_test_acc_mean"] - out["dense_test_acc_mean"]
    return out.reset_index(drop=True)


# --- figure data --------------------------------------------------------------

def density_curves(df: pd.DataFrame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """IMP test accuracy per round, over seeds, per (cell, augmentation); `star`
    marks each curve's winning ticket: the selection rule applied to the seed means."""
    imp = tables.with_cells(df[df["method"] == "imp"])
    imp = with_size(imp.assign(cell_noaug=tables.cell_without(imp["cell"], NO_AUG)))
    c = over_seeds(imp, ["cell_noaug", "dataset", "arch", *SIZE, "augmentation", "round"],
                   ["density", "val_acc", "test_acc"])
    c = c.sort_values(BY_SIZE + ["cell_noaug"], kind="stable")  # panels by size, by number
    ranked = c.rename(columns={"val_acc_mean": "val_acc", "test_acc_mean": "test_acc", "density_mean": "density"})
    best = selection.winners_frame(ranked, select, ["cell_noaug", "augmentation"])
    return pd.DataFrame({"panel": group_labels(c["cell_noaug"], c, ["dataset", "arch", "size"]),
                         "series": c["augmentation"],
                         "round": c["round"], "density": 100 * c["density_mean"],
                         "mean": 100 * c["test_acc_mean"], "std": 100 * c["test_acc_std"],
                         "star": c.index.isin(best.index)})


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
    select = trials.attrs.get("select", selection.DEFAULT_SELECTION)
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


def gain_points(df: pd.DataFrame, select: str, ci: str = tables.DEFAULT_CI) -> pd.DataFrame:
    """Per IMP cell: the paired gain (in points) with its 95% interval, against data size."""
    c = tables.compare(df[df["method"] == "imp"], select, ci)
    c = c.dropna(subset=["gain"])
    if c.empty:
        return pd.DataFrame(columns=["panel", "xlabel", "series", "x", "xtick", "gain", "lo", "hi"])
    c = with_size(c)
    cells = tables.with_cells(df)[["cell_id", "cell"]].drop_duplicates("cell_id")
    c = c.merge(cells, on="cell_id", how="left")
    c["cell_nosize"] = tables.cell_without(c["cell"], NO_SIZE)
    titles = group_labels(c["cell_nosize"], c, ["dataset", "arch"])
    return pd.DataFrame({"panel": [t if k == "fraction" else f"{t} · per class"
                                   for t, k in zip(titles, c["size_kind"])],
                         "xlabel": c["size_kind"].map(XLABEL), "series": c["augmentation"], "x": c["size_x"],
                         "xtick": [s.replace(" img/class", "") for s in c["size"]],
                         "gain": 100 * c["gain"], "lo": 100 * c["gain_ci_low"].astype(float),
                         "hi": 100 * c["gain_ci_high"].astype(float), "n": c["n_seeds"]})


def capacity_bars(trials: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (in %) per (cell without method, augmentation) of IMP's dense
    and winning ticket and of each capacity/connectivity control at its winning
    round; only cells where some control ran."""
    trials = finished(trials)
    imp, controls = trials[trials["method"] == "imp"], trials[trials["method"].isin(CAPACITY)]
    rows = pd.concat([imp.assign(series="dense", value=imp["dense_test_acc"]),
                      imp.assign(series="winning ticket", value=imp["ticket_test_acc"]),
                      controls.assign(series=controls["method"], value=controls["ticket_test_acc"])])
    rows["cell_nomethodaug"] = tables.cell_without(rows["cell"], ("augmentation", "method"))
    have = set(rows.loc[rows["method"].isin(CAPACITY), "cell_nomethodaug"])
    rows = rows[rows["cell_nomethodaug"].isin(have)]
    rows["order"] = rows["series"].map({s: i for i, s in enumerate(["dense", "winning ticket", *CAPACITY])})
    b = over_seeds(rows, ["cell_nomethodaug", "dataset", "arch", *SIZE, "augmentation", "order", "series"],
                   ["value"])
    b = b.sort_values(BY_SIZE + ["cell_nomethodaug"], kind="stable")
    return pd.DataFrame({"panel": group_labels(b["cell_nomethodaug"], b, ["dataset", "arch", "size"]),
                         "group": b["augmentation"], "series": b["series"], "mean": 100 * b["value_mean"],
                         "std": 100 * b["value_std"]})


def layer_density_lines(df: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per IMP trial its sparsest committed round; the per-layer densities (in %)
    of those rounds, averaged per data size over seeds and augmentations.
    The series name carries the mean overall density of the rounds averaged."""
    imp = tables.with_cells(df[df["method"] == "imp"].dropna(subset=["density"]))
    imp = imp.assign(cell_nosize=tables.cell_without(imp["cell"], NO_SIZE))
    sparsest = imp.sort_values(["density", "round"], ascending=[True, False]).drop_duplicates("trial_id")
    sparsest = with_size(sparsest.rename(columns={"density": "round_density"}))
    group = ["cell_nosize", "dataset", "arch", *SIZE]
    rows = layers.merge(sparsest[["trial_id", "round", "round_density", *group]], on=["trial_id", "round"])
    # The layers table keeps the model's order within a round.
    rows["position"] = rows.groupby(["trial_id", "round"]).cumcount()
    overall = sparsest.groupby(group, dropna=False)["round_density"].mean()
    out = rows.groupby([*group, "position"], dropna=False, sort=True).agg(
        layer=("layer", "first"), density=("density", "mean")).reset_index()
    out = out.sort_values(["dataset", "arch", "cell_nosize", "size_kind", "size_x", "position"], kind="stable")
    out["series"] = [f"train {s} (overall {100 * overall[k]:.3g}%)"
                     for s, k in zip(out["size"], out[group].itertuples(index=False))]
    out["panel"] = group_labels(out["cell_nosize"], out, ["dataset", "arch"])
    out["density"] *= 100
    out["layer"] = [str(n).removesuffix(".weight") for n in out["layer"]]
    return out[["panel", "series", "position", "layer", "density"]]


# --- the summary tables -----------------------------------------------------------

def accuracy_vs_density(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean over seeds) per round, one column per grid cell."""
    if df.empty:
        return df
    d = tables.with_cells(df)
    names = dict(zip(d["cell_id"], group_labels(d["cell"], d, tables.FIXED)))
    d = d.assign(column=d["cell_id"].map(names))
    t = d.groupby(["round", "column"], dropna=False).agg(density=("density", "mean"),
                                                        test_acc=("test_acc", "mean")).reset_index()
    wide = t.pivot(index="round", columns="column", values="test_acc")
    wide.insert(0, "density", t.groupby("round")["density"].mean())
    return wide.reset_index()
