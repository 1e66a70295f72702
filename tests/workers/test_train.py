"""The training and evaluation loop: BatchNorm recalibration and what it measures."""
import pytest
import torch
from safetensors.torch import load as st_load

from workers import lineage as L
from workers import pruning as P
from workers.methods import trial_model
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def lineage(tmp_path, spec, name="s"):
    return SweepStore(str(tmp_path), name).lineage(spec.trial_id)


def round_tensors(lin, k):
    files = lin.load_round(k, ["weights.safetensors", "mask.safetensors"])
    return st_load(files["weights.safetensors"]), P.unpack_masks(st_load(files["mask.safetensors"]))


def _test_acc(lin, spec, k, batch_stats: bool):
    """Round k's test accuracy in eval mode, or with the test batch's own statistics."""
    from workers import data as D
    info, _, test = D.load_dataset("digits")
    model = trial_model(spec, info, RunOptions(), with_init=False)
    model.load_state_dict(round_tensors(lin, k)[0])
    model.train(batch_stats)
    with torch.no_grad():
        pred = model(D.normalize(test.x, info)).argmax(1)  # the whole test split as one batch
    return float((pred == test.y).float().mean())


def test_bn_recalibration_closes_the_eval_mode_gap_of_a_short_round(tmp_path):
    """Two epochs leave BatchNorm's running averages far behind the weights: the dense
    round looks much worse in eval mode than with batch statistics. Recalibrating on the
    training subset before evaluating closes that gap, and changes nothing else."""
    import dataclasses

    from workers.spec import EvalSpec
    base = TrialSpec(DataSpec("digits", fraction=0.5), model=ModelSpec(width=0.25),
                     train=TrainSpec(epochs=2, batch_size=50, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=1))
    recal = dataclasses.replace(base, eval=EvalSpec(bn_recalibrate=True))
    assert recal.trial_id != base.trial_id  # what is measured is part of the trial
    plain_lin, recal_lin = lineage(tmp_path, base, "a"), lineage(tmp_path, recal, "b")
    plain, fixed = L.run_lineage(base, plain_lin), L.run_lineage(recal, recal_lin)
    eval_mode, batch = _test_acc(plain_lin, base, 0, False), _test_acc(plain_lin, base, 0, True)
    assert plain[0]["test_acc"] == pytest.approx(eval_mode)
    assert batch - eval_mode > 0.15  # the artefact
    assert abs(fixed[0]["test_acc"] - batch) < 0.05  # closed
    # committed = measured
    assert _test_acc(recal_lin, recal, 0, False) == pytest.approx(fixed[0]["test_acc"], abs=1e-6)
    # Training is untouched: every weight (not the BN statistics) is bit-identical.
    for k in (0, 1):
        a, b = round_tensors(plain_lin, k)[0], round_tensors(recal_lin, k)[0]
        for name in a:
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(a[name], b[name]), name
