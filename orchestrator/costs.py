"""What `plan` says a sweep will cost: images processed, and device-hours on a named device.

Images: per lineage, the training subset (from the dataset registry's real
split sizes, `DatasetInfo.train_size`) times the epochs of all its rounds
(round 0 trains every epoch, round k from rewind_epoch on), plus one forward
pass over the held-out and test images after every round.

Speed: a training image costs about three forward passes (forward, and a
backward of twice the work), so
    images/s = sustained FLOP/s of the device / (3 x forward FLOPs of one image),
with the forward FLOPs counted on the trial's own network (arch, width,
variant, image size, channels): one image's forward pass on the CPU, per
distinct network of the sweep. The sustained FLOP/s come from a throughput table:

- `lth-sweep bench --calibrate` times real training steps of every
  architecture at every image size of the dataset registry on the machine at
  hand and writes each pair's sustained FLOP/s, with the device's name, to
  $LTH_THROUGHPUT (default ~/.cache/lth-sweep/throughput.json); `plan` then
  uses it (a pair it has not measured gets the median of those it has);
- without one, an assumed device (ASSUMED below), named as such in the output.

It is an estimate: data loading, augmentation on the host, and GPUs shared by
several small trials are not modelled; a method that trains a narrower network than its
spec's width (a capacity control) is costed at the spec's width.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
from typing import Optional

# Without a calibration: one data-centre GPU (A100 class) training in bf16
# at a sustained 40 TFLOP/s, about 13% of its peak: what ResNet training
# with a torchvision-style input pipeline typically reaches.
ASSUMED = {"device": "an assumed A100-class GPU (40 TFLOP/s sustained; not measured)", "flops_per_s": 40e12}
TRAIN_FLOPS_PER_FORWARD = 3.0


def table_path() -> str:
    return os.environ.get("LTH_THROUGHPUT") or os.path.join(os.path.expanduser("~"), ".cache", "lth-sweep",
                                                            "throughput.json")


def load_table(path: Optional[str] = None) -> Optional[dict]:
    """The calibrated table, or None (missing or unreadable: plan falls back to ASSUMED)."""
    try:
        with open(path or table_path()) as f:
            t = json.load(f)
        return t if isinstance(t, dict) and isinstance(t.get("flops_per_s"), dict) and t["flops_per_s"] else None
    except (OSError, ValueError):
        return None


def key(arch: str, image_size: int) -> str:
    return f"{arch}@{image_size}"


@functools.lru_cache(maxsize=None)
def forward_flops(arch: str, image_size: int, channels: int, num_classes: int, width: float = 1.0,
                  variant: str = "standard") -> float:
    """FLOPs of one image's forward pass: 2 x the multiply-adds of its
    convolutions and matrix products (what torch.utils.flop_counter counts;
    tests/orchestrator/test_costs.py checks every architecture and variant
    against it). Counted at the torch-function level on a CPU copy built
    without its random init, whose convolutions and linears are given an
    output of the right shape instead of being computed: shapes are all a
    count needs, and a full-width ResNet's init and forward were most of a
    large `plan`'s work. (A dispatch-level counter, or the meta device,
    first imports torch._dynamo and sympy: about 2 s of every `plan`.)"""
    import torch

    from workers.models import build_model
    with _ShapesOnly(count=False):
        model = build_model(arch, num_classes=num_classes, in_channels=channels, image_size=image_size,
                            width=width, variant=variant)
    model.eval()  # one image: BatchNorm in training mode would refuse a 1x1 batch
    counter = _ShapesOnly(count=True)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, image_size, image_size))
    return float(counter.total)


def _conv_shape(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Output shape of F.convNd, as its documentation defines it."""
    n = w.dim() - 2

    def per_dim(v):
        return (v,) * n if isinstance(v, int) else tuple(v)
    size = x.shape[-n:]
    if padding == "same":
        spatial = tuple(size)
    else:
        pad = (0,) * n if padding == "valid" else per_dim(padding)
        k, s, d = w.shape[2:], per_dim(stride), per_dim(dilation)
        spatial = tuple((size[i] + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(n))
    return (*x.shape[:-n - 1], w.shape[0], *spatial)


def _ShapesOnly(count: bool):
    """A torch-function mode that skips torch.nn.init (building: the weights'
    values never matter to a count) and, counting, gives each convolution
    and linear a zero output of its shape and adds its FLOPs to `total`."""
    import math

    import torch
    import torch.nn.functional as F
    import torch.nn.init as init
    from torch.overrides import TorchFunctionMode

    inits = {getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_")}
    inits |= {torch.Tensor.normal_, torch.Tensor.uniform_}  # what an init scheme may call directly

    def conv(out, x, w, *_, **__):
        return 2 * out.numel() * math.prod(w.shape[1:])  # each output: C_in/groups x kh x kw multiply-adds

    def linear(out, x, w, *_, **__):
        return 2 * out.numel() * w.shape[-1]

    def matmul(out, a, b, *_, **__):
        return 2 * out.numel() * a.shape[-1]

    def addmm(out, bias, a, b, *_, **__):
        return 2 * out.numel() * a.shape[-1]

    rules = {F.conv1d: conv, F.conv2d: conv, F.conv3d: conv, torch.conv2d: conv, F.linear: linear,
             torch.matmul: matmul, torch.mm: matmul, torch.bmm: matmul, torch.Tensor.__matmul__: matmul,
             torch.addmm: addmm}
    shapes = {F.conv1d: _conv_shape, F.conv2d: _conv_shape, F.conv3d: _conv_shape, torch.conv2d: _conv_shape,
              F.linear: lambda x, w, bias=None: (*x.shape[:-1], w.shape[0])}

    class ShapesOnly(TorchFunctionMode):
        total = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in inits:
                return args[0] if args else kwargs["tensor"]
            if count and func in shapes:
                out = torch.zeros(shapes[func](*args, **kwargs), dtype=args[0].dtype)
            else:
                out = func(*args, **kwargs)
            rule = rules.get(func) if count else None
            if rule is not None:
                self.total += rule(out, *args, **kwargs)
            return out
    return ShapesOnly()


def _images(trial) -> tuple[int, int]:
    """(training images, evaluated images) of one whole lineage."""
    from workers import data
    spec = trial.spec
    d, t, p = spec.data, spec.train, spec.prune
    info = data.dataset_info(d.dataset)
    n = data.train_size(d.dataset, **{k: getattr(d, k) for k in info.params})
    per_class = n / info.num_classes
    size = round(d.fraction * n) if d.fraction is not None else min(n, d.images_per_class * info.num_classes)
    held_out = min(spec.eval.val_per_class, max(0.0, per_class - size / info.num_classes)) * info.num_classes
    epochs = t.epochs + p.rounds * (t.epochs if p.retrain == "paper_code" else t.epochs - p.rewind_epoch)
    return int(size * epochs), int((held_out + info.test_size) * spec.num_rounds)


def _flops(trial) -> float:
    from workers import data
    from workers.methods import get_method
    spec = trial.spec
    info = data.dataset_info(spec.data.dataset)
    return forward_flops(spec.model.arch, info.image_size, info.channels, info.num_classes, spec.model.width,
                         get_method(spec.prune.method).variant)


def estimate(trials: list, table: Optional[dict] = None) -> dict:
    """{train_images, eval_images, device_hours, device, source, images_per_s: {arch@size: ...}}."""
    from workers import data
    table = load_table() if table is None else table
    measured = (table or {}).get("flops_per_s", {})
    fallback = statistics.median(measured.values()) if measured else ASSUMED["flops_per_s"]
    train = evals = 0
    seconds = 0.0
    speeds: dict[str, float] = {}
    done: dict = {}
    for trial in trials:
        spec = trial.spec
        # A grid's trials share their sub-specs (orchestrator/grid.py), so a
        # 10,000-trial plan costs a few dozen distinct lineages; the trials
        # hold them alive, so their ids are a safe key for this loop.
        shape = (id(spec.data), id(spec.model), id(spec.train), id(spec.prune), id(spec.eval))
        if shape not in done:
            tr, ev = _images(trial)
            info = data.dataset_info(spec.data.dataset)
            k = key(spec.model.arch, info.image_size)
            speed = measured.get(k, fallback) / (TRAIN_FLOPS_PER_FORWARD * _flops(trial))  # training images/s
            speeds.setdefault(k, round(speed, 1))
            done[shape] = (tr, ev, tr / speed + ev / (speed * TRAIN_FLOPS_PER_FORWARD))
        tr, ev, s = done[shape]
        seconds += s
        train, evals = train + tr, evals + ev
    if table:
        device = f"{table.get('device', 'this machine')} (measured {table.get('measured', '?')} by bench --calibrate)"
        source = "calibrated"
    else:
        device, source = ASSUMED["device"], "assumed"
    return {"train_images": train, "eval_images": evals, "device_hours": round(seconds / 3600, 4),
            "device_s": seconds, "device": device, "source": source, "images_per_s": speeds}


def write_table(table: dict, path: Optional[str] = None) -> str:
    """Write a calibrated table atomically; returns its path."""
    path = path or table_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path
