"""Sweeps written by older versions, read as today's: the one module that
knows their forms. Everything else reads a stored spec or round through
these functions and never branches on a sweep's age itself.

Forms handled:
- a spec written before selection moved to query time carries a
  `selection: {selection, val_fraction}` section. Its lineage keeps the
  validation images it started with (round(val_fraction * N_c) per class,
  or the test split itself when it selected on test), so every round of it
  is measured alike; its rows say so (`old_round_row`).
- such a lineage trained on a dataset whose labels a mirror changes (digits,
  CLaMM) with an augmentation that mirrored it then is redone from round 0.
- a spec with rewind_epoch >= epochs (refused by today's config) rewinds to
  the dense round's end state (`rewind_state`).
- a results frame written before some columns existed reads them as null
  (`OLD_FRAME_COLUMNS`); shards of an older schema version are derived again
  from the manifests (`shards_outdated`).
- a round committed before the sparse round format holds its whole state in
  one file (`old_weight_files`, `old_weights`; workers/checkpoint.py).
- experiments.yaml keys whose meaning moved are refused with where it went
  (`MOVED_KEYS`, orchestrator/config.py); rounds committed before per-image
  predictions were recorded are named as such where a table or the API
  meets one (`NO_PREDICTIONS`) and have none to read (`predates_predictions`).
- a lineage committed before the committed pointer (COMMITTED.json) is read
  from its manifests and given one (`rounds_without_pointer`).
- rounds committed before rounds recorded their numerics are not known to
  differ from any precision (`rounds_with_numerics`).
- an old-selection trial's cell carries `legacy_selection`, a field beyond
  today's sub-specs (`legacy_cell_fields`).
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the spec module reads specs through upgrade_spec: no import at run time
    from workers.spec import TrialSpec
    from workers.store import LineageStore

log = logging.getLogger("lth_sweep.migrate")

# Rounds committed before the sparse round format (workers/checkpoint.py) hold the
# whole state in one plain safetensors file, beside the same mask file.
OLD_DENSE = "weights.safetensors"

# experiments.yaml keys of earlier versions whose meaning moved, with where it went.
MOVED_KEYS = {
    "selection": "the winning ticket's selection is chosen at query time now, on the same lineages: "
                 "`lth-sweep query --compare --select test` (the paper's protocol) or --select val "
                 "(the default); remove this key",
    "val_fraction": "the validation budget is images per class now: eval: {val_per_class: N}",
}
# Rounds without per-image predictions were committed by a version before predictions.safetensors.
NO_PREDICTIONS = "committed by an lth-sweep older than predictions.safetensors"


def predates_predictions(files: dict, name: str) -> bool:
    """A round committed before rounds recorded per-image predictions: its manifest lists no `name`."""
    return name not in files


OLD_SELECTION = "selection"
# What those trials used when they did not say.
_OLD_DEFAULT = {"selection": "val", "val_fraction": 0.1}


def upgrade_spec(stored: dict) -> dict:
    """A stored spec as today's TrialSpec.from_dict reads it (the old
    selection section is not part of a spec any more, nor of its id)."""
    return {k: v for k, v in stored.items() if k != OLD_SELECTION}


def old_validation(stored: Optional[dict]) -> Optional[dict]:
    """The validation rule of a trial written before selection became a
    query-time choice ({"selection": "val"|"test", "val_fraction"}), else None."""
    if not isinstance(stored, dict) or not isinstance(stored.get(OLD_SELECTION), dict):
        return None
    sel = stored[OLD_SELECTION]
    return {"selection": sel.get("selection", "val"), "val_fraction": float(sel.get("val_fraction", 0.1))}


def held_out_fraction(spec: "TrialSpec", store: "LineageStore") -> Optional[float]:
    """The share of each class's images an old val-selected lineage in `store`
    keeps holding out (it measures on the images it started with), None for
    today's per-class budget (workers/train.py `prepare`)."""
    old = validation_rule(spec, store)
    return old["val_fraction"] if old and old["selection"] == "val" else None


def validation_rule(spec: "TrialSpec", store: "LineageStore") -> Optional[dict]:
    """The old validation rule the lineage in `store` must keep (None: today's
    per-class budget). Redoes from round 0, and forgets the rule of, a lineage
    whose old augmentation mirrored a dataset that mirroring relabels."""
    from workers.data import dataset_info
    old = old_validation(store.read_spec())
    if old is None:
        return None
    if spec.data.augmentation != "none" and "horizontal" not in dataset_info(spec.data.dataset).flips:
        if store.committed_prefix():
            log.warning("trial %s was trained with a %s augmentation that mirrored %s images, which "
                        "changes their labels: redoing the lineage from round 0", store.trial_id,
                        spec.data.augmentation, spec.data.dataset)
            store.invalidate_from(0)
        store.clear_partials_before(spec.num_rounds)
        store.write_spec(spec.to_dict(), replace=True)
        return None
    return old


def old_round_row(stored: dict, row: dict, cell: Optional[dict]) -> tuple[dict, Optional[dict]]:
    """(row, cell) of a round of an old-selection trial; other trials pass unchanged.

    - A test-selected trial measured `val_acc` on the test split: that is no
      held-out accuracy, so val_acc and its budget (val_per_class) are null.
    - The trial keeps its id; unless it used the then default (held-out 10% per
      class) its old protocol stays part of its cell, so it never poses as a
      seed of a trial that measured differently."""
    old = old_validation(stored)
    if old is None:
        return row, cell
    if old["selection"] == "test":
        row = {**row, "val_acc": None, "val_per_class": None}
    if cell is not None and old != _OLD_DEFAULT:
        cell = {**cell, "legacy_selection": old}
    return row, cell


# Columns a results frame from an older lth-sweep may lack, read as null (their SQL types).
OLD_FRAME_COLUMNS = {"val_per_class": "BIGINT", "test_correct": "BLOB", "test_images": "BIGINT",
                     "bn_recalibrate": "BOOLEAN", "fused_with": "VARCHAR", "fallback": "VARCHAR"}


def rewind_state(k: int, rewind, end_state):
    """The state later rounds rewind to: the one saved at rewind_epoch, or, for
    a spec whose rewind_epoch >= epochs (older specs: never saved), round 0's
    end state (`end_state()`)."""
    return end_state() if k == 0 and rewind is None else rewind


def rounds_without_pointer(lineage: "LineageStore") -> dict[int, str]:
    """{round: manifest digest} of a lineage without COMMITTED.json (committed by an lth-sweep older
    than the pointer, or never started): read from its manifests once, its pointer written for next time."""
    manifests = lineage.manifests()
    if manifests:
        lineage.sync_pointer(manifests)
    return {j: m["manifest_sha256"] for j, m in manifests.items()}


def rounds_with_numerics(recorded: dict, precision_of) -> dict:
    """{round: numerics} in round order, less the rounds whose `precision_of` is None: rounds committed
    before rounds recorded their numerics are not known to differ from any precision."""
    return {k: n for k, n in sorted(recorded.items()) if precision_of(n) is not None}


def legacy_cell_fields(cell: dict, parts) -> dict:
    """A cell's keys beyond today's sub-spec `parts` as fields (a dict as its JSON): the
    `legacy_selection` of an old-selection trial's cell (`old_round_row`)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in cell.items() if k not in parts}


def shards_outdated(version: int, current: int) -> bool:
    """Shards an older lth-sweep wrote lack what this one derives from the
    manifests (the grid cell, the validation budget, which val_acc were really
    held out): the table is then derived again from the manifests."""
    return version < current


def old_weight_files(files: dict, mask: str) -> list[str]:
    """The weight files of a round committed before the sparse format: the
    whole state and, where the round has one, its masks."""
    return [OLD_DENSE] + ([mask] if mask in files else [])


def old_weights(files: dict) -> dict:
    """The state of such a round from its loaded files (plain safetensors)."""
    from safetensors.torch import load
    return load(files[OLD_DENSE])
