"""One round of one lineage (workers/round.py), driven directly: what a round
commits, the rewind state round 0 keeps, where a round starts and ends under
each `imp.retrain`, a round resumed from its mid-round checkpoint, a round
taken over from another lineage. The whole-lineage behaviour (kills between
rounds, corrupt rounds, fused groups) is in test_lineage.py and test_group.py."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from workers import checkpoint as C
from workers import predictions as PRED
from workers import pruning as P
from workers.data import normalize
from workers.context import LineageContext
from workers.methods import RoundStart
from workers.models import model_state
from workers.round import RoundRun, copy_round, round_end
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

# What differs between two runs of the same round by when and where they ran.
TIMINGS = {"wall_s", "images_per_s", "started_at", "finished_at", "checkpoint_uri"}
ROUND0 = {C.WEIGHTS, C.MASK, C.REWIND, "predictions.safetensors"}
LATER = {C.WEIGHTS, C.MASK, "predictions.safetensors", "metrics.json"}


@pytest.fixture(autouse=True)
def one_thread():
    """Bits that do not depend on the core count, and no oversubscription of a
    shared 2-core machine (two threads there make an epoch 100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(epochs=3, rounds=1, rewind=1, retrain="rest", aug="none", method="imp", seed=0):
    return TrialSpec(DataSpec("digits", fraction=0.1, augmentation=aug), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=epochs, batch_size=40, lr=0.05),
                     prune=PruneSpec(method=method, rounds=rounds, rewind_epoch=rewind, retrain=retrain), seed=seed)


def open_ctx(tmp_path, spec, sweep="s", **opts):
    lin = SweepStore(str(tmp_path), sweep).lineage(spec.trial_id)
    return LineageContext.open(spec, lin, RunOptions(device="cpu", **opts), {"node": "n1", "gpu_ids": [0, 1]})


def train(run, until=None, each=None):
    """The epoch loop of workers/group.py for one lineage, stoppable at `until`."""
    for epoch in range(run.epoch, run.end if until is None else until):
        run.after_epoch(epoch, run.trainer.train_epoch(run.k, epoch))
        if each is not None:
            each(run)


def do_round(ctx, k, extra=None):
    run = RoundRun(ctx, k, ctx.method.start_round(k, ctx))
    train(run)
    metrics = run.commit(extra)
    ctx.done += 1
    return metrics


def tensors(lin, k, name):
    return st_load(lin.load_round(k, [name])[name])


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("retrain,first,end", [
    ("rest", 0, 5), ("rest", 2, 5),               # every round ends where round 0 did
    ("paper_code", 0, 5), ("paper_code", 2, 7),   # `epochs` epochs after wherever it starts
])
def test_round_end_under_each_retrain_setting(retrain, first, end):
    assert round_end(tiny(epochs=5, rewind=2, retrain=retrain), first) == end


def test_round0_commits_its_files_metrics_and_the_rewind_state(tmp_path):
    spec = tiny(epochs=3, rewind=1)
    ctx = open_ctx(tmp_path, spec, checkpoint_every=1)
    lin = ctx.store
    run = RoundRun(ctx, 0, ctx.method.start_round(0, ctx))
    assert (run.epoch, run.end, run.rewind) == (0, 3, None)
    progress, snap = [], {}
    ctx.on_epoch = progress.append

    def at_rewind(r):
        if r.epoch == spec.prune.rewind_epoch:
            snap.update(model_state(r.start.model))
    train(run, each=at_rewind)
    # The last epoch leaves no checkpoint: the commit right after it supersedes one.
    assert lin.load_partial(0)[0] == 2
    heartbeat = lin.read_marker("HEARTBEAT.json")
    assert (heartbeat["round"], heartbeat["epochs"], heartbeat["node"]) == (0, 3, "n1")
    assert progress[0] == {"trial_id": spec.trial_id, "round": 0, "epoch": 1, "epochs": 3}

    metrics = run.commit({"probe": 7})
    man = lin.read_manifest(0)
    assert set(man["files"]) == ROUND0 | {"metrics.json"}
    assert man["metrics"] == metrics
    assert json.loads(lin.load_round(0, ["metrics.json"])["metrics.json"]) == metrics
    assert lin.load_partial(0) is None
    assert metrics["trial_id"] == spec.trial_id and metrics["round"] == 0 and metrics["probe"] == 7
    assert metrics["density"] == 1.0 and metrics["epochs"] == 3
    assert (metrics["node"], metrics["gpu_ids"], metrics["device"]) == ("n1", "0,1", "cpu")
    assert metrics["checkpoint_uri"] == lin.round_uri(0)
    assert metrics["val_per_class"] == ctx.prep.val_per_class
    assert all(0 <= metrics[f"{s}_acc"] <= 1 for s in ("train", "val", "test"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert [h["lr"] for h in metrics["history"]] == [run.trainer.lr_at(e) for e in range(3)]
    assert sum(l["numel"] for l in metrics["layers"]) == sum(m.numel() for m in run.start.masks.values())
    assert all(l["density"] == 1.0 for l in metrics["layers"])
    # The committed weights are the trained ones; the rewind state is the epoch-1
    # state (weights, BN statistics, head), not the end of the round.
    weights, rewind = C.read_weights(lin, 0)[0], tensors(lin, 0, "rewind.safetensors")
    assert same(weights, model_state(run.start.model))
    assert same(rewind, snap)
    assert not same(rewind, weights)
    assert any(n.endswith("running_mean") for n in rewind) and "fc.weight" in rewind
    # Every held-out and test image's predicted class: the committed network's
    # own (one batch here, not the evaluation's), with the split's labels, and
    # the accuracies and test_correct are those predictions'.
    pred = lin.read_predictions(0)
    assert set(pred) == {"val_pred", "val_label", "test_pred", "test_label"}
    assert {a.dtype for a in pred.values()} == {np.dtype(np.uint8)}  # 10 classes
    p = ctx.prep
    run.start.model.eval()
    with torch.no_grad():
        for split, x, y in (("val", p.x_val, p.y_val), ("test", p.x_test, p.y_test)):
            assert np.array_equal(pred[f"{split}_label"], y.numpy())
            assert np.array_equal(pred[f"{split}_pred"], run.start.model(normalize(x, p.info)).argmax(1).numpy())
            assert (pred[f"{split}_pred"] == pred[f"{split}_label"]).mean() == metrics[f"{split}_acc"]
    correct = PRED.unpack_correct(metrics["test_correct"], metrics["test_images"])
    assert metrics["test_images"] == len(p.y_test) == 599
    assert np.array_equal(correct, pred["test_pred"] == pred["test_label"]) and 0 < correct.sum() < 599


@pytest.mark.parametrize("rewind", [0, 2, 4])
def test_round0_rewind_state_at_the_start_the_end_or_past_it(tmp_path, rewind):
    """rewind_epoch 0 keeps the initialisation; rewind_epoch >= epochs (specs the
    config now refuses, but older lineages hold) keeps the end state."""
    spec = tiny(epochs=2, rewind=rewind)
    ctx = open_ctx(tmp_path, spec)
    init = model_state(ctx.model)
    do_round(ctx, 0)
    kept = tensors(ctx.store, 0, "rewind.safetensors")
    weights = C.read_weights(ctx.store, 0)[0]
    assert same(kept, init if rewind == 0 else weights)
    assert not same(kept, weights if rewind == 0 else init)


@pytest.mark.parametrize("retrain", ["rest", "paper_code"])
def test_a_later_round_starts_masked_at_the_rewind_epoch_and_commits_no_rewind(tmp_path, retrain):
    spec = tiny(epochs=3, rewind=1, retrain=retrain)
    ctx = open_ctx(tmp_path, spec)
    do_round(ctx, 0)
    run = RoundRun(ctx, 1, ctx.method.start_round(1, ctx))
    assert (run.epoch, run.end) == (1, 3 if retrain == "rest" else 4)
    state = run.start.model.state_dict()
    for n, m in run.start.masks.items():
        assert (state[n][~m] == 0).all() and (state[n][m] != 0).all()
    train(run)
    metrics = run.commit()
    assert set(ctx.store.read_manifest(1)["files"]) == LATER
    assert metrics["density"] == pytest.approx(0.8, abs=1e-4)
    assert metrics["epochs"] == (2 if retrain == "rest" else 3)
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == ([2, 3] if retrain == "rest" else [2, 3, 4])
    # paper_code's last epoch sits at the cosine's period: its learning rate is 0.
    assert [h["lr"] for h in hist] == pytest.approx(
        [0.5 * 0.05 * (1 + math.cos(math.pi * e / 3)) for e in range(1, run.end)])


@pytest.mark.parametrize("stop", [1, 2], ids=["before the rewind epoch", "after it"])
def test_a_round_resumed_from_its_checkpoint_equals_the_uninterrupted_one(tmp_path, stop):
    """Round 0 stopped after `stop` epochs and taken up by a new attempt (fresh
    context, fresh network): the same committed bytes, the rewind state included
    whether the checkpoint held it yet or not."""
    spec = tiny(epochs=3, rewind=2, aug="basic")
    ref = open_ctx(tmp_path, spec, "ref")
    ref_metrics = do_round(ref, 0)

    first = open_ctx(tmp_path, spec, "x", checkpoint_every=1)
    run = RoundRun(first, 0, first.method.start_round(0, first))
    train(run, until=stop)
    epoch, files, meta = first.store.load_partial(0)
    assert epoch == stop and ("rewind.safetensors" in files) == (stop >= 2)
    del run, first  # the attempt dies here

    again = open_ctx(tmp_path, spec, "x", checkpoint_every=1)
    run = RoundRun(again, 0, again.method.start_round(0, again))
    assert run.epoch == stop and len(run.history) == stop and run.started_at == meta["started_at"]
    train(run)
    metrics = run.commit()
    assert metrics["started_at"] == meta["started_at"]
    assert {k: v for k, v in metrics.items() if k not in TIMINGS} == \
        {k: v for k, v in ref_metrics.items() if k not in TIMINGS}
    assert again.store.load_round(0, ROUND0) == ref.store.load_round(0, ROUND0)


def test_copy_round_takes_over_the_parents_round_as_its_own(tmp_path):
    """A parent-built control's round 0: the parent's verified files, byte for
    byte, under the control's own trial id and address; nothing trained."""
    parent = tiny(epochs=2, rewind=1, rounds=1)
    pctx = open_ctx(tmp_path, parent)
    for k in range(2):
        do_round(pctx, k)
    child = dataclasses.replace(parent, prune=dataclasses.replace(parent.prune, method="same_layer_sparse"))
    cctx = open_ctx(tmp_path, child)
    start = cctx.method.start_round(0, cctx)
    assert start.copy_from.trial_id == parent.trial_id
    metrics = copy_round(cctx, 0, start)
    plin, clin = pctx.store, cctx.store
    assert clin.load_round(0, ROUND0) == plin.load_round(0, ROUND0)
    assert clin.read_manifest(0)["metrics"] == metrics
    assert json.loads(clin.load_round(0, ["metrics.json"])["metrics.json"]) == metrics
    assert clin.read_manifest(0)["spec"] == child.to_dict()
    own = {"trial_id": child.trial_id, "checkpoint_uri": clin.round_uri(0), "copied_from": parent.trial_id}
    assert {k: metrics[k] for k in own} == own
    theirs = plin.read_manifest(0)["metrics"]
    assert {k: v for k, v in metrics.items() if k not in own} == {k: v for k, v in theirs.items() if k not in own}
    # A later round is copied without a rewind state (only round 0 holds one).
    copy_round(cctx, 1, RoundStart(copy_from=plin))
    assert set(clin.read_manifest(1)["files"]) == LATER
    assert clin.load_round(1, [PRED.FILE]) == plin.load_round(1, [PRED.FILE])
    assert P.density(P.unpack_masks(tensors(clin, 1, "mask.safetensors"))) == pytest.approx(0.8, abs=1e-4)
