"""`analysis: {robustness: [cifar10c, cifar10_2]}`: accuracy under corruption
and distribution shift of CIFAR-10 models.

    cifar10c   CIFAR-10-C: 19 corruptions x 5 severities (one row each)
    cifar10_2  CIFAR-10.2: a fresh test set drawn like CIFAR-10's (one row)

for the rounds nearest densities 1.0, 0.41, 0.13, 0.044 and the winning
tickets. Each round's mean over a suite becomes the `acc_<suite>` column of
its results row; the report draws one Figure 3 panel set per suite.
"""
from __future__ import annotations

import math

from workers import data
from workers.data import robustness as suites
from workers.selection import winning_rounds
from workers.spec import Rule
from workers.inference import accuracy

from .base import Evaluation, model_at, register

# suite -> what tables and figures call it
SUITES = {"cifar10c": "CIFAR-10-C", "cifar10_2": "CIFAR-10.2"}
DATASETS = ("cifar10",)  # the suites' label space
ROBUST_DENSITIES = (1.0, 0.41, 0.13, 0.044)


def robust_rounds(metrics: list[dict]) -> list[int]:
    """Rounds nearest (in log density) to ROBUST_DENSITIES, plus the winning tickets."""
    near = {min(metrics, key=lambda m: abs(math.log(m["density"]) - math.log(d)))["round"]
            for d in ROBUST_DENSITIES}
    return sorted(near | set(winning_rounds(metrics)))


def column(suite: str) -> str:
    return f"acc_{suite}"


class Robustness(Evaluation):
    name, table = "robustness", "robustness"
    option = "robustness"
    rule, default = Rule(str, choices="workers.evaluations.robustness:SUITES", many=True), ()
    help = ("CIFAR-10 trials only: accuracy on these suites at the rounds nearest densities 1.0, 0.41, 0.13, "
            "0.044 and at the winning tickets.")
    columns = {"round": "int64", "suite": "string", "corruption": "string", "severity": "int64",
               "accuracy": "double"}
    sort_keys = ("trial_id", "round")
    round_columns = tuple(column(s) for s in SUITES)
    labels = {column(s): label for s, label in SUITES.items()}
    report_after = "fig2b"

    def rounds(self, metrics):
        return robust_rounds(metrics)

    def compute(self, file, spec, store, metrics, opts, device):
        suite = file.partition("_")[2]
        root = opts.data_root or data.default_root()
        info = data.dataset_info(spec.data.dataset)
        if suite == "cifar10c":
            # Lazy: each (corruption, severity) block is read when looked up (30 MB each, 2.9 GB in all).
            splits = suites.load_cifar10c(root)
            cases = sorted(splits.keys())
        else:
            test = suites.load_cifar102(root)
            splits, cases = {("none", 0): test}, [("none", 0)]
        rows = []
        for k in self.rounds(metrics):
            model = model_at(spec, store, k, info, device)
            for corruption, severity in cases:
                split = splits[(corruption, severity)]
                rows.append({"round": k, "suite": suite, "corruption": corruption, "severity": severity,
                             "accuracy": accuracy(model, split.x, split.y, info, device,
                                                  autocast=device.type == "cuda")})
        return rows

    def round_means(self, rows):
        acc: dict[tuple[int, str], list] = {}
        for r in rows:
            acc.setdefault((r["round"], column(r["suite"])), []).append(r["accuracy"])
        return {key: sum(v) / len(v) for key, v in acc.items()}

    def preflight(self, trials):
        roots = {suite: {o.data_root or data.default_root() for _, o in trials if suite in self.value(o)}
                 for suite in SUITES}
        for root in sorted(roots["cifar10c"]):
            suites.load_cifar10c(root)
        for root in sorted(roots["cifar10_2"]):
            suites.load_cifar102(root)

    def check_experiment(self, datasets, value, err):
        if value and set(datasets) - set(DATASETS):
            err("CIFAR-10-C and CIFAR-10.2 evaluate CIFAR-10 models: datasets must be [cifar10]")



EVALUATION = register(Robustness())
