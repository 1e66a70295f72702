"""An adaptive sweep's tables (orchestrator/adaptive.py decides): the rows its
decisions planned, the compare() table with each cell's decision and
anytime-valid interval beside the fixed-n one, and what `plan` says it can cost."""
from __future__ import annotations

from orchestrator.adaptive import Cell, Settings, cell_gains, decide, gains_by_trial, read_state


SEQUENCE_COLUMNS = ["seeds_planned", "decision", "resolved", "resolved_at", "claim", "cs_low", "cs_high"]


def _replay(frame, state: dict) -> dict[str, Cell]:
    settings = Settings(**state["settings"])
    gains = cell_gains(state["cells"], gains_by_trial(frame))
    return decide(gains, settings, state["costs"], state.get("budget_gpu_h"), state.get("parents"))[0]


def planned_rows(frame, state: dict):
    """The results rows of the lineages the adaptive decisions planned (a fixed
    sweep in the same folder may hold more seeds of the same cells)."""
    import pandas as pd

    from orchestrator.results import sql_over_frames
    cells = _replay(frame, state)
    ids = pd.DataFrame({"planned": [tid for c, cell in cells.items() for tid in state["cells"][c][:cell.n]]})
    return sql_over_frames("SELECT r.* FROM rows r WHERE r.trial_id IN (SELECT planned FROM ids)",
                           rows=frame, ids=ids)


def with_sequences(table, frame, sweep) -> tuple:
    """A compare() table of an adaptive sweep with, per cell, its decision and
    its anytime-valid confidence sequence beside the fixed-n interval; and the
    note that names them."""
    import pandas as pd

    from orchestrator.paired import paired
    state = read_state(sweep)
    if state is None or table.empty:
        return table, []
    settings = Settings(**state["settings"])
    cells = _replay(frame, state)
    # a row of the table is a results cell (the spec's cell and the numerics it ran in)
    spec_cell = {tid: c for c, tids in state["cells"].items() for tid in tids}
    p = paired(frame)
    of_row = {r.cell_id: spec_cell[r.trial_id] for r in p.itertuples(index=False) if r.trial_id in spec_cell}
    extra = pd.DataFrame([{"cell_id": row, **{k: v for k, v in cells[c].row().items() if k in SEQUENCE_COLUMNS}}
                          for row, c in of_row.items()], columns=["cell_id", *SEQUENCE_COLUMNS])
    extra["resolved_at"] = pd.array(extra["resolved_at"], dtype="Int64")
    for col in ("cs_low", "cs_high"):
        extra[col] = pd.array(extra[col], dtype="Float64")
    keep = [c for c in table.columns if c != "cell_id"]
    out = table.merge(extra, on="cell_id", how="left")[keep + SEQUENCE_COLUMNS + ["cell_id"]]
    m = len(state["costs"])
    note = (f"{settings.words()}. cs_low/cs_high: the anytime-valid confidence sequence of the cell's mean "
            f"per-seed gain (held-out selection; sequential t mixture, orchestrator/sequential.py) at level "
            f"1 - {settings.alpha:g}/{m} per cell, Bonferroni over the {m} cells: valid at whatever seed count "
            f"the cell stopped at. resolved (claim; resolved_at: at that many seeds): it excludes "
            f"{settings.effect:g}" + (f", or lies within {settings.effect:g} +- {settings.margin:g}"
                                      if settings.margin else "") + ". "
            "gain_ci_low/gain_ci_high and p_holm are fixed-n numbers: read after adaptive stopping they "
            "overstate the evidence. The test split is fixed: a claim is about the mean gain on it.")
    return out, [note]


def plan_lines(settings: Settings, spread: dict) -> str:
    """`plan`'s words on an adaptive experiment: what it can cost at least and at most."""
    def hours(h):
        if h >= 0.1:
            return f"~{h:.3g} device-hours"
        m = round(h * 60)
        return f"~{m} device-minute{'s' if m > 1 else ''}" if m >= 1 else "under a device-minute"
    m, first = spread["cells"], spread["earliest"]
    per_lineage = spread["device_hours_min"] / max(1, spread["lineages_min"])
    lines = [f"\n{settings.words()}.",
             f"{m} cells: at least {spread['lineages_min']} lineages ({hours(spread['device_hours_min'])}: every "
             f"claim resolved at the first batch that can resolve one), at most {spread['lineages_max']} "
             f"({hours(spread['lineages_max'] * per_lineage)}: every cell to {settings.max} seeds)"]
    if spread["budget_gpu_h"] is not None:
        lines.append(f"--budget-gpu-h {spread['budget_gpu_h']:g} caps it at {hours(spread['device_hours_max'])}")
    lines.append(f"a claim can resolve from {first} seeds on (alpha {settings.alpha:g} over {m} cells)"
                 + (f": none can by max {settings.max}; raise max" if first > settings.max else ""))
    return "\n".join(lines)


def table_adaptive(report):
    """An adaptive sweep's decisions (orchestrator/adaptive.py): per cell the
    seeds run, whether its claim resolved and at how many seeds, its
    anytime-valid confidence sequence, and the fixed-n interval beside it."""
    import pandas as pd

    from orchestrator import tables
    from orchestrator.formatting import fixed, interval, value_text
    from orchestrator.report.derive import with_size
    from orchestrator.report.items import Skip, Table
    state = read_state(report.sweep)
    if state is None:
        raise Skip("the sweep's seeds are fixed (not adaptive)")
    rows = planned_rows(report.results, state)
    c, remarks = with_sequences(tables.compare(rows, "val"), rows, report.sweep)
    shown = pd.DataFrame({
        "dataset": c["dataset"], "data size": with_size(c)["size"], "augmentation": c["augmentation"],
        "method": c["method"], "arch": c["arch"], "seeds": c["n_seeds"], "decision": c["decision"],
        "resolved at": c["resolved_at"].map(value_text), "claim": c["claim"].map(value_text),
        "gain": c["gain"].map(fixed),
        "anytime-valid interval (adaptive)": [interval(lo, hi) for lo, hi in zip(c["cs_low"], c["cs_high"])],
        "fixed-n 95% interval": [interval(lo, hi) for lo, hi in zip(c["gain_ci_low"], c["gain_ci_high"])],
    })
    return Table(shown, "Adaptive seeds, decided on held-out selection. " + " ".join(remarks))
