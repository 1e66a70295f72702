"""Experiment trackers: TensorBoard, MLflow, Weights & Biases, through Ray Tune's
own logger callbacks, one run per lineage.

    lth-sweep run --tracker tensorboard --tracker mlflow      # or, in the yaml: trackers: [wandb]

A Tune trial is a unit (a lineage, or a fused group of them), but a tracker's
run is a lineage: `Lineages` hands each tracker callback one stand-in trial
per lineage (its trial id, its spec as parameters, a folder of its own) and
each committed round as one step (`training_iteration` = round + 1), with the
round's density and accuracies. Where they write:

    tensorboard  <sweep>/trackers/tensorboard/<trial_id>/events.out.tfevents.*
    mlflow       $MLFLOW_TRACKING_URI, else sqlite:///<sweep>/trackers/mlflow.db (one local file);
                 experiment = the sweep
    wandb        project = the sweep; $WANDB_MODE=offline writes <sweep>/trackers/wandb/<trial_id>/wandb/

(a sweep on S3 keeps them under ./lth-trackers/<sweep>/, trackers write local files).
The packages are an optional extra: pip install -e '.[trackers]'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from workers.registry import Registry
from workers.spec import num_rounds

# The round's numbers a tracker plots.
METRICS = ("density", "val_acc", "test_acc", "train_acc", "wall_s", "images_per_s")


class TrackerError(Exception):
    """A tracker that cannot be used here (a one-line, user-facing message)."""


@dataclass(frozen=True)
class Tracker:
    package: str  # the optional package it needs (checked before anything starts)
    # (folder of the sweep's tracker files, sweep) -> Ray Tune logger callback. Ray is
    # imported inside: `lth-sweep plan` and the yaml checks list trackers without it.
    callback: Callable[[str, object], object]


TRACKERS: Registry[Tracker] = Registry("tracker", error=TrackerError)


def _tensorboard(base: str, sweep):
    from ray.tune.logger import TBXLoggerCallback
    return TBXLoggerCallback()


def _mlflow(base: str, sweep):
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    os.makedirs(base, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.join(base, 'mlflow.db')}"
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=sweep.sweep)


def _wandb(base: str, sweep):
    from ray.air.integrations.wandb import WandbLoggerCallback
    return WandbLoggerCallback(project=sweep.sweep, log_config=True, mode=os.environ.get("WANDB_MODE", "online"))


TRACKERS.register("tensorboard", Tracker("tensorboardX", _tensorboard))
TRACKERS.register("mlflow", Tracker("mlflow", _mlflow))
TRACKERS.register("wandb", Tracker("wandb", _wandb))


def check(names: list[str]) -> None:
    """Refuse unknown trackers and missing packages before anything starts."""
    import importlib.util
    for name in names:
        package = TRACKERS.get(name).package
        if importlib.util.find_spec(package) is None:
            raise TrackerError(f"tracker {name} needs the {package} package: pip install -e '.[trackers]'")


def folder(sweep) -> str:
    """Where trackers write for this sweep (always a local folder)."""
    if sweep.fs.local:
        return os.path.join(sweep.dir, "trackers")
    return os.path.abspath(os.path.join("lth-trackers", sweep.sweep))


class _Lineage:
    """What a Tune logger callback reads of a trial, for one lineage."""

    def __init__(self, trial_id: str, config: dict, path: str, experiment: str):
        self.trial_id = self.trial_name = trial_id
        self.config = self.evaluated_params = config
        self.local_path = self.path = path
        self.experiment_dir_name = experiment
        self.checkpoint = None

    def init_local_path(self) -> None:
        os.makedirs(self.local_path, exist_ok=True)

    def __str__(self) -> str:
        return self.trial_id


def _callbacks(names: list[str], sweep) -> list:
    base = folder(sweep)
    return [(name, TRACKERS.get(name).callback(base, sweep)) for name in names]


class Lineages:
    """Feeds Tune's tracker callbacks one run per lineage (driven by the ResultsCallback)."""

    def __init__(self, names: list[str], sweep, specs: dict[str, dict]):
        self.sweep, self.specs = sweep, specs
        self.callbacks = _callbacks(names, sweep)
        self.open: dict[str, dict] = {}  # trial id -> {tracker name: stand-in trial}

    def setup(self) -> None:
        """Open every tracker now (before any trial starts): a broken one is one clear error."""
        for name, cb in self.callbacks:
            if not hasattr(cb, "setup"):
                continue
            try:
                cb.setup()
            except TypeError:
                pass
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise TrackerError(f"tracker {name} cannot start: {type(e).__name__}: {first}") from None

    def _trial(self, name: str, tid: str):
        from workers.spec import TrialSpec, cell_fields
        spec = TrialSpec.from_dict(self.specs[tid])
        config = {**cell_fields(spec.cell()), "seed": spec.seed, "trial_id": tid, "cell_id": spec.cell_id}
        t = _Lineage(tid, config, os.path.join(folder(self.sweep), name, tid), self.sweep.sweep)
        t.init_local_path()
        return t

    def round(self, tid: str, result: dict) -> None:
        if not self.callbacks or tid not in self.specs:
            return
        if tid not in self.open:
            self.open[tid] = {}
            for name, cb in self.callbacks:
                self.open[tid][name] = self._trial(name, tid)
                cb.log_trial_start(self.open[tid][name])
        step = int(result["round"]) + 1
        row = {k: result[k] for k in METRICS if isinstance(result.get(k), (int, float))}
        row.update(training_iteration=step, round=int(result["round"]))
        for name, cb in self.callbacks:
            cb.log_trial_result(step, self.open[tid][name], row)
        if step == num_rounds(self.specs[tid]):
            self.end(tid)

    def end(self, tid: str, failed: bool = False) -> None:
        for name, cb in self.callbacks:
            trial = self.open.get(tid, {}).get(name)
            if trial is not None:
                cb.log_trial_end(trial, failed=failed)
        self.open.pop(tid, None)

    def close(self) -> None:
        for tid in list(self.open):
            self.end(tid)
        for _, cb in self.callbacks:
            if hasattr(cb, "on_experiment_end"):
                try:
                    cb.on_experiment_end(trials=[])
                except Exception:
                    pass


def names_of(cli: Optional[list[str]], yaml: Optional[list[str]]) -> list[str]:
    return list(dict.fromkeys([*(yaml or []), *(cli or [])]))
