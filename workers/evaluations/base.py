"""What an evaluation after a lineage is, and the pieces every one shares.

An evaluation reads committed rounds of a finished lineage and writes one
JSON file per target under `trials/<id>/analysis/` (e.g. `robustness_cifar10c`,
`probe_cifar100`, `cka`) holding its rows and the manifest digest of every
round it read. A file whose digests no longer match (a round was redone), or
that misses a round it now needs, is stale and is computed again; a current
one is skipped, so resume is free here too.

Each evaluation owns, in its own file: which files the trial's options ask
for, which rounds it covers, how it computes them, its table's columns, what
it checks before a sweep starts (its data), and which experiments it fits.
"""
from __future__ import annotations

from typing import Optional

import torch
from safetensors.torch import load as st_load

from workers.methods import trial_model
from workers.selection import winning_rounds
from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore


class Evaluation:
    name: str = ""
    option: str = ""                     # the RunOptions field (yaml analysis.<key>) that asks for it
    table: str = ""                      # the Parquet table its rows go to (results.py)
    columns: dict[str, str] = {}         # that table's columns beyond sweep/trial_id: name -> arrow type
    round_columns: tuple[str, ...] = ()  # results columns it fills per round (round_means)
    labels: dict[str, str] = {}          # those columns' names in tables and figures

    def files(self, opts: RunOptions) -> list[str]:
        """The analysis files `opts` asks this evaluation for: one per listed
        target (robustness_cifar10c, probe_cifar100), or one when it is on (cka)."""
        value = getattr(opts, self.option)
        if isinstance(value, bool):
            return [self.name] if value else []
        return [f"{self.name}_{v}" for v in value]

    def rounds(self, metrics: list[dict]) -> list[int]:
        """The committed rounds a file of this evaluation covers."""
        raise NotImplementedError

    def compute(self, file: str, spec: TrialSpec, store: LineageStore, metrics: list[dict],
                opts: RunOptions, device: torch.device) -> list[dict]:
        """The rows of analysis file `file`."""
        raise NotImplementedError

    def rows(self, trial_id: str, doc: dict) -> list[dict]:
        """Table rows of one current file (beyond sweep / trial_id / schema_version)."""
        return list(doc.get("rows", []))

    def round_means(self, rows: list[dict]) -> dict[tuple[int, str], float]:
        """{(round, results column): value} this evaluation adds to the results rows."""
        return {}

    def preflight(self, trials: list[tuple[TrialSpec, RunOptions]]) -> None:
        """Check the data this evaluation will need exists, before any trial starts."""

    def check_experiment(self, datasets: list[str], opts_value, err) -> None:
        """Refuse an experiment this evaluation cannot evaluate (err(message))."""


def model_at(spec: TrialSpec, store: LineageStore, k: int, info, device: torch.device) -> torch.nn.Module:
    """Round k's trained network (weights with the mask already applied). A
    round whose metrics carry a `width` (a method that builds its own network per
    round records it) is built at it."""
    m = store.read_manifest(k)["metrics"]
    model = trial_model(spec, info, width=m.get("width"), with_init=False)
    files = store.load_round(k, ["weights.safetensors"])
    model.load_state_dict(st_load(files["weights.safetensors"]))
    return model.to(device).eval()


def digests(store: LineageStore, rounds) -> dict:
    return {str(k): store.read_manifest(k)["manifest_sha256"] for k in sorted(set(rounds))}


def dense_and_winners(metrics: list[dict]) -> list[int]:
    """Round 0 and the winning round under every selection protocol."""
    return sorted({0, *winning_rounds(metrics)})


def current_doc(store: LineageStore, name: str, rounds: Optional[list[int]] = None) -> Optional[dict]:
    """The analysis file if it still matches the committed rounds it read
    (and, given `rounds`, covers them all)."""
    doc = store.read_analysis(name)
    if doc is None:
        return None
    try:
        if digests(store, map(int, doc["rounds"])) != doc["rounds"]:
            return None
        if rounds is not None and not {str(k) for k in rounds} <= set(doc["rounds"]):
            return None
    except (TypeError, KeyError, ValueError):
        return None
    return doc
