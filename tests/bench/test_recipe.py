"""The engine's fast paths equal the reference recipe (bench/recipe.py) that they replace."""
import copy

import pytest
import torch
import torch.nn.functional as F

from bench import recipe as R
from workers import data as D
from workers import lineage as L
from workers import pruning as P
from workers import train as TR
from workers.models import build_model
from workers.spec import DataSpec, ModelSpec, PruneSpec, TrainSpec, TrialSpec
from workers.store import SweepStore


def small_model(seed=0, width=0.125):
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes=10, in_channels=1, image_size=8, width=width)


def test_global_magnitude_prune_equals_torch_prune_over_rounds():
    ours = small_model()
    ref = copy.deepcopy(ours)
    names = P.prunable_names(ours)
    masks = P.full_masks(ours, names)
    for k in range(4):
        masks = P.global_magnitude_prune(ours, masks, 0.2)
        ref_masks = R.global_l1_prune(ref, names, 0.2)
        assert list(ref_masks) == list(masks)
        assert all(torch.equal(masks[n], ref_masks[n]) for n in names), f"round {k + 1}"
        # Between rounds the surviving weights move (as training would move them).
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n, p in ours.named_parameters():
                if n in masks:
                    p.add_(torch.randn(p.shape, generator=g) * p.std()).mul_(masks[n])
                    dict(ref.named_parameters())[n.replace("weight", "weight_orig")].copy_(p)
        ref.eval()(torch.zeros(1, 1, 8, 8))  # prune's hook refreshes `weight` from weight_orig on a forward
    assert abs(P.density(masks) - 0.8 ** 4) < 1e-3


def test_fused_mask_step_equals_hook_masks():
    """MaskApplier (one _foreach_mul_ on weights and momentum after each step)
    vs torch.nn.utils.prune's forward hooks: the effective weights agree after
    every SGD step, and pruned weights are exactly zero in ours."""
    fast = small_model(seed=1)
    names = P.prunable_names(fast)
    masks = P.global_magnitude_prune(fast, P.full_masks(fast, names), 0.5)
    hooked = copy.deepcopy(fast)
    R.hook_masks(hooked, masks)
    with torch.no_grad():
        for n in names:
            dict(fast.named_parameters())[n].mul_(masks[n])
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for m in (fast, hooked)]
    applier = P.MaskApplier(fast, masks, opts[0])
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        for model, opt in zip((fast, hooked), opts):
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        applier.apply()
        hooked.eval()(x[:1])  # the hook recomputes `weight` = weight_orig * mask on a forward
        for n in names:
            w = dict(fast.named_parameters())[n]
            mod = dict(hooked.named_modules())[n.rsplit(".", 1)[0]]
            assert torch.equal(w[~masks[n]], torch.zeros_like(w[~masks[n]]))
            torch.testing.assert_close(w, mod.weight, rtol=1e-5, atol=1e-6, msg=f"step {step} {n}")


def test_batched_evaluation_equals_dataloader_evaluation():
    info, train, test = D.load_dataset("digits")
    model = small_model(seed=2, width=0.125)
    # Train a few epochs so predictions are not trivial (4: 0.83 on the test split).
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        perm = torch.randperm(len(train), generator=g)
        for b in range(0, len(train), 100):
            i = perm[b:b + 100]
            opt.zero_grad()
            F.cross_entropy(model(D.normalize(train.x[i], info)), train.y[i]).backward()
            opt.step()
    spec = TrialSpec(DataSpec("digits", fraction=0.1))
    prep = TR.Prepared(info=info, x_train=train.x, y_train=train.y, x_val=test.x, y_val=test.y,
                      x_test=test.x, y_test=test.y, augment=D.make_augment("none", info),
                      device=torch.device("cpu"))
    trainer = TR.Trainer(spec, prep, model, P.full_masks(model, P.prunable_names(model)))
    fast = trainer.accuracy(test.x, test.y)
    loader = torch.utils.data.DataLoader(R.PILDataset(test.x, test.y, R.transforms("none", info, False)),
                                         batch_size=100)
    ref = R.evaluate(model, loader, torch.device("cpu"))
    assert 0.5 < fast < 1.0 and fast == ref


def test_reference_lineage_follows_the_engines_schedule(tmp_path):
    spec = TrialSpec(DataSpec("digits", fraction=0.2, augmentation="basic"), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=2, batch_size=40, lr=0.05), prune=PruneSpec(rounds=2, rewind_epoch=1))
    info, train, test = D.load_dataset("digits")
    ref = R.run_reference(spec, train, test, info, str(tmp_path / "ref"), torch.device("cpu"))
    ours = L.run_lineage(spec, SweepStore(str(tmp_path), "s").lineage(spec.trial_id))
    assert [r["round"] for r in ref] == [m["round"] for m in ours] == [0, 1, 2]
    assert [round(r["density"], 6) for r in ref] == [round(m["density"], 6) for m in ours]
    assert all(0 <= r["test_acc"] <= 1 for r in ref)
    assert (tmp_path / "ref" / "round2.pt").exists()  # the reference checkpoints every epoch
    # The released cadence: a test-set evaluation and a checkpoint after every epoch trained.
    assert [(r["evaluations"], r["checkpoints"]) for r in ref] == [(2, 2), (1, 1), (1, 1)]
    assert {r["eval_images"] for r in ref} == {len(test.y)}


def test_reference_can_evaluate_and_checkpoint_when_the_engine_does(tmp_path):
    """eval_every=0, checkpoint_every=0 and the engine's splits: one evaluation
    (training subset + validation + test) and one checkpoint per round, at its
    end, as the engine's commit; the lineage itself is unchanged."""
    spec = TrialSpec(DataSpec("digits", fraction=0.2), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=3, batch_size=40, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=1))
    info, train, test = D.load_dataset("digits")
    released = R.run_reference(spec, train, test, info, str(tmp_path / "a"), torch.device("cpu"))
    equal = R.run_reference(spec, train, test, info, str(tmp_path / "b"), torch.device("cpu"),
                            cadence=R.Cadence(eval_every=0, checkpoint_every=0, eval_splits=("train", "val", "test")))
    ours = L.run_lineage(spec, SweepStore(str(tmp_path), "s").lineage(spec.trial_id))
    assert [(r["evaluations"], r["checkpoints"]) for r in released] == [(3, 3), (2, 2)]
    assert [(r["evaluations"], r["checkpoints"]) for r in equal] == [(1, 1), (1, 1)]
    tr, va = D.stratified_split(train.y, fraction=0.2, images_per_class=None, seed=spec.seed,
                                val_per_class=spec.eval.val_per_class)  # the engine's split (workers/train.py)
    assert len(va) > 0 and {r["eval_images"] for r in equal} == {len(tr) + len(va) + len(test.y)}
    assert [r["density"] for r in equal] == [m["density"] for m in ours]
    assert all({"train_acc", "val_acc", "test_acc"} <= set(r) for r in equal)
    assert [r["density"] for r in equal] == [r["density"] for r in released]


@pytest.mark.parametrize("name", ["contrast", "auto"])
def test_reference_recipe_rejects_what_it_does_not_implement(name):
    with pytest.raises(ValueError):
        R.transforms(name, D.dataset_info("cifar10"), True)
