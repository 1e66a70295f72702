"""Tune's entry point: `unit_trainable(config)` runs trainable.run_unit inside a
Tune trial, reporting through `tune.report`. What a trial process imports:
Ray Tune (which brings pandas and pyarrow along), workers.*, and no other
part of the driver."""
from __future__ import annotations

import socket

import ray
from ray import tune

from orchestrator.trackers import METRICS as TRACKED_METRICS
from orchestrator.tune.trainable import run_unit

# The keys of a committed round's metrics sent through Tune: what ResultsCallback shows
# and what the trackers plot.
REPORTED = ("round", "gpu_ids", "evaluations", *TRACKED_METRICS)


def unit_trainable(config: dict) -> None:
    def report(metrics: dict) -> None:
        # Only what the driver shows and the trackers plot: Tune keeps every
        # trial's last result (and statistics of each of its keys) in the
        # driver's memory, 10,000 times over in a big sweep; the round's full
        # record is in its manifest.
        row = {k: metrics[k] for k in REPORTED if k in metrics}
        row["lth_trial_id"] = metrics["trial_id"]  # Tune owns the `trial_id` key
        tune.report(row)

    def progress(info: dict) -> None:
        tune.report({"lth_trial_id": info["trial_id"], "progress": True,
                     **{k: info[k] for k in ("round", "epoch", "epochs")}})

    where = {"node": node_label(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    run_unit(config["unit"], where, report, progress)


def node_label() -> str:
    """Host name plus Ray node id: distinct even for several nodes on one host."""
    try:
        nid = ray.get_runtime_context().get_node_id()
        return f"{socket.gethostname()}:{nid[:8]}"
    except Exception:
        return socket.gethostname()
