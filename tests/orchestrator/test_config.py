"""experiments.yaml validation: one line naming the file, key path and what is allowed."""
import os

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.grid import expand

BASE = "experiments:\n  x:\n    datasets: [digits]\n    fractions: [0.1]\n    augmentations: [none]\n"
# name -> (file text, part of the error line), from the data file beside this one.
with open(os.path.join(os.path.dirname(__file__), "bad_configs.yaml"), encoding="utf-8") as _f:
    BAD = {name: (case["yaml"], case["error"]) for name, case in yaml.safe_load(_f).items()}


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


def test_shipped_experiments_validate():
    cfg = load_config("experiments.yaml")
    assert {"quickstart", "fig2_cifar10"} <= set(cfg["experiments"])
    fig2 = expand(cfg["experiments"]["fig2_cifar10"])
    assert len(fig2) == 30 * 3  # 6 sizes x 5 augmentations x 3 seeds
    # A cell with one seed makes no claim: every study but the smoke run has three or more.
    for name, exp in cfg["experiments"].items():
        seeds = {t.spec.seed for t in expand(exp)}
        assert len(seeds) == 1 if name == "quickstart" else len(seeds) >= 3, (name, seeds)
    assert {t.spec.train.epochs for t in fig2} == {200} and {t.spec.prune.rounds for t in fig2} == {16}
    qs = expand(cfg["experiments"]["quickstart"])
    assert {t.spec.data.dataset for t in qs} == {"digits"} and all(t.resources["gpu"] == 0 for t in qs)


def test_dependent_methods_need_imp(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(BASE + "    methods: [small_dense]\n")
    rc, _, err = run_main(capsys, ["plan", "-c", str(cfg), "-e", "x"])
    assert rc == 2 and "add imp to methods" in err and len(err.strip().splitlines()) == 1
    cfg.write_text(BASE + "    methods: [full_conv]\n    archs: [mobilenetv2]\n")
    rc, _, err = run_main(capsys, ["plan", "-c", str(cfg), "-e", "x"])
    assert rc == 2 and "mobilenetv2 does not have" in err
