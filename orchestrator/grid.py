"""Grid expansion: a validated experiment -> frozen trial specs.

The trial count is the product of the axis lengths; the order is
datasets x fractions/images_per_class x augmentations x methods x archs x
seeds, so `plan` lists trials the way a person reads the yaml.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from workers.spec import DataSpec, EvalSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec

# Training-split sizes, for the cost estimate only.
TRAIN_SIZES = {"digits": 1198, "cifar10": 50000, "cifar100": 50000}
# Rough training throughput (images/s) of ResNet-18 on one modern GPU at
# 32 px; only for `plan`'s order-of-magnitude estimate.
GPU_IMAGES_PER_S = 20000.0


@dataclass(frozen=True)
class Trial:
    spec: TrialSpec
    resources: dict  # {"cpu": float, "gpu": float}
    options: RunOptions

    @property
    def trial_id(self) -> str:
        return self.spec.trial_id

    def row(self) -> dict:
        d = self.spec.data
        return {"trial_id": self.trial_id, "dataset": d.dataset, "fraction": d.fraction,
                "images_per_class": d.images_per_class, "augmentation": d.augmentation,
                "method": self.spec.prune.method, "arch": self.spec.model.arch,
                "seed": self.spec.seed, "resources": dict(self.resources),
                **({"imbalance": d.imbalance} if d.imbalance is not None else {})}

    def train_images(self) -> int:
        """Images processed by the whole lineage (for the cost estimate)."""
        d, t, p = self.spec.data, self.spec.train, self.spec.prune
        n = TRAIN_SIZES.get(d.dataset, 50000)
        per_class = n / 10
        size = round(d.fraction * n) if d.fraction is not None else d.images_per_class * 10
        size = min(size, n) if size else per_class
        epochs = t.epochs + p.rounds * (t.epochs - p.rewind_epoch)
        return int(size * epochs)


def expand(exp: dict) -> list[Trial]:
    """All trials of one validated experiment (see orchestrator.config)."""
    train = TrainSpec(**exp["train"])
    prune_kw = dict(exp["imp"])
    model_kw = dict(exp.get("model", {}))
    evaluation = EvalSpec(**exp.get("eval", {}))
    base = {"cpu": float(exp["resources"].get("cpu", 1)), "gpu": float(exp["resources"].get("gpu", 0))}
    by_fraction = exp["resources"].get("by_fraction", {})

    def resources(kind: str, size) -> dict:
        over = by_fraction.get(size, {}) if kind == "fraction" else {}
        return {k: float(over.get(k, v)) for k, v in base.items()}
    options = RunOptions(data_root=exp.get("data_root"), **exp.get("runtime", {}))
    sizes = [("fraction", f) for f in exp.get("fractions", [])] + \
            [("images_per_class", n) for n in exp.get("images_per_class", [])]
    archs = exp.get("archs") or [exp["arch"]]
    an = exp.get("analysis", {})
    options = dataclasses.replace(options, robustness=tuple(an.get("robustness", ())),
                                  probe=tuple(an.get("probe", ())), cka=bool(an.get("cka", False)))
    trials = []
    for ds, imbalance, (kind, size), aug, method, arch, seed in itertools.product(
            exp["datasets"], exp.get("imbalances", [None]), sizes, exp["augmentations"], exp["methods"],
            archs, exp["seeds"]):
        spec = TrialSpec(
            data=DataSpec(dataset=ds, augmentation=aug, imbalance=imbalance, **{kind: size}),
            model=ModelSpec(arch=arch, **model_kw),
            train=train,
            prune=PruneSpec(method=method, **prune_kw),
            eval=evaluation,
            seed=seed)
        trials.append(Trial(spec, resources(kind, size), options))
    return trials


def cost_estimate(trials: list[Trial]) -> dict:
    images = sum(t.train_images() for t in trials)
    gpu_hours = images / GPU_IMAGES_PER_S / 3600
    rounds = sum(t.spec.num_rounds for t in trials)
    return {"trials": len(trials), "rounds": rounds, "train_images": images,
            "gpu_hours_estimate": round(gpu_hours, 2),
            "gpus": sum(t.resources["gpu"] for t in trials),
            "cpus": sum(t.resources["cpu"] for t in trials)}
