"""Adaptive seeds' decisions (orchestrator/adaptive.py) on gains the tests
choose, the yaml and command-line forms, and what `plan` says it can cost.
The real sweep is tests/integration/test_adaptive_sweep.py."""
import json

import numpy as np
import pytest

from orchestrator import adaptive, adaptive_run, sequential
from orchestrator.adaptive import AT_MAX, BUDGET, NO_CLAIM, RESOLVED, WAITING, Settings, decide
from tests.helpers import cli

S = Settings(start=3, step=2, max=9, effect=0.0)
CLEAR = [0.10, 0.12, 0.11, 0.13, 0.10, 0.12, 0.11, 0.12, 0.10]     # resolves at the first batch that can
NOTHING = [0.01, -0.02, 0.015, -0.01, 0.0, 0.02, -0.015, 0.005, -0.005]  # never resolves


def finished(gains, n):
    return dict(enumerate(gains[:n]))


def run_to_end(truth: dict, settings=S, costs=None, budget=None, kill_after=None):
    """Play the driver: decide, 'train' the planned seeds (all of them, or with
    `kill_after` only that many of the first batch that adds seeds), decide again."""
    done = {c: {} for c in truth}
    batches = 0
    while True:
        state, fin = decide(done, settings, costs, budget)
        if fin:
            return state, batches
        todo = [(c, s) for c in truth for s in range(state[c].n) if s not in done[c]]
        if kill_after is not None and batches == 1:
            todo, kill_after = todo[:kill_after], None  # the driver dies mid-batch; a re-run goes on
        else:
            batches += 1
        for c, s in todo:
            done[c][s] = truth[c][s]


def test_seeds_go_only_to_the_cells_whose_claim_is_open():
    state, _ = run_to_end({"clear": CLEAR, "nothing": NOTHING})
    first = sequential.earliest(S.alpha, 2)
    assert state["clear"].status == RESOLVED and state["clear"].resolved_at == state["clear"].n
    assert state["clear"].n == next(n for n in S.checkpoints() if n >= first)  # 5: 3 seeds cannot resolve 2 cells
    assert state["nothing"].status == AT_MAX and state["nothing"].n == S.max
    assert [n for n, _ in state["nothing"].history] == [3, 5, 7, 9]
    v = state["clear"].verdict
    assert v.low > 0 and v.direction == 1


def test_a_batch_is_judged_only_when_every_lineage_of_it_has_finished():
    done = {"clear": finished(CLEAR, 3), "nothing": finished(NOTHING, 2)}
    state, fin = decide(done, S)
    assert not fin and state["nothing"].status == WAITING
    assert state["clear"].n == 3  # no cell grows while the batch is incomplete


def test_a_kill_mid_batch_replays_the_same_decisions():
    truth = {"a": CLEAR, "b": NOTHING, "c": [g / 2 for g in NOTHING]}
    whole, _ = run_to_end(truth)
    for k in range(0, 4):
        again, _ = run_to_end(truth, kill_after=k)
        assert {c: (s.n, s.status) for c, s in again.items()} == {c: (s.n, s.status) for c, s in whole.items()}


def test_a_budget_goes_to_the_cells_closest_to_resolving():
    rng = np.random.default_rng(0)
    near = list(0.02 + rng.normal(0, 0.02, 9))      # some evidence, not enough at 3
    far = list(rng.normal(0, 0.02, 9))             # none
    costs = {"near": 1.0, "far": 1.0}
    # 3 + 3 seeds of first batch = 6 h; 2 h more buys one cell's next step only
    state, fin = decide({"near": finished(near, 3), "far": finished(far, 3)}, S, costs, budget=8.0)
    assert fin is False
    closest = max(["near", "far"], key=lambda c: state[c].history[-1][1])
    other = "far" if closest == "near" else "near"
    assert state[closest].n == 5 and state[other].status == BUDGET and state[other].n == 3


def test_a_cell_without_paired_seeds_makes_no_claim_and_gets_none():
    state, fin = decide({"x": {0: None, 1: 0.1, 2: 0.2}, "y": finished(CLEAR, 3)}, S)
    assert state["x"].status == NO_CLAIM and state["x"].n == 3
    assert state["y"].status == WAITING and state["y"].n == 5 and not fin  # open at 3: 2 more seeds


def test_cost_range_and_budget_check():
    costs = {"a": 0.5, "b": 0.25}
    r = adaptive_run.cost_range(S, costs)
    assert (r["lineages_min"], r["lineages_max"]) == (10, 18)  # 5 seeds (the earliest batch for 2 cells), 9
    assert r["device_hours_min"] == pytest.approx(5 * 0.75) and r["device_hours_max"] == pytest.approx(9 * 0.75)
    assert adaptive_run.cost_range(S, costs, budget=4.0)["device_hours_max"] == 4.0
    with pytest.raises(ValueError, match="below the first batch"):
        adaptive_run.check_budget(S, costs, 2.0)


ADAPTIVE_YAML = """
experiments:
  tiny:
    datasets: [digits]
    images_per_class: [5, 50]
    augmentations: [none]
    seeds: {adaptive: {start: 3, step: 2, max: 9}}
    model: {width: 0.125}
    train: {epochs: 2, batch_size: 40}
    imp: {rounds: 1, rewind_epoch: 1}
    resources: {gpu: 0, cpu: 1}
"""


def test_plan_shows_the_least_and_the_most_an_adaptive_study_costs(tmp_path):
    (tmp_path / "experiments.yaml").write_text(ADAPTIVE_YAML)
    r = cli("plan", "-e", "tiny", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 cells: at least 10 lineages" in r.stdout and "at most 18" in r.stdout
    assert "a claim can resolve from 4 seeds on" in r.stdout
    assert r.stdout.count("digits") == 6  # the first batch: 3 seeds of 2 cells
    j = json.loads(cli("plan", "-e", "tiny", "--json", cwd=tmp_path).stdout)
    assert j["count"] == 6 and j["adaptive"]["lineages_min"] == 10 and j["adaptive"]["lineages_max"] == 18
    # the command-line form replaces the yaml's seeds
    j = json.loads(cli("plan", "-e", "tiny", "--json", "--adaptive", "start=4,step=1,max=6,effect=0.01",
                       cwd=tmp_path).stdout)
    assert j["count"] == 8 and j["adaptive"]["effect"] == 0.01 and j["adaptive"]["lineages_max"] == 12
    budget = json.loads(cli("plan", "-e", "tiny", "--json", "--budget-gpu-h", "1", cwd=tmp_path).stdout)
    assert budget["adaptive"]["budget_gpu_h"] == 1.0


@pytest.mark.parametrize("seeds, flag, message", [
    ("{adaptive: {start: 3}}", None, "seeds: max is required"),
    ("{adaptive: {start: 1, max: 5}}", None, "seeds: start: 1 seeds give no interval"),
    ("{adaptive: {start: 3, max: 2}}", None, "seeds: max: 2 is below start (3)"),
    ("{adaptive: {start: 3, max: 5, effect: 1.5}}", None, "effect: 1.5 is outside (-1, 1)"),
    ("{adaptive: {start: 3, max: 5, step: 0}}", None, "step: 0 must be at least 1"),
    ("{adaptive: {start: 3, max: 5, stop: 2}}", None, "unknown key 'stop'"),
    ("{adaptive: {start: 3.5, max: 5}}", None, "start: 3.5 is not an integer"),
    ("{fixed: [0, 1]}", None, "must be a list of seeds or {adaptive:"),
    ("[0, 1]", ["--budget-gpu-h", "2"], "--budget-gpu-h goes with adaptive seeds"),
    ("[0, 1]", ["--adaptive", "start=3,max=x"], "--adaptive: max=x is not an integer"),
    ("[0, 1]", ["--adaptive", "begin=3"], "--adaptive: 'begin=3' is not KEY=VALUE"),
    ("{adaptive: {start: 3, max: 5}}", ["--budget-gpu-h", "0"], "--budget-gpu-h must be > 0"),
])
def test_a_bad_adaptive_form_is_one_line_exit_2(tmp_path, seeds, flag, message):
    (tmp_path / "experiments.yaml").write_text(ADAPTIVE_YAML.replace("{adaptive: {start: 3, step: 2, max: 9}}", seeds))
    # `run --address` runs here, not as a process: the input is refused before any connection
    for verb in (["plan"], ["run", "--address", "127.0.0.1:9"]):
        r = cli(*verb, "-e", "tiny", *(flag or []), cwd=tmp_path)
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "runs").exists()


def test_a_margin_also_resolves_a_cell_whose_interval_lies_inside_it():
    """No gain worth `margin` is a claim too: a cell whose gains stay near the
    effect resolves once its whole interval is inside effect +- margin, and
    without a margin it runs to max."""
    rng = np.random.default_rng(5)
    flat = list(rng.normal(0.0, 0.004, 9))
    with_margin = Settings(start=3, step=2, max=9, effect=0.0, margin=0.02)
    state, _ = run_to_end({"flat": flat, "clear": CLEAR}, settings=with_margin)
    assert state["flat"].status == RESOLVED and state["flat"].n < 9
    assert state["flat"].claim == "gain within 0 +- 0.02"
    v = state["flat"].verdict
    assert -0.02 <= v.low and v.high <= 0.02 and not v.resolved
    assert state["clear"].claim == "gain > 0"
    without, _ = run_to_end({"flat": flat, "clear": CLEAR})
    assert without["flat"].status == AT_MAX and without["flat"].claim is None


def test_a_parent_built_trial_brings_its_parent_lineage_into_the_plan():
    """same_layer_sparse is made from the imp lineage of its grid point and seed:
    where its cell gets a seed that the imp cell (resolved) does not, the imp
    lineage of that seed is planned too, or the child could not run."""
    import yaml

    from orchestrator.adaptive import by_cell
    from orchestrator.adaptive_run import planned
    from orchestrator.config import validate
    from orchestrator.grid import expand
    doc = yaml.safe_load(ADAPTIVE_YAML.replace("images_per_class: [5, 50]", "images_per_class: [5]"))
    doc["experiments"]["tiny"]["methods"] = ["imp", "same_layer_sparse"]
    trials = expand(validate(doc)["experiments"]["tiny"])
    cells = by_cell(trials)
    method = {c: next(t.spec.prune.method for t in trials if t.spec.cell_id == c) for c in cells}
    imp = next(c for c in cells if method[c] == "imp")
    child = next(c for c in cells if method[c] == "same_layer_sparse")
    gains = {imp: finished(CLEAR, 5), child: finished(NOTHING, 5)}
    state, _ = decide(gains, S)
    assert state[imp].n == 5 and state[child].n == 7
    plan = {t.trial_id for t in planned(trials, state)}
    assert plan == set(cells[imp][:7]) | set(cells[child][:7])


def test_a_fixed_seed_run_after_an_adaptive_one_shows_every_seed_again(tmp_path):
    from workers.store import SweepStore
    sweep = SweepStore(str(tmp_path), "s")
    adaptive.write_state(sweep, S, {"c": ["t0", "t1", "t2"]}, {"c": 1.0}, None)
    assert adaptive.read_state(sweep)["settings"]["start"] == 3
    adaptive.forget_state(sweep)
    assert adaptive.read_state(sweep) is None
    adaptive.forget_state(sweep)  # nothing to forget: nothing written
    assert adaptive.read_state(SweepStore(str(tmp_path), "other")) is None
    assert not (tmp_path / "other").exists()
    (tmp_path / "s" / "adaptive.json").write_text('{"settings": {"start": 3')  # torn
    from orchestrator.results import ResultsError
    with pytest.raises(ResultsError, match="is not an adaptive sweep's state"):
        adaptive.read_state(sweep)
    adaptive.forget_state(sweep)  # a fixed-seed run replaces it
    assert adaptive.read_state(sweep) is None


def test_adaptive_seeds_in_defaults_merge_under_each_experiment(tmp_path):
    (tmp_path / "experiments.yaml").write_text("""
defaults:
  seeds: {adaptive: {start: 3, max: 7}}
  resources: {gpu: 0, cpu: 1}
experiments:
  a: {datasets: [digits], fractions: [0.1]}
  b: {datasets: [digits], fractions: [0.1], seeds: [0, 1]}
  c: {datasets: [digits], fractions: [0.1], seeds: {adaptive: {max: 9}}}
""")
    got = {}
    for e in "abc":
        r = cli("plan", "-e", e, "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        got[e] = json.loads(r.stdout)
    assert got["a"]["count"] == 3 and got["a"]["adaptive"]["max"] == 7
    assert got["b"]["count"] == 2 and "adaptive" not in got["b"]
    assert got["c"]["adaptive"]["start"] == 3 and got["c"]["adaptive"]["max"] == 9
    text = (tmp_path / "experiments.yaml").read_text()  # the merged form is what must be valid
    (tmp_path / "experiments.yaml").write_text(text.replace("{max: 9}", "{max: 2}"))
    r = cli("plan", "-e", "a", cwd=tmp_path)
    assert r.returncode == 2 and "experiments.c.seeds: max: 2 is below start (3)" in r.stderr, r.stderr


def test_the_budget_pays_for_the_parent_lineages_a_child_cell_pulls_in():
    """same_layer_sparse's cell open, its imp cell resolved: the child's next
    step needs 2 imp lineages too, so a budget that fits the child's lineages
    alone does not grant it."""
    gains = {"imp": finished(CLEAR, 5), "child": finished(NOTHING, 5)}
    costs = {"imp": 1.0, "child": 1.0}
    parents = {"child": "imp"}
    state, _ = decide(gains, S, costs, budget=10.0 + 2.0, parents=parents)  # 5 + 5 spent; +2 child only
    assert state["child"].status == BUDGET and state["child"].n == 5
    state, _ = decide(gains, S, costs, budget=10.0 + 4.0, parents=parents)  # +2 child, +2 imp lineages
    assert state["child"].status == WAITING and state["child"].n == 7
    state, _ = decide(gains, S, costs, budget=12.0)  # without the relation the child alone fits
    assert state["child"].n == 7
