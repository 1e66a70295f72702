"""What an evaluation after a lineage is, and the pieces every one shares.

An evaluation reads committed rounds of a finished lineage and writes one
JSON file per target under `trials/<id>/analysis/` (e.g. `robustness_cifar10c`,
`probe_cifar100`, `cka`) holding its rows and the manifest digest of every
round it read. A file whose digests no longer match (a round was redone), or
that misses a round it now needs, is stale and is computed again; a current
one is skipped, so resume is free here too.

Each evaluation is one file that owns everything about it: the yaml key that
asks for it (`analysis.<option>`) with what that key accepts and its default,
which files the options ask for, which rounds it covers, how it computes them,
its table (name, columns, row order), the results columns it fills per round,
what it checks before a sweep starts (its data), which experiments it fits, and
its views in `lth-sweep report` (declared as data: the worker side never
imports the report). The results table (orchestrator/results/) and the report
(orchestrator/report/) loop over the registry, so adding one is its file plus
its import line in __init__.py.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from workers import checkpoint
from workers.methods import trial_model
from workers.registry import Registry
from workers.selection import winning_rounds
from workers.spec import RunOptions, Rule, TrialSpec
from workers.store import LineageStore


class Evaluation:
    name: str = ""
    option: str = ""                     # its yaml key: `analysis.<option>`
    rule: Rule = Rule(bool)              # what that key accepts (orchestrator/config.py checks it)
    default: Any = False                 # its value when the yaml leaves the key out
    help: str = ""                       # one sentence for the experiments.yaml reference (docs)
    table: str = ""                      # the Parquet table its rows go to (orchestrator/results/)
    columns: dict[str, str] = {}         # that table's columns beyond sweep/trial_id: name -> arrow type
    sort_keys: tuple[str, ...] = ("trial_id",)  # the table's row order within a shard (a stable sort)
    round_columns: tuple[str, ...] = ()  # results columns it fills per round (round_means)
    labels: dict[str, str] = {}          # those columns' names in tables and figures
    # The report view (orchestrator/report/views.py, its keys) after which its own views appear.
    report_after: str = "table3"

    def value(self, opts: RunOptions) -> Any:
        """What `opts` asks of this evaluation (its `analysis.<option>`, else its default)."""
        return opts.analysis_value(self.option, self.default)

    def files(self, opts: RunOptions) -> list[str]:
        """The analysis files `opts` asks this evaluation for: one per listed
        target (robustness_cifar10c, probe_cifar100), or one when it is on (cka)."""
        value = self.value(opts)
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

    # Its report views, as data the report renders (orchestrator/report/evaluation_views.py;
    # this side never imports the report): each {"title": ..., "table": its table,
    # "by": column(s), "mean": [columns], "caption": ...} is a table of the means of
    # `mean` per `by` over the table's rows, placed after the report view `report_after`.
    # The built-in evaluations' figures are registered there by name (BUILT_IN).
    views: tuple[dict, ...] = ()


# name -> the evaluation; each file registers its own (register below).
EVALUATIONS: Registry[Evaluation] = Registry("evaluation")


def register(evaluation: Evaluation) -> Evaluation:
    # Its analysis files are named <name>_<target>: a name with "_" would be read as another's.
    if not evaluation.name or "_" in evaluation.name:
        raise ValueError(f"evaluation name {evaluation.name!r}: use a non-empty name without '_'")
    return EVALUATIONS.register(evaluation.name, evaluation)


def model_at(spec: TrialSpec, store: LineageStore, k: int, info, device: torch.device) -> torch.nn.Module:
    """Round k's trained network (weights with the mask already applied). A
    round whose metrics carry a `width` (a method that builds its own network per
    round records it) is built at it."""
    m = store.read_manifest(k)["metrics"]
    model = trial_model(spec, info, width=m.get("width"), with_init=False)
    state, _ = checkpoint.read_weights(store, k)  # either format, verified
    model.load_state_dict(state)
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
