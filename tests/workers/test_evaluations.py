"""Evaluations after a lineage: robustness (CIFAR-10-C, CIFAR-10.2 in their
official file formats, written small here), linear probe and CKA; their tables,
the per-suite means on the results rows, skipping and staleness."""
import os

import numpy as np
import pandas as pd
import pytest

from orchestrator import results as R
from tests.workers.data.helpers import write_cifar
from workers import evaluations as E
from workers import lineage as L
from workers.data import robustness as RB
from workers.evaluations.robustness import robust_rounds
from workers.selection import best_round, winning_rounds
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def write_suites(root, k=4):
    rng = np.random.default_rng(1)
    c = os.path.join(root, "CIFAR-10-C")
    os.makedirs(c)
    np.save(os.path.join(c, "labels.npy"), np.tile(rng.integers(0, 10, k), 5).astype(np.uint8))
    for name in RB.CIFAR10C_CORRUPTIONS:
        np.save(os.path.join(c, f"{name}.npy"), rng.integers(0, 256, (5 * k, 32, 32, 3), dtype=np.uint8))
    os.makedirs(os.path.join(root, "cifar-10.2"))
    np.savez(os.path.join(root, "cifar-10.2", "cifar102_test.npz"),
             images=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 12).astype(np.int64))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", train_per_class=20, test_per_class=5)
    write_suites(str(root))
    spec = TrialSpec(DataSpec("cifar10", fraction=0.5), model=ModelSpec(width=0.0625),
                     train=TrainSpec(epochs=2, batch_size=50, lr=0.05), prune=PruneSpec(rounds=2, rewind_epoch=1))
    opts = RunOptions(data_root=str(root),
                      analysis={"robustness": ["cifar10c", "cifar10_2"], "probe": ["cifar10"], "cka": True})
    st = SweepStore(str(tmp_path_factory.mktemp("runs")), "s")
    lin = st.lineage(spec.trial_id)
    metrics = L.run_lineage(spec, lin, opts)
    names = E.run_evaluations(spec, lin, opts)
    R.Collector(st).rebuild()
    return spec, opts, st, lin, metrics, names


def test_every_requested_evaluation_is_written_once(evaluated):
    spec, opts, st, lin, metrics, names = evaluated
    assert sorted(names) == ["cka", "probe_cifar10", "robustness_cifar10_2", "robustness_cifar10c"]
    assert not E.pending(spec, lin, opts)
    assert E.run_evaluations(spec, lin, opts) == []  # current files are skipped


def test_robustness_table_and_means_on_the_round_rows(evaluated):
    spec, opts, st, lin, metrics, names = evaluated
    rounds = robust_rounds(metrics)
    assert set(winning_rounds(metrics)) <= set(rounds) and 0 in rounds
    assert {best_round(metrics, "val"), best_round(metrics, "test")} <= set(rounds)
    rob = R.to_pandas(R.load_table(st, "robustness"))
    c = rob[rob.suite == "cifar10c"]
    assert len(c) == len(rounds) * 19 * 5 and set(c["severity"]) == {1, 2, 3, 4, 5}
    assert set(c["corruption"]) == set(RB.CIFAR10C_CORRUPTIONS) and set(c["round"]) == set(rounds)
    assert len(rob[rob.suite == "cifar10_2"]) == len(rounds)
    assert rob["accuracy"].between(0, 1).all()
    res = R.load_results(st).set_index("round")
    for k in range(spec.num_rounds):
        mine = c[c["round"] == k]["accuracy"]
        if k in rounds:
            assert res.loc[k, "acc_cifar10c"] == pytest.approx(mine.mean())
        else:
            assert pd.isna(res.loc[k, "acc_cifar10c"])  # not evaluated: missing, never zero


def test_cifar102_accuracy_is_the_engines_accuracy(evaluated):
    spec, opts, st, lin, metrics, names = evaluated
    import torch

    from workers import data as D
    test = RB.load_cifar102(opts.data_root)
    k = best_round(metrics, "val")
    model = E.model_at(spec, lin, k, D.dataset_info("cifar10"), torch.device("cpu"))
    with torch.no_grad():
        pred = model(D.normalize(test.x, D.dataset_info("cifar10"))).argmax(1)
    expect = float((pred == test.y).float().mean())
    rob = R.to_pandas(R.load_table(st, "robustness"))
    got = rob[(rob.suite == "cifar10_2") & (rob["round"] == k)]["accuracy"].item()
    assert got == pytest.approx(expect)


def test_probe_and_cka_tables(evaluated):
    spec, opts, st, lin, metrics, names = evaluated
    probe = R.to_pandas(R.load_table(st, "probe"))
    # The dense round and the winning ticket under each protocol: a query can switch protocols.
    assert set(probe["round"]) == {0, *winning_rounds(metrics)} and set(probe["target"]) == {"cifar10"}
    assert probe["accuracy"].between(0, 1).all()
    cka = R.to_pandas(R.load_table(st, "cka"))
    assert list(cka["layer"].unique()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert (cka["round_a"] == 0).all() and set(cka["round_b"]) == set(winning_rounds(metrics))
    assert cka["cka"].between(0, 1.000001).all()


def test_a_redone_round_makes_its_evaluations_stale(evaluated, tmp_path):
    spec, opts, st, lin, metrics, names = evaluated
    doc = lin.read_analysis("cka")
    doc["rounds"] = {k: "0" * 64 for k in doc["rounds"]}  # as if those rounds had been recommitted
    lin.write_analysis("cka", doc)
    assert E.current(lin, "cka") is None and E.pending(spec, lin, opts)
    R.Collector(st).rebuild()
    assert len(R.load_table(st, "cka")) == 0  # stale rows never reach the table
    assert E.run_evaluations(spec, lin, opts) == ["cka"]


def test_an_evaluation_missing_a_protocols_winner_is_redone(evaluated):
    """Files written when only the val winner was evaluated lack what --select test needs."""
    spec, opts, st, lin, metrics, names = evaluated
    doc = lin.read_analysis("probe_cifar10")
    needed = E.evaluation_of_file("probe_cifar10").rounds(metrics)
    dropped = [k for k in needed if k != 0][:1]
    if not dropped:
        pytest.skip("the dense round wins under every protocol here")
    doc["rounds"].pop(str(dropped[0]))
    doc["rows"] = [r for r in doc["rows"] if r["round"] != dropped[0]]
    lin.write_analysis("probe_cifar10", doc)
    assert E.pending(spec, lin, opts)
    assert E.run_evaluations(spec, lin, opts) == ["probe_cifar10"]
    assert not E.pending(spec, lin, opts)


def test_analysis_options_are_the_yaml_mapping_checked_by_the_registry():
    """RunOptions holds `analysis:` as the yaml gives it; each evaluation declares its key,
    rule and default, so a new one needs no RunOptions field."""
    import dataclasses
    import json

    from orchestrator.config import ConfigError, validate
    from orchestrator.grid import expand

    opts = RunOptions(analysis={"probe": ["cifar10"], "cka": True})
    assert RunOptions(**dataclasses.asdict(opts)) == opts and hash(opts) == hash(RunOptions(**dataclasses.asdict(opts)))
    assert RunOptions(**json.loads(json.dumps(dataclasses.asdict(opts)))) == opts  # lists after a JSON round trip
    assert E.wanted(opts) == ["probe_cifar10", "cka"]
    assert E.EVALUATIONS["robustness"].value(opts) == () and E.EVALUATIONS["cka"].value(RunOptions()) is False
    with pytest.raises(ValueError, match="unknown analysis key 'ckaa'"):
        E.wanted(RunOptions(analysis={"ckaa": True}))
    exp = {"datasets": ["cifar10"], "fractions": [0.1], "analysis": {"robustness": ["cifar10c"], "cka": True}}
    trial, = expand(validate({"experiments": {"e": exp}})["experiments"]["e"])
    assert trial.options.analysis == (("cka", True), ("robustness", ("cifar10c",)))
    for bad, message in (({"cka": "yes"}, "analysis.cka: 'yes' is not true/false"),
                         ({"robustness": ["cifar10z"]}, "analysis.robustness: 'cifar10z' is not one of"),
                         ({"ckaa": True}, "analysis.ckaa: unknown key; allowed: cka, probe, robustness")):
        with pytest.raises(ConfigError, match=message) as e:
            validate({"experiments": {"e": {**exp, "analysis": bad}}})
        assert "\n" not in str(e.value)
