"""experiments.yaml validation and the CLI's bad-input contract:
one line on stderr, exit status 2, nothing started, nothing written."""
import json

import pytest

from conftest import TINY_YAML, cli
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.grid import expand

BASE = "experiments:\n  x:\n    datasets: [digits]\n    fractions: [0.1]\n    augmentations: [none]\n"

BAD = {
    "unknown top key": ("bogus: 1\n" + BASE, "bogus"),
    "unknown experiment key": (BASE + "    learning_rate: 3\n", "experiments.x.learning_rate"),
    "unknown train key": (BASE + "    train: {epoch: 3}\n", "experiments.x.train.epoch"),
    "axis not a list": (BASE.replace("[0.1]", "0.1"), "experiments.x.fractions"),
    "fraction above 1": (BASE.replace("[0.1]", "[0.1, 2.0]"), "experiments.x.fractions[1]"),
    "fraction zero": (BASE.replace("[0.1]", "[0]"), "experiments.x.fractions[0]"),
    "fraction negative": (BASE.replace("[0.1]", "[-0.5]"), "(0, 1]"),
    "fraction string": (BASE.replace("[0.1]", "['half']"), "experiments.x.fractions[0]"),
    "unknown dataset": (BASE.replace("[digits]", "[mnist]"), "cifar10"),
    "unknown augmentation": (BASE.replace("[none]", "[mixup]"), "experiments.x.augmentations[0]"),
    "unknown method": (BASE + "    methods: [snip]\n", "experiments.x.methods[0]"),
    "unknown arch": (BASE + "    archs: [vit]\n", "experiments.x.archs[0]"),
    "negative rounds": (BASE + "    imp: {rounds: -1}\n", "experiments.x.imp.rounds"),
    "rate of 1": (BASE + "    imp: {rate: 1.0}\n", "experiments.x.imp.rate"),
    "epochs wrong type": (BASE + "    train: {epochs: ten}\n", "experiments.x.train.epochs"),
    "bool for int": (BASE + "    train: {epochs: true}\n", "experiments.x.train.epochs"),
    "negative gpu": (BASE + "    resources: {gpu: -1}\n", "experiments.x.resources.gpu"),
    "rewind after end": (BASE + "    train: {epochs: 3}\n    imp: {rewind_epoch: 5}\n", "rewind_epoch"),
    "duplicate experiment": (BASE + "  x:\n    datasets: [digits]\n", "duplicate key 'x'"),
    "duplicate axis entry": (BASE.replace("[none]", "[none, none]"), "duplicate"),
    "invalid yaml": ("experiments:\n  x: [unclosed\n", "invalid YAML"),
    "empty file": ("", "top level"),
    "no experiments": ("defaults: {}\n", "experiments"),
    "missing datasets": ("experiments:\n  x:\n    fractions: [0.1]\n", "experiments.x.datasets"),
    "selection in the yaml": (BASE + "    selection: test\n", "--select test"),
    "val_fraction in the yaml": (BASE + "    val_fraction: 0.2\n", "val_per_class"),
    "negative val_per_class": (BASE + "    eval: {val_per_class: -1}\n", "experiments.x.eval.val_per_class"),
    "rewind at the last epoch": (BASE + "    train: {epochs: 3}\n    imp: {rewind_epoch: 3}\n",
                                 "leaves no epoch to train"),
    "by_fraction not a mapping": (BASE + "    resources: {by_fraction: 4}\n", "resources.by_fraction"),
    "by_fraction bad key": (BASE + "    resources: {by_fraction: {2.0: {gpu: 0.25}}}\n", "resources.by_fraction"),
    "by_fraction bad resource": (BASE + "    resources: {by_fraction: {0.1: {tpu: 1}}}\n", "gpu and/or cpu"),
    "by_fraction negative gpu": (BASE + "    resources: {by_fraction: {0.1: {gpu: -0.5}}}\n", "0.1.gpu"),
    "by_fraction unused fraction": (BASE + "    resources: {by_fraction: {0.5: {gpu: 0.5}}}\n",
                                    "0.5 is not one of the experiment's fractions"),
    "compile not a bool": (BASE + "    runtime: {compile: yes please}\n", "runtime.compile"),
    "bad defaults": ("defaults: {train: {lr: -1}}\n" + BASE, "defaults.train.lr"),
}


def run_main(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("cmd", ["plan", "run"])
def test_bad_yaml(tmp_path, capsys, case, cmd):
    text, needle = BAD[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    storage = tmp_path / "store"
    rc, out, err = run_main(capsys, [cmd, "-c", str(cfg), "-e", "x", "--storage", str(storage)])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "bad.yaml" in lines[0] and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not storage.exists()  # nothing written


def test_missing_file_and_experiment(tmp_path, capsys, tiny_yaml):
    rc, _, err = run_main(capsys, ["plan", "-c", str(tmp_path / "nope.yaml")])
    assert rc == 2 and "nope.yaml: file not found" in err
    rc, _, err = run_main(capsys, ["plan", "-c", str(tiny_yaml), "-e", "absent"])
    assert rc == 2 and "absent" in err and "tiny" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["run", "--max-concurrent", "0"], ["run", "--num-gpus", "-1"], ["frobnicate"], [],
    ["plan", "--name", "../escape"], ["run", "--name", "/abs"], ["status", "-e", "nosuch"],
    ["query", "--sql", "select 1", "--compare"], ["run", "--num-cpus", "lots"],
])
def test_bad_arguments(tmp_path, capsys, tiny_yaml, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(capsys, argv + (["-c", str(tiny_yaml), "-e", "tiny"] if argv[:1] in (["run"], ["plan"]) else []))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_plan_json_contract(tmp_path, capsys, tiny_yaml):
    rc, out, _ = run_main(capsys, ["plan", "-c", str(tiny_yaml), "-e", "tiny", "--json"])
    assert rc == 0
    o = json.loads(out)
    assert o["experiment"] == "tiny" and o["count"] == 4 == len(o["trials"])
    t = o["trials"][0]
    assert {"trial_id", "dataset", "fraction", "augmentation", "method", "arch", "seed", "resources"} <= set(t)
    assert t["resources"] == {"cpu": 1.0, "gpu": 0.0}
    assert len({t["trial_id"] for t in o["trials"]}) == 4


def test_resources_per_fraction_pack_small_trials(tmp_path, capsys):
    """resources.by_fraction: four 1% trials per GPU, two 2% trials, whole GPUs
    for the rest; ids do not depend on resources."""
    p = tmp_path / "e.yaml"
    p.write_text(BASE.replace("[0.1]", "[0.01, 0.02, 0.1]")
                 + "    resources: {gpu: 1, cpu: 4, by_fraction: {0.01: {gpu: 0.25, cpu: 1}, 0.02: {gpu: 0.5}}}\n")
    rc, out, _ = run_main(capsys, ["plan", "-c", str(p), "-e", "x", "--json"])
    assert rc == 0
    res = {t["fraction"]: t["resources"] for t in json.loads(out)["trials"]}
    assert res == {0.01: {"cpu": 1.0, "gpu": 0.25}, 0.02: {"cpu": 4.0, "gpu": 0.5}, 0.1: {"cpu": 4.0, "gpu": 1.0}}
    plain = tmp_path / "plain.yaml"
    plain.write_text(BASE.replace("[0.1]", "[0.01, 0.02, 0.1]"))
    ids = [t.trial_id for t in expand(load_config(str(p))["experiments"]["x"])]
    assert ids == [t.trial_id for t in expand(load_config(str(plain))["experiments"]["x"])]


def test_grid_count_is_product_and_ids_stable(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(BASE.replace("[digits]", "[digits, cifar10]").replace("[0.1]", "[0.1, 0.2, 0.3]")
                 + "    seeds: [0, 1]\n    methods: [imp, random_prune]\n")
    trials = expand(load_config(str(p))["experiments"]["x"])
    assert len(trials) == 2 * 3 * 1 * 2 * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    again = expand(load_config(str(p))["experiments"]["x"])
    assert [t.trial_id for t in trials] == [t.trial_id for t in again]


def test_shipped_experiments_validate():
    cfg = load_config("experiments.yaml")
    assert {"quickstart", "fig2_cifar10"} <= set(cfg["experiments"])
    fig2 = expand(cfg["experiments"]["fig2_cifar10"])
    assert len(fig2) == 30
    assert {t.spec.train.epochs for t in fig2} == {200} and {t.spec.prune.rounds for t in fig2} == {16}
    qs = expand(cfg["experiments"]["quickstart"])
    assert {t.spec.data.dataset for t in qs} == {"digits"} and all(t.resources["gpu"] == 0 for t in qs)


def test_console_script_bad_fraction(tmp_path):
    """The same contract through a real process (the hook's spot check)."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BASE.replace("[0.1]", "[2.0]"))
    r = cli("plan", "-c", str(cfg), "-e", "x", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_dependent_methods_need_imp(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(BASE + "    methods: [small_dense]\n")
    rc, _, err = run_main(capsys, ["plan", "-c", str(cfg), "-e", "x"])
    assert rc == 2 and "add imp to methods" in err and len(err.strip().splitlines()) == 1
    cfg.write_text(BASE + "    methods: [full_conv]\n    archs: [mobilenetv2]\n")
    rc, _, err = run_main(capsys, ["plan", "-c", str(cfg), "-e", "x"])
    assert rc == 2 and "mobilenetv2 does not have" in err


def test_every_shipped_experiment_plans_with_the_product_of_its_axes(capsys):
    import math
    cfg = load_config("experiments.yaml")
    axes = ["datasets", "imbalances", "fractions", "augmentations", "methods", "archs", "seeds"]
    for name, exp in cfg["experiments"].items():
        rc, out, err = run_main(capsys, ["plan", "-e", name, "--json"])
        assert rc == 0, (name, err)
        sizes = len(exp.get("fractions", [])) + len(exp.get("images_per_class", []))
        want = sizes * math.prod(len(exp[a]) for a in axes if a in exp and a != "fractions")
        assert json.loads(out)["count"] == want, name


def test_missing_init_weights_fail_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = tmp_path / "e.yaml"
    cfg.write_text(BASE + "    model: {init: imagenet}\n    resources: {gpu: 0, cpu: 1}\n")
    storage = tmp_path / "store"
    rc, _, err = run_main(capsys, ["run", "-c", str(cfg), "-e", "x", "--storage", str(storage)])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "resnet18-f37072fd.pth" in err and "runtime.init_path" in err
    assert not storage.exists()
