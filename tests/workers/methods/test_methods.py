"""Methods: each name builds what it says, and the ones built from an imp lineage."""
import pytest
import torch
from safetensors.torch import load as st_load

from workers import checkpoint as C
from workers import data as D
from workers import lineage as L
from workers import pruning as P
from workers.losses import TvMFHead
from workers.methods import METHODS, ParentMissing, get_method, trial_model
from workers.models.variants import HarmonicConv2d
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

INDEPENDENT = ["imp", "random_prune", "cosine_loss", "tvmf_loss", "full_conv", "harmonic"]


ALL = INDEPENDENT + ["same_layer_sparse", "small_dense"]


def spec(method, **kw):
    return TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=2, batch_size=40, lr=0.05),
                     prune=PruneSpec(method=method, rounds=1, rewind_epoch=1), **kw)


def model_of(method):
    return trial_model(spec(method), D.dataset_info("digits"), RunOptions())


def test_registry_and_unknown_method():
    assert set(ALL) == set(METHODS)
    with pytest.raises(ValueError, match="known"):
        get_method("snip")


def test_each_method_builds_what_it_says():
    std = model_of("imp")
    full = model_of("full_conv")
    assert full.layer1[0].conv1.padding == (2, 2) and std.layer1[0].conv1.padding == (1, 1)
    x = torch.zeros(2, 1, 8, 8)
    # Full convolution grows the map: the stem's 8x8 becomes 10x10.
    assert full.stem(x).shape[-1] == 10 and std.stem(x).shape[-1] == 8
    harm = model_of("harmonic")
    assert any(isinstance(m, HarmonicConv2d) for m in harm.modules())
    names = P.prunable_names(harm)
    assert names and all(n.endswith("mix.weight") or "shortcut" in n or n.startswith("stem") for n in names)
    assert not any("basis" in n for n, _ in harm.named_parameters())
    assert isinstance(model_of("tvmf_loss").fc, TvMFHead) and isinstance(std.fc, torch.nn.Linear)
    assert get_method("cosine_loss").loss == "cosine" and get_method("imp").loss == "cross_entropy"


@pytest.mark.parametrize("method", ["cosine_loss", "tvmf_loss", "full_conv", "harmonic"])
def test_method_lineage_runs_and_differs_from_imp(tmp_path, method):
    """Same seed, data and schedule as imp: the round-0 network must differ
    (the loss/head/convs really changed), and the lineage prunes as IMP does."""
    ms = L.run_lineage(spec(method), SweepStore(str(tmp_path), "m").lineage(spec(method).trial_id))
    base = L.run_lineage(spec("imp"), SweepStore(str(tmp_path), "b").lineage(spec("imp").trial_id))
    assert [round(m["density"], 4) for m in ms] == [round(m["density"], 4) for m in base]
    w = C.read_weights(SweepStore(str(tmp_path), "m").lineage(spec(method).trial_id), 0)[0]
    wb = C.read_weights(SweepStore(str(tmp_path), "b").lineage(spec("imp").trial_id), 0)[0]
    shared = [k for k in wb if k in w and w[k].shape == wb[k].shape and w[k].is_floating_point()]
    assert set(w) != set(wb) or any(not torch.equal(w[k], wb[k]) for k in shared)
    if method == "tvmf_loss":
        assert "fc.weight" in w and "fc.bias" not in w  # the t-vMF head, not a Linear
    if method == "harmonic":
        assert any(k.endswith("basis") for k in w)  # the fixed DCT basis travels with the weights


def test_imagenet_init_loads_the_given_weights(tmp_path):
    """model.init imagenet: torchvision's file (written here) is loaded into
    every layer but the new small-image stem and the new head."""
    import torchvision
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    s = TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(init="imagenet"))
    model = trial_model(s, D.dataset_info("digits"), RunOptions(init_path=str(path)))
    assert torch.equal(model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(model.layer1[0].bn1.running_var, tv.layer1[0].bn1.running_var)
    assert model.fc.out_features == 10 and model.stem[0].weight.shape != tv.conv1.weight.shape


def parent_and_child(tmp_path, method, rounds=2):
    parent = spec("imp").__class__(**{**spec("imp").__dict__,
                                      "prune": PruneSpec(method="imp", rounds=rounds, rewind_epoch=1)})
    child = spec(method).__class__(**{**spec(method).__dict__,
                                      "prune": PruneSpec(method=method, rounds=rounds, rewind_epoch=1)})
    st = SweepStore(str(tmp_path), "s")
    return st, parent, child


def test_parent_dependent_trial_needs_its_finished_parent(tmp_path):
    st, parent, child = parent_and_child(tmp_path, "same_layer_sparse")
    with pytest.raises(ParentMissing, match="add imp"):
        L.run_lineage(child, st.lineage(child.trial_id))


def test_same_layer_sparse_has_the_parents_layer_densities_exactly(tmp_path):
    st, parent, child = parent_and_child(tmp_path, "same_layer_sparse")
    L.run_lineage(parent, st.lineage(parent.trial_id))
    rows = L.run_lineage(child, st.lineage(child.trial_id))
    pa, ch = st.lineage(parent.trial_id), st.lineage(child.trial_id)
    # Round 0 is the parent's dense network, copied.
    assert pa.load_round(0, [C.WEIGHTS]) == ch.load_round(0, [C.WEIGHTS])
    assert rows[0]["copied_from"] == parent.trial_id
    for k in (1, 2):
        pm = P.unpack_masks(st_load(pa.load_round(k, ["mask.safetensors"])["mask.safetensors"]))
        cm = P.unpack_masks(st_load(ch.load_round(k, ["mask.safetensors"])["mask.safetensors"]))
        assert set(pm) == set(cm)
        assert all(int(pm[n].sum()) == int(cm[n].sum()) for n in pm)  # per-layer counts equal
        assert any(not torch.equal(pm[n], cm[n]) for n in pm)  # but other positions
        assert rows[k]["layers"] == pa.read_manifest(k)["metrics"]["layers"]


def test_small_dense_matches_the_tickets_parameter_count(tmp_path):
    from workers.pruning.matching import param_count
    st, parent, child = parent_and_child(tmp_path, "small_dense")
    prow = L.run_lineage(parent, st.lineage(parent.trial_id))
    rows = L.run_lineage(child, st.lineage(child.trial_id))
    assert [r["round"] for r in rows] == [0, 1, 2]
    ch = st.lineage(child.trial_id)
    for k in (1, 2):
        r = rows[k]
        assert r["density"] == pytest.approx(prow[k]["density"])  # placed at the ticket's density
        assert abs(r["params"] - r["ticket_params"]) <= 0.01 * r["ticket_params"]
        assert r["width"] < 0.125 and r["epochs"] == 2  # narrower, and trained from scratch for all epochs
        w = C.read_weights(ch, k)[0]
        assert sum(v.numel() for n, v in w.items() if not n.endswith(("running_mean", "running_var",
                                                                      "num_batches_tracked"))) == r["params"]
        cm = P.unpack_masks(st_load(ch.load_round(k, ["mask.safetensors"])["mask.safetensors"]))
        assert all(bool(m.all()) for m in cm.values())  # dense
    assert param_count(trial_model(parent, D.dataset_info("digits"), RunOptions())) > rows[1]["params"]


@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "mobilenetv2"])
def test_every_architecture_runs_an_imp_lineage(tmp_path, arch):
    """Each registered architecture through the engine: prunes its convs only
    (never `fc`), keeps the density schedule, commits and reloads."""
    s = TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(arch=arch, width=0.0625),
                  train=TrainSpec(epochs=1, batch_size=40, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=0))
    lin = SweepStore(str(tmp_path), "a").lineage(s.trial_id)
    rows = L.run_lineage(s, lin)
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["density"] == pytest.approx(0.8, abs=1e-3)
    masks = P.unpack_masks(st_load(lin.load_round(1, ["mask.safetensors"])["mask.safetensors"]))
    assert masks and not any(n.startswith("fc.") for n in masks)
