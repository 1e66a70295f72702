"""Adding a method, a dataset or an evaluation is one new file plus one registry line.

On a copy of the package: write `workers/methods/toy_half.py`,
`workers/data/toyset.py` and `workers/evaluations/toydensity.py`, append one
import line to each registry, change nothing else, and the new names are
plannable, run end to end on a real local Ray and appear in `query --compare`;
the evaluation's yaml key is checked, its table and results column are filled,
and its view is in `lth-sweep report`.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

TOY_METHOD = '''"""`toy_half`: IMP that prunes half of the usual rate each round (a test's method)."""
from dataclasses import dataclass

from workers import pruning as P

from .base import Method, register


@dataclass(frozen=True)
class ToyHalf(Method):
    def next_masks(self, model, masks, rate, generator):
        return P.global_magnitude_prune(model, masks, rate / 2)


METHOD = register(ToyHalf("toy_half"))
'''

TOY_DATASET = '''"""`toyset`: bars, offline (a test's dataset): class 0 bright on top, class 1 at the bottom."""
import torch

from .base import DatasetInfo, Split, register

INFO = DatasetInfo(name="toyset", num_classes=2, channels=1, image_size=8, mean=(0.3,), std=(0.4,),
                   autoaugment_policy="imagenet", flips=("horizontal",))


def _split(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    for i in range(n):
        rows = slice(0, 4) if y[i] == 0 else slice(4, 8)
        x[i, 0, rows] += 150
    return Split(x=x, y=y)


@register(INFO)
def load(root, download):
    return _split(400, 0), _split(200, 1)
'''

TOY_EVALUATION = '''"""`analysis: {toydensity: true}`: each round's density again, in a table of its own
(a test's evaluation): its table, a results column it fills per round, its report view."""
from .base import Evaluation, register


class ToyDensity(Evaluation):
    name, table, option = "toydensity", "toydensity", "toydensity"
    columns = {"round": "int64", "density": "double"}
    sort_keys = ("trial_id", "round")
    round_columns = ("toy_sparsity",)

    def rounds(self, metrics):
        return [m["round"] for m in metrics]

    def compute(self, file, spec, store, metrics, opts, device):
        return [{"round": m["round"], "density": m["density"]} for m in metrics]

    def round_means(self, rows):
        return {(r["round"], "toy_sparsity"): 1 - r["density"] for r in rows}

    views = ({"title": "Toy density per round", "table": "toydensity", "by": "round", "mean": ["density"],
              "caption": "Mean density per round."},)


EVALUATION = register(ToyDensity())
'''

YAML = """
experiments:
  ext:
    datasets: [digits, toyset]
    fractions: [0.4]
    methods: [imp, toy_half]
    model: {width: 0.125}
    train: {epochs: 2, batch_size: 40, lr: 0.05}
    imp: {rounds: 1, rewind_epoch: 1}
    eval: {val_per_class: 20}
    analysis: {toydensity: true}
    resources: {gpu: 0, cpu: 1}
"""


def _copy_with_extensions(dst):
    for pkg in ("orchestrator", "workers", "bench"):
        shutil.copytree(os.path.join(ROOT, pkg), dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "workers" / "methods" / "toy_half.py").write_text(TOY_METHOD)
    (dst / "workers" / "data" / "toyset.py").write_text(TOY_DATASET)
    (dst / "workers" / "evaluations" / "toydensity.py").write_text(TOY_EVALUATION)
    for registry, line in (("workers/methods/__init__.py", "from . import toy_half  # noqa: E402,F401\n"),
                           ("workers/data/__init__.py", "from . import toyset  # noqa: E402,F401\n"),
                           ("workers/evaluations/__init__.py", "from . import toydensity  # noqa: E402,F401\n")):
        with open(dst / registry, "a") as f:
            f.write(line)


def _yaml(code, text):
    path = code / "other.yaml"
    path.write_text(text)
    return path


def _cli(code, *args):
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_AIR_NEW_OUTPUT": "0"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=code, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.ray
def test_a_toy_method_dataset_and_evaluation_are_one_file_and_one_line_each(tmp_path):
    code = tmp_path / "code"
    _copy_with_extensions(code)
    (code / "experiments.yaml").write_text(YAML)
    plan = _cli(code, "plan", "-e", "ext", "--json")
    assert plan.returncode == 0, plan.stderr
    trials = json.loads(plan.stdout)["trials"]
    assert {(t["dataset"], t["method"]) for t in trials} == {
        ("digits", "imp"), ("digits", "toy_half"), ("toyset", "imp"), ("toyset", "toy_half")}
    run = _cli(code, "run", "-e", "ext", "--num-cpus", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    cmp = _cli(code, "query", "-e", "ext", "--compare", "--format", "json")
    assert cmp.returncode == 0, cmp.stderr
    rows = json.loads(cmp.stdout)
    assert {(r["dataset"], r["method"]) for r in rows} == {(d, m) for d in ("digits", "toyset")
                                                           for m in ("imp", "toy_half")}
    density = {(r["dataset"], r["method"]): r for r in rows}
    # The toy rule prunes 10% where imp prunes 20%: the tables see the method's own schedule.
    rounds = json.loads(_cli(code, "query", "-e", "ext", "--format", "json").stdout)
    last = {(r["dataset"], r["method"]): r["density"] for r in rounds if r["round"] == 1}
    assert last[("toyset", "imp")] == pytest.approx(0.8, abs=1e-3)
    assert last[("toyset", "toy_half")] == pytest.approx(0.9, abs=1e-3)
    assert density[("toyset", "imp")]["dense_test_acc"] > 0.9  # the bars are easy
    # The toy evaluation: its results column on every round, its view in the report.
    assert all(r["toy_sparsity"] == pytest.approx(1 - r["density"]) for r in rounds)
    rep = _cli(code, "report", "-e", "ext", "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    toy = md.split("## Toy density per round\n", 1)[1].split("\n## ", 1)[0]
    assert "Mean density per round." in toy and "| 0 | 1.0000 |" in toy and "_Skipped" not in toy
    bad = _cli(code, "plan", "-e", "ext", "-c", str(_yaml(code, YAML.replace("toydensity: true", "toydensity: 3"))))
    assert bad.returncode == 2 and "analysis.toydensity: 3 is not true/false" in bad.stderr
