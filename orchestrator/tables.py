"""The tables people cite: winning tickets and dense-vs-ticket per grid cell.
It is one concern, the shape and captions of those tables (their arithmetic is
stats.py and power.py; their seeds, paired.py).

One rule each, used by `query`, `report` and the Python API:

- the winning ticket of a trial: workers/selection.py (best accuracy on the
  selection split, ties to the sparser round), chosen at query time with
  `select="val"` (held-out images, the default) or `"test"` (the paper's protocol);
- a grid cell: every spec field except the seed, plus the lineage's effective
  precision (`cell_id`, from the cell's canonical JSON, as the results rows
  carry it), so trials that differ in anything but the seed are never
  averaged together; a frame without the cell columns is refused, never
  grouped by a partial key;
- the numbers of a cell's row all come from one set of lineages
  (orchestrator/paired.py): the finished ones with a dense round and a
  winning ticket under the protocol (`n_seeds`);
  finished ones without are counted in `n_no_ticket`, unfinished ones in
  `n_unfinished` (the winner of a half-done lineage is not its winning ticket);
- the gain of a cell: the mean over those seeds of the paired difference ticket
  minus dense *of the same lineage*, with a 95% interval (orchestrator/stats.py):
  by default a paired bootstrap over seeds and test images (`ci="bootstrap"`),
  or the seed-level t interval (`ci="t"`, and rounds without per-image
  predictions), a two-sided p-value by the same method, its Holm adjustment
  over the rows of the table, and the share of seeds where the ticket wins.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pandas as pd

from orchestrator import power as power_
from orchestrator import stats
from orchestrator.paired import (BOOT_IMAGES, CIS, DEFAULT_CI, FIXED, T_NO_PREDICTIONS, _image_patterns,
                                 cell_stats, check_ci, narrow, paired, results_view, with_cells)
from orchestrator.results import Frame, ResultsError, sql_over_frames
from orchestrator.stats import CONFIDENCE, t_interval
from workers import selection
from workers.migrate import NO_PREDICTIONS
from workers.spec import cell_fields


def cell_without(cells: pd.Series, drop: tuple[str, ...]) -> pd.Series:
    """Each cell's JSON with the named fields removed (e.g. augmentation, to
    group the cells aug* chooses among). Defaults never appear in a cell, so a
    field left out and a field removed read the same."""
    from workers.spec import cell_key

    def strip(c):
        if not isinstance(c, str):
            return c
        d = json.loads(c)
        out = {k: ({f: x for f, x in v.items() if f not in drop} if isinstance(v, dict) else v)
               for k, v in d.items() if k not in drop}
        return cell_key({k: v for k, v in out.items() if v != {}})[0]
    memo = {c: strip(c) for c in cells.dropna().unique()}
    return cells.map(lambda c: memo.get(c, c))


def winning_tickets(frame: Frame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial: its winning ticket under `select` (a trial with no
    round carrying the selection metric has none)."""
    selection.check(select)
    out = sql_over_frames(f"SELECT * FROM ({selection.winners_sql(select)}) ORDER BY trial_id", results=frame)
    out.insert(out.columns.get_loc("round"), "selection", select)
    return out


def cell_columns(cells: pd.Series) -> pd.DataFrame:
    """Per row, the spec fields (beyond FIXED) in which the given cells differ:
    the columns that tell two rows of a table apart."""
    parsed = {c: (cell_fields(json.loads(c)) if isinstance(c, str) else {}) for c in cells.dropna().unique()}
    names: list[str] = []
    for fields in parsed.values():
        names += [k for k in fields if k not in names and k not in FIXED]
    varying = [k for k in names if len({json.dumps(f.get(k), sort_keys=True) for f in parsed.values()}) > 1]
    return pd.DataFrame({k: [parsed.get(c, {}).get(k) if isinstance(c, str) else None for c in cells]
                         for k in varying}, index=cells.index)


def _table(c: pd.DataFrame, select: str, stat_columns: list[str]) -> pd.DataFrame:
    """The shown layout of a per-cell frame: FIXED, the fields the cells differ
    in, the selection, `stat_columns`, cell_id; sorted by the cell's fields."""
    if c.empty:
        return pd.DataFrame(columns=[*FIXED, "selection", *stat_columns, "cell_id"])
    extras = cell_columns(c["cell"])
    out = pd.concat([c[FIXED], extras], axis=1)
    out["selection"] = select
    for col in [*stat_columns, "cell_id"]:
        out[col] = c[col]
    return out.sort_values([*FIXED, *extras.columns], na_position="first", kind="stable").reset_index(drop=True)


COMPARE_STATS = ["val_per_class", "n_seeds", "n_no_ticket", "dense_test_acc", "dense_test_std", "ticket_test_acc",
                 "ticket_test_std", "ticket_density", "gain", "gain_ci_low", "gain_ci_high", "ci_method",
                 "p_value", "p_holm", "prob_ticket_better"]


def compare(frame: Frame, select: str = selection.DEFAULT_SELECTION, ci: str = DEFAULT_CI) -> pd.DataFrame:
    """One row per grid cell: dense (round 0) and winning-ticket test accuracy,
    the paired gain with its 95% interval and p-value, Holm-adjusted over the
    rows, and prob_ticket_better, all over the cell's paired seeds."""
    check_ci(ci)
    c = cell_stats(paired(frame, select), ci)
    if len(c):
        c["gain_ci_low"] = pd.array(c["gain_ci_low"], dtype="Float64")
        c["gain_ci_high"] = pd.array(c["gain_ci_high"], dtype="Float64")
        # One training seed is no evidence of an effect: its p_value resamples the test
        # images of one trained network, so it stays beside its interval but the cell
        # is not in the Holm family and gets no p_holm.
        c["p_holm"] = stats.holm(c["p_value"].where(c["n_seeds"] >= 2))
    unfinished = ["n_unfinished"] if len(c) and (c["n_unfinished"] > 0).any() else []
    c = _with_fusion(c, frame)
    return _table(c, select, [*COMPARE_STATS, *unfinished, *_fusion_columns(c)])


FUSION_COLUMNS = ("rounds_fused", "rounds_fallback")


def _with_fusion(c: pd.DataFrame, frame: Frame) -> pd.DataFrame:
    """Per cell, how its rounds trained where any was fused or fell back:
    rounds_fused (in a fused program) and rounds_fallback (members of a fused
    group that trained alone, by reason: "2 check failed, 1 out of memory")."""
    if not len(c):
        return c
    d = sql_over_frames(f"""WITH {results_view(frame)}
        SELECT coalesce(cell_id, trial_id) AS cell_id, count(fused_with) AS rounds_fused, fallback,
               count(*) AS n FROM results GROUP BY ALL""", rows=narrow(frame))
    if not (d["rounds_fused"].sum() or d["fallback"].notna().any()):
        return c
    fused = d.groupby("cell_id")["rounds_fused"].sum().to_dict()
    back: dict[str, list[str]] = {}
    for cell, why, n in d[d["fallback"].notna()].sort_values("fallback")[["cell_id", "fallback", "n"]].itertuples(
            index=False):
        back.setdefault(cell, []).append(f"{int(n)} {why}")
    return c.assign(rounds_fused=[int(fused.get(k, 0)) for k in c["cell_id"]],
                    rounds_fallback=[", ".join(back.get(k, [])) for k in c["cell_id"]])


def _fusion_columns(c: pd.DataFrame) -> list[str]:
    return [k for k in FUSION_COLUMNS if k in c]


def power(frame: Frame, select: str = selection.DEFAULT_SELECTION, effect: float = 0.02,
          ci: str = DEFAULT_CI) -> pd.DataFrame:
    """Per cell: the smallest true gain its seeds detect with 80% power
    (min_detectable_gain), the power it has now against `effect`, and the seeds
    that `effect` needs, for the test the cell's interval makes (`power_test`).

    ci="bootstrap" (the default): the default interval's test, which also counts
    the noise of the test images every seed shares: simulated from the cell's seed
    and split variance components (power_.components: seed_sd, split_sd). No seed
    count takes that test past what the split's images allow: `reachable` is
    False where a gain of `effect` cannot reach 80% power on this test split.
    ci="t", and cells without per-image predictions: the seed-level paired t-test
    from the sd of the per-seed gains (gain_sd)."""
    if not 0 < effect < 1:
        raise ResultsError(f"--effect must be a gain in accuracy between 0 and 1 (e.g. 0.02), not {effect:g}")
    check_ci(ci)
    p = paired(frame, select)
    c = cell_stats(p, None)
    if len(c):
        seeds = p[p["complete"] & p["paired"]]
        rows = [_power_row(seeds[seeds["cell_id"] == cid], n, sd, effect, ci)
                for cid, n, sd in zip(c["cell_id"], c["n_seeds"], c["gain_sd"])]
        for k in ("split_sd", "min_detectable_gain", "power_for_effect", "power_test", "reachable"):
            c[k] = [r[k] for r in rows]
        c["effect"] = effect
        c["seeds_for_effect"] = pd.array([r["seeds_for_effect"] for r in rows], dtype="Int64")
        c["reachable"] = pd.array(c["reachable"], dtype="boolean")
    return _table(c, select, ["n_seeds", "gain", "gain_sd", "split_sd", "min_detectable_gain", "effect",
                              "power_for_effect", "seeds_for_effect", "reachable", "power_test"])


POWER_TWO_LEVEL, POWER_T = "seeds+images (simulated)", "t over seeds"


def _power_row(seeds: pd.DataFrame, n: int, sd: float, effect: float, ci: str) -> dict:
    table = _image_patterns(seeds)[0] if ci == "bootstrap" and n >= 2 else None
    if table is not None:
        comp = power_.components(*table)
        need, reachable = power_.two_level_seeds(effect, comp)
        return {"split_sd": comp.split_sd, "min_detectable_gain": power_.two_level_min_detectable(comp, n),
                "power_for_effect": power_.two_level_power(effect, comp, n), "seeds_for_effect": need,
                "reachable": reachable, "power_test": POWER_TWO_LEVEL}
    ok = n >= 2 and sd > 0
    return {"split_sd": np.nan, "min_detectable_gain": power_.min_detectable(sd, n),
            "power_for_effect": float(power_.t_power(effect, sd, n)) if ok else np.nan,
            "seeds_for_effect": power_.seeds_needed(effect, sd), "reachable": None, "power_test": POWER_T}


def protocols(frame: Frame, ci: str = DEFAULT_CI) -> pd.DataFrame:
    """Both protocols side by side per cell: the gain selected on held-out
    images, the gain selected on the test split, each with its interval, and
    the selection bias: the mean over the lineages both protocols pair
    (n_seeds_both) of the test-selected minus the val-selected gain."""
    check_ci(ci)
    pv, pt = paired(frame, "val"), paired(frame, "test")
    shown = ["n_seeds", "gain", "gain_ci_low", "gain_ci_high"]
    val = _table(cell_stats(pv, ci), "val", ["val_per_class", *shown])
    test = _table(cell_stats(pt, ci), "test", shown)
    both = pv[pv["paired"]][["trial_id", "cell_id", "gain"]].merge(pt[pt["paired"]][["trial_id", "gain"]],
                                                                    on="trial_id", suffixes=("_val", "_test"))
    bias = (both.assign(d=both["gain_test"] - both["gain_val"]).groupby("cell_id")["d"]
            .agg(["size", "mean"]).rename(columns={"size": "n_seeds_both", "mean": "selection_bias"}))
    keys = [k for k in val.columns if k not in {"selection", "cell_id", "val_per_class", *shown}]
    out = val.drop(columns=["selection"]).merge(test[["cell_id", *shown]], on="cell_id", suffixes=("_val", "_test"),
                                                how="outer")
    out = out.merge(bias, left_on="cell_id", right_index=True, how="left")
    out["n_seeds_both"] = out["n_seeds_both"].fillna(0).astype(int)
    cols = [*keys, "val_per_class", "n_seeds_val", "gain_val", "gain_ci_low_val", "gain_ci_high_val", "n_seeds_test",
            "gain_test", "gain_ci_low_test", "gain_ci_high_test", "n_seeds_both", "selection_bias", "cell_id"]
    return out[cols].sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def protocol_line(select: Optional[str], frame: Frame, ci: str = DEFAULT_CI) -> str:
    """The sentence every table and figure carries: the selection protocol, the
    validation budget, how BatchNorm was measured (read off the result rows)
    and how the gain's interval and p-value were made."""
    d = sql_over_frames(f"WITH {results_view(frame)} SELECT DISTINCT val_per_class, bn_recalibrate FROM results",
                        rows=narrow(frame))
    held = sorted({int(v) for v in d["val_per_class"].dropna()})
    if not held:
        budget = "no held-out validation images"
    elif len(held) == 1:
        budget = f"{held[0]} held-out images per class"
    else:
        budget = f"{held[0]}-{held[-1]} held-out images per class (it differs between cells)"
    if d["val_per_class"].isna().any() and held:
        budget += " (none where the subset leaves none, or not recorded)"
    bn = {bool(b) for b in d["bn_recalibrate"].dropna()}
    bn_text = ("recalibrated on the training subset before each evaluation" if bn == {True} else
               "as trained (running averages)" if bn <= {False} else
               "recalibrated in some cells, as trained in others")
    ticket = f"Winning ticket: {selection.describe(select)}. " if select else ""
    return (f"{ticket}Validation budget: {budget}. BatchNorm statistics: {bn_text}. "
            f"Gain: mean paired difference ticket - dense over the seeds with a winning ticket; {_method(ci)}")


def _method(ci: str) -> str:
    level = f"{int(CONFIDENCE * 100)}%"
    if check_ci(ci) == "t":
        return f"{level} t interval over seeds, p_value from the paired t-test."
    return (f"{level} interval by a paired bootstrap over seeds and the test images they share "
            f"(B={stats.BOOTSTRAP_B} seeded resamples giving the variance, Student's t quantile on the "
            f"Welch-Satterthwaite degrees of freedom; images only, percentile, where a cell has one seed; a t "
            f"interval over seeds where rounds lack per-image predictions: see ci_method), p_value from the "
            f"same t (one seed: from the resamples, at least 1/B).")


def power_line(effect: float, ci: str = DEFAULT_CI) -> str:
    """The sentence under a power() table."""
    if check_ci(ci) == "t":
        test = (f"a two-sided paired t-test at alpha {stats.ALPHA:g} over the seeds of a cell, from the sd of its "
                f"per-seed gains (gain_sd)")
    else:
        test = (f"the test the default interval makes (alpha {stats.ALPHA:g}), simulated from the cell's two "
                f"variance components: its seeds' (gain_sd) and its test split's (split_sd: the noise of the "
                f"images every seed shares, which no number of seeds reduces); reachable: false where a gain of "
                f"{effect:g} cannot reach {power_.POWER:.0%} power on this test split whatever the seeds; "
                f"--ci t gives the seed-level paired t-test's answer; power_test says which a row has")
    return (f"Power: {test}. min_detectable_gain: the smallest true gain it detects with {power_.POWER:.0%} power "
            f"with the seeds the cell has; seeds_for_effect: the seeds that a gain of {effect:g} needs for "
            f"{power_.POWER:.0%} power (empty: no spread yet, not reachable, or more than "
            f"{power_.POWER_MAX_SEEDS if ci != 't' else power_.MAX_SEEDS}).")


def power_notes(table: pd.DataFrame, effect: float) -> list[str]:
    """One-line remarks under a power() table."""
    if "reachable" not in table:
        return []
    stuck = table[table["reachable"].eq(False).fillna(False)]
    if not len(stuck):
        return []
    return [f"{len(stuck)} cell(s): a gain of {effect:g} is not reachable with this test split (its shared images "
            f"alone, split_sd {stuck['split_sd'].min():.4f}-{stuck['split_sd'].max():.4f}, keep the default "
            f"interval's power below {power_.POWER:.0%} whatever the seeds; a larger test split, or --ci t for the "
            f"seed-level answer)"]


def family(table: pd.DataFrame) -> str:
    """The caption's sentence on the p-values of a compare() table: its family."""
    m = int((table["p_value"].notna() & (table["n_seeds"] >= 2)).sum()) if "p_value" in table else 0
    few = int((table["n_seeds"] < 2).sum()) if "n_seeds" in table else 0
    return (f"p_holm: Holm-adjusted over the {m} row(s) of this table with a p_value and two or more seeds; "
            f"{few} of its {len(table)} cell(s) make no claim for lack of seeds (fewer than two: no p_holm; a "
            f"one-seed interval is the test split's noise for one trained network, not an effect of IMP); "
            f"prob_ticket_better: the share of seeds whose ticket beats its dense network on the test split "
            f"(ties count half).")


def notes(table: pd.DataFrame, select: str) -> list[str]:
    """One-line remarks a reader of `table` (a compare() result) must see."""
    out = []
    if select == "val":
        none = table[(table["n_seeds"] == 0) & (table["n_no_ticket"] > 0)]
        if len(none):
            out.append(f"{len(none)} cell(s) have no held-out validation images (e.g. fraction 1.0): their "
                       "winning tickets are missing under --select val; --select test is the paper's protocol")
    if "n_unfinished" in table and table["n_unfinished"].sum():
        out.append(f"{int(table['n_unfinished'].sum())} unfinished lineage(s) are not counted")
    unexplained = table if select != "val" else table[table["n_seeds"] > 0]
    if unexplained["n_no_ticket"].sum():
        out.append(f"{int(unexplained['n_no_ticket'].sum())} finished lineage(s) without a dense round or a winning "
                   "ticket are left out of their rows (n_no_ticket): every number of a row comes from the same seeds")
    method = table["ci_method"]
    if (method == BOOT_IMAGES).any():
        out.append("cells with one seed have an image-level interval only (test images resampled, not seeds); "
                   "add seeds for one over seeds")
    if ((table["n_seeds"] == 1) & method.str.startswith("t", na=False)).any():
        out.append("cells with one seed have no t interval; add seeds for one")
    boot = method.str.startswith("bootstrap", na=False)
    same = table[(boot & (table["gain_ci_low"] == table["gain_ci_high"]) & (table["gain"] == 0)).fillna(False)]
    if len(same):
        out.append(f"{len(same)} cell(s) have a zero-width interval: their dense network and winning ticket are "
                   "right on exactly the same test images in every seed")
    flat = table[method.str.startswith("t", na=False) & (table["n_seeds"] >= 2) & table["gain_ci_low"].isna()]
    if len(flat):
        out.append(f"{len(flat)} cell(s) have the same paired gain in every seed: no t interval (it would have "
                   "zero width); --ci bootstrap also resamples the test images")
    if (method == T_NO_PREDICTIONS).any():
        out.append(f"rounds without per-image predictions ({NO_PREDICTIONS}) get the seed-level t interval "
                   "(ci_method)")
    return out


__all__ = ["CIS", "CONFIDENCE", "DEFAULT_CI", "FIXED", "cell_columns", "cell_without", "check_ci", "compare",
           "family", "notes", "paired", "power", "power_line", "power_notes", "protocol_line", "protocols",
           "t_interval", "winning_tickets", "with_cells"]
