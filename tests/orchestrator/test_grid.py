"""Grid expansion: trial counts, ids, resources per data size, plan's JSON contract."""
import json

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.grid import expand

BASE = "experiments:\n  x:\n    datasets: [digits]\n    fractions: [0.1]\n    augmentations: [none]\n"


def run_main(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


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


def test_every_shipped_experiment_plans_with_the_product_of_its_axes(capsys):
    import math
    cfg = load_config("experiments.yaml")
    axes = ["datasets", "imbalances", "fractions", "augmentations", "methods", "archs", "seeds", "init_schemes"]
    for name, exp in cfg["experiments"].items():
        rc, out, err = run_main(capsys, ["plan", "-e", name, "--json"])
        assert rc == 0, (name, err)
        sizes = len(exp.get("fractions", [])) + len(exp.get("images_per_class", []))

        def length(a):  # adaptive seeds: plan lists the first batch, `start` seeds per cell
            return exp[a]["adaptive"]["start"] if isinstance(exp[a], dict) else len(exp[a])
        want = sizes * math.prod(length(a) for a in axes if a in exp and a != "fractions")
        assert json.loads(out)["count"] == want, name
        # Every paper study starts from the paper's init, and plan says so.
        schemes = {t["init_scheme"] for t in json.loads(out)["trials"]}
        if name == "init_study":
            assert schemes == {"paper", "torchvision"}
        elif name in ("quickstart", "digits_study", "digits_adaptive"):  # as their results were run (README, docs/)
            assert schemes == {"torchvision"}, name
        else:
            assert schemes == {"paper"}, name


def test_fused_groups_spread_over_the_gpus_first(tmp_path, capsys):
    """Same-shape lineages that ask for a GPU: every GPU gets a group before
    any group grows to runtime.fuse; groups are the same for the same GPU
    count, and `plan` shows them."""
    p = tmp_path / "e.yaml"
    p.write_text(BASE.replace("[none]", "[none, basic, contrast, auto]") + "    resources: {gpu: 1, cpu: 1}\n")

    def groups(*extra):
        rc, out, _ = run_main(capsys, ["plan", "-c", str(p), "-e", "x", "--json", *extra])
        assert rc == 0
        return [g["trials"] for g in json.loads(out)["groups"]]
    assert sorted(map(len, groups("--num-gpus", "2"))) == [2, 2]   # both GPUs busy, not one group of 4
    assert sorted(map(len, groups("--num-gpus", "3"))) == [2]      # 2 + 1 + 1: a lone lineage is no group
    assert sorted(map(len, groups("--num-gpus", "1"))) == [4]      # fuse: 8 per GPU program
    assert groups("--num-gpus", "0") == groups("--num-gpus", "1")
    assert groups("--num-gpus", "2") == groups("--num-gpus", "2")
    assert groups("--num-gpus", "8") == []                         # one lineage per GPU
    trials = sorted(t for g in groups("--num-gpus", "2") for t in g)
    assert len(set(trials)) == 4
    rc, out, _ = run_main(capsys, ["plan", "-c", str(p), "-e", "x", "--num-gpus", "2"])
    assert rc == 0 and out.count("fused group fused-") == 2 and "planned for 2 GPUs" in out


def test_gpus_are_kept_busy_across_buckets_before_groups_are_split(tmp_path, capsys):
    """Two shapes (two data sizes) of 4 lineages each on 2 GPUs: two groups of
    4 already keep both busy, so nothing is split; on 4 GPUs each shape
    splits in two; a CPU experiment ignores GPUs."""
    p = tmp_path / "e.yaml"
    p.write_text(BASE.replace("[none]", "[none, basic, contrast, auto]").replace("[0.1]", "[0.1, 0.2]")
                 + "    resources: {gpu: 1, cpu: 1}\n")

    def sizes(gpus, path=p):
        rc, out, _ = run_main(capsys, ["plan", "-c", str(path), "-e", "x", "--json", "--num-gpus", str(gpus)])
        assert rc == 0
        return sorted(len(g["trials"]) for g in json.loads(out)["groups"])
    assert sizes(2) == [4, 4] and sizes(4) == [2, 2, 2, 2] and sizes(3) == [2, 2, 4]
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text(p.read_text().replace("resources: {gpu: 1, cpu: 1}", "resources: {gpu: 0, cpu: 1}\n"
                                         "    runtime: {fuse: 3}"))
    assert sizes(8, cpu) == [3, 3] == sizes(0, cpu)  # chunks of runtime.fuse: 3 + 1 per shape


def test_a_trials_id_text_assembled_from_its_sub_specs_is_the_canonical_json():
    """TrialSpec._canonical_json is built from its sub-specs' cached texts (a
    grid's 10,000 trials share them): byte for byte the canonical dict's JSON,
    so no trial id moves, for every trial of every shipped experiment."""
    from tests.helpers import ROOT
    cfg = load_config(f"{ROOT}/experiments.yaml")
    trials = [t for exp in cfg["experiments"].values() for t in expand(exp)]
    assert len(trials) > 100
    for t in trials:
        assert t.spec.canonical_json() == json.dumps(t.spec.canonical(), sort_keys=True, separators=(",", ":"))
