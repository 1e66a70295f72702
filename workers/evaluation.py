"""After a lineage: robustness, linear-probe transfer and CKA of its committed rounds.

Each evaluation is one JSON file under `trials/<id>/analysis/`, written
atomically, holding its rows and the manifest digest of every round it read.
A file whose digests no longer match (a round was redone) is stale and is
computed again; a current one is skipped, so resume is free here too. The
collector turns the files into the `robustness/`, `probe/` and `cka/` tables.

    robustness  accuracy on CIFAR-10-C (19 corruptions x 5 severities) and
                CIFAR-10.2, for the rounds nearest densities 1.0, 0.41, 0.13,
                0.044 and the winning tickets
    probe       freeze a round's backbone (dense and winning tickets), train a
                linear classifier on another dataset, record its test accuracy
    cka         linear CKA between the dense network and each winning ticket, layer by layer

"The winning tickets" are the winners under every selection protocol
(workers/selection.py), so a query can switch protocols without a rerun.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Optional

import torch
from safetensors.torch import load as st_load

from workers import data as D
from workers import pruning as P
from workers.selection import winning_rounds
from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore

log = logging.getLogger("lth_sweep.evaluation")

SUITES = ("cifar10c", "cifar10_2")
ROBUST_DENSITIES = (1.0, 0.41, 0.13, 0.044)


def wanted(opts: RunOptions) -> list[str]:
    """The evaluation files this trial's options ask for."""
    out = [f"robustness_{s}" for s in opts.robustness]
    out += [f"probe_{t}" for t in opts.probe]
    if opts.cka:
        out.append("cka")
    return out


def robust_rounds(metrics: list[dict]) -> list[int]:
    """Rounds nearest (in log density) to ROBUST_DENSITIES, plus the winning tickets."""
    near = {min(metrics, key=lambda m: abs(math.log(m["density"]) - math.log(d)))["round"]
            for d in ROBUST_DENSITIES}
    return sorted(near | set(winning_rounds(metrics)))


def needed_rounds(name: str, metrics: list[dict]) -> list[int]:
    """The rounds evaluation `name` has to cover."""
    kind = name.partition("_")[0]
    if kind == "robustness":
        return robust_rounds(metrics)
    return sorted({0, *winning_rounds(metrics)})


def _digests(store: LineageStore, rounds) -> dict:
    return {str(k): store.read_manifest(k)["manifest_sha256"] for k in sorted(set(rounds))}


def current(store: LineageStore, name: str, rounds: Optional[list[int]] = None) -> Optional[dict]:
    """The evaluation file if it still matches the committed rounds it read
    (and, given `rounds`, covers them all)."""
    doc = store.read_analysis(name)
    if doc is None:
        return None
    try:
        if _digests(store, map(int, doc["rounds"])) != doc["rounds"]:
            return None
        if rounds is not None and not {str(k) for k in rounds} <= set(doc["rounds"]):
            return None
    except (TypeError, KeyError, ValueError):
        return None
    return doc


def model_at(spec: TrialSpec, store: LineageStore, k: int, info: D.DatasetInfo,
             device: torch.device) -> torch.nn.Module:
    """Round k's trained network (weights with the mask already applied)."""
    from workers.lineage import make_model
    from workers.models import build_model
    from workers.methods import get_method
    m = store.read_manifest(k)["metrics"]
    if "width" in m:  # small_dense rounds have their own width
        model = build_model(spec.model.arch, num_classes=info.num_classes, in_channels=info.channels,
                            image_size=info.image_size, width=m["width"],
                            variant=get_method(spec.prune.method).variant)
    else:
        model = make_model(spec, info, RunOptions(), with_init=False)
    files = store.load_round(k, ["weights.safetensors"])
    model.load_state_dict(st_load(files["weights.safetensors"]))
    return model.to(device).eval()


def _accuracy(model, x, y, info, device) -> float:
    """The engine's own evaluation loop, on any split."""
    from workers.lineage import accuracy
    return accuracy(model, x, y, info, device, autocast=device.type == "cuda")


def _robustness(spec, store, metrics, info, opts, device, suite) -> dict:
    from workers.data import robustness as RB
    root = opts.data_root or D.default_root()
    rounds = robust_rounds(metrics)
    rows = []
    if suite == "cifar10c":
        splits = RB.load_cifar10c(root)
        keys = sorted(splits.keys())
    else:
        test = RB.load_cifar102(root)
    for k in rounds:
        model = model_at(spec, store, k, info, device)
        if suite == "cifar10c":
            for corruption, severity in keys:
                s = splits[(corruption, severity)]
                rows.append({"round": k, "suite": suite, "corruption": corruption, "severity": severity,
                             "accuracy": _accuracy(model, s.x, s.y, info, device)})
        else:
            rows.append({"round": k, "suite": suite, "corruption": "none", "severity": 0,
                         "accuracy": _accuracy(model, test.x, test.y, info, device)})
    return {"rounds": _digests(store, rounds), "rows": rows}


def _probe(spec, store, metrics, info, opts, device, target) -> dict:
    from workers.analysis import linear_probe
    t_info, train, test = D.load_dataset(target, opts.data_root)
    rounds = needed_rounds("probe", metrics)
    rows = []
    for k in rounds:
        model = model_at(spec, store, k, info, device)
        acc = linear_probe(model, train, test, t_info, seed=spec.seed, device=device,
                           num_classes=t_info.num_classes)
        rows.append({"round": k, "target": target, "accuracy": acc})
    return {"rounds": _digests(store, rounds), "rows": rows}


def _cka(spec, store, metrics, info, opts, device) -> dict:
    from workers.analysis import cka_between
    _, _, test = D.load_dataset(spec.data.dataset, opts.data_root)
    x = test.x[:1000]
    dense = model_at(spec, store, 0, info, device)
    rows = []
    for win in winning_rounds(metrics):
        ticket = model_at(spec, store, win, info, device)
        rows += [{"round_a": 0, "round_b": win, **r} for r in cka_between(dense, ticket, x, info)]
    return {"rounds": _digests(store, needed_rounds("cka", metrics)), "rows": rows}


def run_evaluations(spec: TrialSpec, store: LineageStore, opts: RunOptions,
                    device: Optional[torch.device] = None) -> list[str]:
    """Compute every requested evaluation that is missing or stale; returns their names."""
    if not wanted(opts):
        return []
    metrics = [store.read_manifest(k)["metrics"] for k in range(spec.num_rounds)]
    names = [n for n in wanted(opts) if current(store, n, needed_rounds(n, metrics)) is None]
    if not names:
        return []
    from workers.lineage import pick_device
    device = device or pick_device(opts, {})
    info = D.dataset_info(spec.data.dataset)
    for name in names:
        kind, _, arg = name.partition("_")
        if kind == "robustness":
            doc = _robustness(spec, store, metrics, info, opts, device, arg)
        elif kind == "probe":
            doc = _probe(spec, store, metrics, info, opts, device, arg)
        else:
            doc = _cka(spec, store, metrics, info, opts, device)
        store.write_analysis(name, doc)
        log.info("trial %s: %s written (%d rows)", store.trial_id, name, len(doc["rows"]))
    return names


def pending(spec: TrialSpec, store: LineageStore, opts: RunOptions) -> bool:
    """Whether a trial whose lineage is finished still has evaluations to run."""
    if not wanted(opts):
        return False
    metrics = [store.read_manifest(k)["metrics"] for k in range(spec.num_rounds)]
    return any(current(store, n, needed_rounds(n, metrics)) is None for n in wanted(opts))


__all__ = ["SUITES", "current", "needed_rounds", "pending", "robust_rounds", "run_evaluations", "wanted"]
