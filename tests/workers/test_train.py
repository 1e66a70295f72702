"""The training and evaluation loop: the layout it feeds the network, BatchNorm recalibration and what it measures."""
import pytest
import torch

from workers import checkpoint as C
from workers import lineage as L
from workers.methods import trial_model
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def lineage(tmp_path, spec, name="s"):
    return SweepStore(str(tmp_path), name).lineage(spec.trial_id)


def round_tensors(lin, k):
    return C.read_weights(lin, k)


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


@pytest.mark.parametrize("aug", ["none", "basic"])
def test_the_network_sees_plain_nchw_batches_on_cpu_however_they_were_cut(aug):
    """A one-channel batch cut by an index-select has strides (HW, 1, W, 1),
    which torch reads as channels_last, and the convs follow it. On CPU the
    Trainer asks for NCHW, so every batch it feeds (training, augmented or
    not, and evaluation) has NCHW strides."""
    from workers import data as D
    from workers.train import Trainer, prepare
    spec = TrialSpec(DataSpec("digits", images_per_class=2, augmentation=aug), model=ModelSpec(width=0.0625))
    p = prepare(spec, RunOptions(device="cpu"), torch.device("cpu"))
    cut = p.x_train[torch.tensor([3, 1, 4])]
    assert cut.shape[1] == 1 and cut.stride(1) == 1  # the ambiguous strides the loaders produce
    t = Trainer(spec, p, trial_model(spec, p.info, RunOptions()), {})
    seen = []
    hook = t.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].stride()))
    t.train_epoch(0, 0)
    t.accuracy(p.x_test, p.y_test)
    hook.remove()
    H = W = p.info.image_size
    assert seen and all(s[1:] == (H * W, W, 1) for s in seen), seen
    assert D.normalize(cut, p.info).stride() == (H * W, H * W, W, 1)


# The lineage of the scale benchmark (digits, 1 image per class, ResNet-18 at
# width 1/16, seed 1) whose one SGD step crashed its trial process in the
# backward pass, or trained on gradients 30% off, while its batches ran
# channels_last. In a subprocess: a corrupted heap takes its process with it.
_GRADIENT_CHECK = """
import torch
from workers.methods import trial_model
from workers.spec import DataSpec, ModelSpec, RunOptions, TrialSpec
from workers.train import _inputs, prepare
torch.set_num_threads(1)
spec = TrialSpec(DataSpec("digits", images_per_class=1), model=ModelSpec(width=0.0625), seed=1)
p = prepare(spec, RunOptions(device="cpu"), torch.device("cpu"))
x = _inputs(p.x_train, p.info, p.device, channels_last=False)  # the Trainer's input path
grads = {}
for dtype in (torch.float32, torch.float64):
    torch.manual_seed(1)
    model = trial_model(spec, p.info, RunOptions()).to(dtype)
    for _ in range(3):  # the corruption did not always surface on the first pass
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x.to(dtype)), p.y_train).backward()
    grads[dtype] = {n: q.grad.double() for n, q in model.named_parameters()}
print(max(float((a - grads[torch.float64][n]).abs().max() / grads[torch.float64][n].abs().max().clamp_min(1e-12))
          for n, a in grads[torch.float32].items()))
"""


def test_a_tiny_resnet_step_on_one_channel_images_has_float64_gradients():
    from tests.helpers import python
    r = python(_GRADIENT_CHECK)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 1e-3, r.stdout
