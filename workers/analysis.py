"""Analyses of committed models, as pure functions (no storage, no Ray).

Two analyses (issue 7):

* Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network
  Representations Revisited") between the same-named layers of two models on
  the same inputs: `linear_cka`, `layer_features`, `cka_between`.
* Linear-probe transfer: freeze a backbone, fit a fresh linear head on its
  penultimate features (the input of `model.fc`) for a target dataset and
  report test accuracy: `penultimate_features`, `fit_linear_head`,
  `linear_probe`.

Conventions shared by every function here:

* Images come as uint8 [N, C, H, W] (a `workers.data.Split.x`) and are
  normalised with `workers.data.normalize(x, info)` batch by batch on the
  device, as the lineage runner does for evaluation. `info` is the
  DatasetInfo of the dataset the images come from (for a probe: the target).
* The model is run in eval mode (BatchNorm uses its running statistics, so a
  sample's features do not depend on its batch) under `torch.no_grad()`, in
  float32. `device=None` means "the device the model's parameters are on";
  another device moves the model there for the call. The model's device and
  the train/eval flag of each of its modules are restored afterwards and its
  weights are never written, so the caller's model comes back as it was (but
  the functions are not safe to call concurrently on one model object).
* Features come back as float32 CPU tensors.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from workers.data import DatasetInfo, Split, normalize

DEFAULT_LAYERS = ["stem", "layer1", "layer2", "layer3", "layer4"]
FEATURE_BATCH = 500


@dataclass(frozen=True)
class HeadRecipe:
    """How a linear head is fitted on frozen features (`fit_linear_head`)."""
    epochs: int = 30
    lr: float = 0.1
    batch: Optional[int] = 256     # None (or >= n): full batch
    weight_decay: float = 0.0
    seed: int = 0                  # orders the minibatches; nothing else is random
    standardize: bool = True       # features to zero mean / unit std on the training set

DeviceLike = Union[str, torch.device, None]


# --- linear CKA ---------------------------------------------------------------

def linear_cka(X: torch.Tensor, Y: torch.Tensor, method: str = "auto") -> float:
    """Linear CKA between two representations of the same n examples.

    X is [n, p], Y is [n, q] (rows = examples, same order). Columns are
    centred, everything is computed in float64, and

        CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)

    which lies in [0, 1] and is invariant to orthogonal transforms and
    isotropic scaling of either side (and, through the centring, to adding a
    constant to every row).

    `method` picks how the three Frobenius norms are computed; both give the
    same number up to rounding:
      "feature": the cross-covariances above (p x p, q x q, p x q matrices);
      "gram":    HSIC through n x n Gram matrices K = Xc Xc^T, L = Yc Yc^T:
                 CKA = <K, L>_F / (||K||_F ||L||_F)
                 (<K, L>_F = ||Yc^T Xc||_F^2 and ||K||_F = ||Xc^T Xc||_F);
      "auto":    "gram" when it is the cheaper one, i.e. when
                 n (p + q) < p^2 + q^2 + p q  (roughly: n < max(p, q), the
                 case of few examples and wide un-pooled features), else
                 "feature".
    Returns NaN when either side has no variance (a constant representation,
    e.g. a dead layer), where CKA is undefined.
    """
    X = torch.as_tensor(X).detach().to("cpu", torch.float64)
    Y = torch.as_tensor(Y).detach().to("cpu", torch.float64)
    if X.dim() != 2 or Y.dim() != 2:
        raise ValueError(f"linear_cka wants 2-D [n, features] inputs, got {tuple(X.shape)} "
                         f"and {tuple(Y.shape)}")
    n, p = X.shape
    q = Y.shape[1]
    if Y.shape[0] != n:
        raise ValueError(f"linear_cka: X and Y must have the same number of rows "
                         f"(examples), got {n} and {Y.shape[0]}")
    if n < 2:
        raise ValueError(f"linear_cka needs at least 2 examples, got {n}")
    if method == "auto":
        method = "gram" if n * (p + q) < p * p + q * q + p * q else "feature"
    Xc = X - X.mean(0, keepdim=True)
    Yc = Y - Y.mean(0, keepdim=True)
    if method == "feature":
        hsic = torch.linalg.matrix_norm(Yc.T @ Xc) ** 2
        nx = torch.linalg.matrix_norm(Xc.T @ Xc)
        ny = torch.linalg.matrix_norm(Yc.T @ Yc)
    elif method == "gram":
        K = Xc @ Xc.T
        L = Yc @ Yc.T
        hsic = (K * L).sum()
        nx = torch.linalg.matrix_norm(K)
        ny = torch.linalg.matrix_norm(L)
    else:
        raise ValueError(f"linear_cka: unknown method {method!r}; use 'auto', 'feature' or 'gram'")
    den = float(nx) * float(ny)
    if den == 0.0:
        return float("nan")
    return float(hsic) / den


# --- running a model with hooks -----------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def _frozen(model: nn.Module, device: DeviceLike) -> Iterator[torch.device]:
    """Eval mode (+ optional move) for the duration; restores per-module
    train flags and the original device afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    home = _model_device(model)
    dev = torch.device(device) if device is not None else home
    try:
        if dev != home:
            model.to(dev)
        model.eval()
        yield dev
    finally:
        for m, was in flags:
            m.training = was
        if dev != home:
            model.to(home)


def _check_images(x_uint8: torch.Tensor, info: DatasetInfo) -> None:
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {x_uint8.dtype} "
                         f"{tuple(x_uint8.shape)}")
    if x_uint8.shape[1] != len(info.mean) or x_uint8.shape[1] != info.channels:
        raise ValueError(f"images have {x_uint8.shape[1]} channels but dataset {info.name!r} "
                         f"has {info.channels} (mean/std for {len(info.mean)})")
    if x_uint8.shape[0] == 0:
        raise ValueError("no images to run the model on")


def _reduce(t: torch.Tensor, pool: bool) -> torch.Tensor:
    """Per-sample features [n, d]: a 4-D map is global-average-pooled to
    [n, C] when `pool`, anything else (and any map when not `pool`) is
    flattened. Always a fresh float32 CPU copy, so a later in-place op of the
    model cannot change what was captured."""
    if pool and t.dim() == 4:
        t = t.mean(dim=(2, 3))
    return t.reshape(t.shape[0], -1).to("cpu", torch.float32, copy=True)


def _run_hooked(model: nn.Module, x_uint8: torch.Tensor, info: DatasetInfo,
                taps: dict[str, tuple[nn.Module, str]], *, pool: bool, batch: int,
                device: DeviceLike) -> dict[str, torch.Tensor]:
    """Forward the images batch by batch and collect, for each tap
    name -> (module, "output" | "input"), that module's output (forward hook)
    or first positional input (forward pre-hook), reduced by `_reduce`."""
    _check_images(x_uint8, info)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    got: dict[str, list[torch.Tensor]] = {name: [] for name in taps}
    calls: dict[str, int] = {name: 0 for name in taps}

    def make_hook(name: str, kind: str):
        def grab(t):
            calls[name] += 1
            got[name].append(_reduce(t, pool))
        if kind == "input":
            return lambda mod, args: grab(args[0])
        return lambda mod, args, out: grab(out)

    handles = []
    try:
        for name, (mod, kind) in taps.items():
            hook = make_hook(name, kind)
            handles.append(mod.register_forward_pre_hook(hook) if kind == "input"
                           else mod.register_forward_hook(hook))
        with _frozen(model, device) as dev, torch.no_grad():
            for b in range(0, x_uint8.shape[0], batch):
                for name in calls:
                    calls[name] = 0
                xb = normalize(x_uint8[b:b + batch].to(dev), info)
                try:
                    model(xb)
                except RuntimeError as e:
                    raise ValueError(f"model failed on images of shape {tuple(xb.shape[1:])} "
                                     f"from dataset {info.name!r}: {e}") from e
                for name, c in calls.items():
                    if c != 1:
                        raise ValueError(f"module {name!r} ran {c} times in one forward pass; "
                                         f"expected exactly once")
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in got.items()}


def _children(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def layer_features(model: nn.Module, x_uint8: torch.Tensor, info: DatasetInfo,
                   layers: Sequence[str], batch: int = FEATURE_BATCH,
                   device: DeviceLike = None, pool: bool = True) -> dict[str, torch.Tensor]:
    """{layer name: float32 CPU features [n, d]} of the named modules' outputs.

    Names are `model.named_modules()` names: top-level children such as
    "stem", "layer1".."layer4", "pool" for the ResNets, or dotted sub-modules
    ("layer3.1"). An unknown name raises ValueError listing the model's
    top-level children.

    pool=True (default) global-average-pools a conv map [n, C, H, W] to
    [n, C] before anything is kept, so memory is n x C per layer whatever
    the resolution: CKA is then computed on GAP features (channel-wise
    summaries; it ignores spatial arrangement and is usually a little higher
    than CKA on full maps). pool=False keeps the flattened maps, n x C*H*W
    each (for the stem of a CIFAR ResNet-18: 65536 floats per image).
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layer_features: no layers asked for")
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules or name == ""]
    if missing:
        raise ValueError(f"model {type(model).__name__} has no module(s) {missing}; "
                         f"its top-level children are {_children(model)}")
    taps = {name: (modules[name], "output") for name in dict.fromkeys(layers)}
    return _run_hooked(model, x_uint8, info, taps, pool=pool, batch=batch, device=device)


def cka_between(model_a: nn.Module, model_b: nn.Module, x_uint8: torch.Tensor,
                info: DatasetInfo, layers: Sequence[str] = DEFAULT_LAYERS, *,
                batch: int = FEATURE_BATCH, device: DeviceLike = None,
                pool: bool = True) -> list[dict]:
    """[{"layer": name, "cka": value}, ...]: linear CKA between the
    same-named layer of two models on the same images, in `layers` order.

    Layers that either model lacks are skipped (e.g. "stem" against a
    VGG); when none of `layers` is in both models, ValueError lists each
    model's top-level children. Features as in `layer_features` (GAP by
    default); CKA by `linear_cka` (method "auto").
    """
    mods_a, mods_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    shared = [name for name in dict.fromkeys(layers) if name and name in mods_a and name in mods_b]
    if not shared:
        raise ValueError(f"none of the layers {list(layers)} is in both models; top-level "
                         f"children: {type(model_a).__name__} {_children(model_a)}, "
                         f"{type(model_b).__name__} {_children(model_b)}")
    fa = layer_features(model_a, x_uint8, info, shared, batch=batch, device=device, pool=pool)
    fb = layer_features(model_b, x_uint8, info, shared, batch=batch, device=device, pool=pool)
    return [{"layer": name, "cka": linear_cka(fa[name], fb[name])} for name in shared]


# --- linear probe -------------------------------------------------------------

def penultimate_features(model: nn.Module, x_uint8: torch.Tensor, info: DatasetInfo,
                         batch: int = FEATURE_BATCH, device: DeviceLike = None) -> torch.Tensor:
    """float32 CPU [n, d]: what the model feeds its classifier `model.fc`
    (captured by a forward pre-hook, so the backbone is exactly the model's
    own forward up to the head, whatever the architecture or head: a Linear,
    or the t-vMF head of tvmf_loss)."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ValueError(f"model {type(model).__name__} has no `fc` head module "
                         f"(top-level children: {_children(model)})")
    taps = {"fc_input": (fc, "input")}
    return _run_hooked(model, x_uint8, info, taps, pool=False, batch=batch,
                       device=device)["fc_input"]


def fit_linear_head(f_train: torch.Tensor, y_train: torch.Tensor, num_classes: int,
                    recipe: HeadRecipe = HeadRecipe(),
                    device: DeviceLike = None) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Train a fresh nn.Linear(d, num_classes) on cached features; returns
    (head, mean, std) where the head acts on (f - mean) / std.

    Cross-entropy, SGD (momentum 0.9, `weight_decay`), learning rate on a
    cosine schedule from `lr` to 0 over all steps (per step). The head starts
    at zero (the problem is convex, so nothing is lost and no RNG is drawn);
    the only randomness is the minibatch order, drawn from a private
    torch.Generator seeded with `seed` -- the global RNG is not touched.
    `batch=None` (or >= n) is full-batch. standardize=True scales every
    feature to zero mean / unit std on the training set (constant features
    are left at 0), so one `lr` suits backbones whose feature scales differ.
    """
    epochs, lr, batch, seed = recipe.epochs, recipe.lr, recipe.batch, recipe.seed
    f_train = f_train.detach().to("cpu", torch.float32)
    y_train = y_train.detach().to("cpu", torch.long)
    n, d = f_train.shape
    if n == 0 or y_train.shape != (n,):
        raise ValueError(f"fit_linear_head: {n} feature rows but labels of shape "
                         f"{tuple(y_train.shape)}")
    if int(y_train.min()) < 0 or int(y_train.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{int(y_train.min())}, {int(y_train.max())}]")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if recipe.standardize:
        mean = f_train.mean(0)
        std = f_train.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(d), torch.ones(d)
    z = ((f_train - mean) / std).to(dev)
    y = y_train.to(dev)
    head = nn.Linear(d, num_classes).to(dev)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=recipe.weight_decay)
    bs = n if batch is None or batch >= n else int(batch)
    if bs < 1:
        raise ValueError(f"batch must be >= 1 or None, got {batch}")
    steps_per_epoch = math.ceil(n / bs)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(int(seed))
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev) if bs < n else None
        for b in range(0, n, bs):
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            if perm is None:
                zb, yb = z, y
            else:
                idx = perm[b:b + bs]
                zb, yb = z[idx], y[idx]
            loss = F.cross_entropy(head(zb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head, mean, std


def linear_probe(model: nn.Module, train: Split, test: Split, info: DatasetInfo, *,
                 recipe: HeadRecipe = HeadRecipe(), device: DeviceLike = None,
                 num_classes: Optional[int] = None, feature_batch: int = FEATURE_BATCH) -> float:
    """Transfer accuracy in [0, 1] of a linear probe on a frozen backbone.

    The backbone is everything before `model.fc`: its features (the input of
    `fc`, see `penultimate_features`) are extracted once for `train` and
    `test` (eval mode, no grad; the model's weights are never changed), then
    a fresh linear head with `num_classes` outputs (default
    int(train.y.max()) + 1) is fitted on the cached train features by
    `fit_linear_head` and scored on the test features.

    `train`/`test` are the *target* dataset's splits and `info` its
    DatasetInfo (used for normalisation). The images must have the channel
    count the model was built for; the resolution may differ (the models
    pool adaptively), though a model built for <= 64 px has the small stem.
    Deterministic for a seed on CPU.
    """
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"linear_probe needs non-empty splits, got {len(train)} train and "
                         f"{len(test)} test examples")
    k = int(num_classes) if num_classes is not None else int(train.y.max()) + 1
    f_tr = penultimate_features(model, train.x, info, batch=feature_batch, device=device)
    f_te = penultimate_features(model, test.x, info, batch=feature_batch, device=device)
    dev = torch.device(device) if device is not None else _model_device(model)
    head, mean, std = fit_linear_head(f_tr, train.y, k, recipe, device=dev)
    with torch.no_grad():
        pred = head(((f_te - mean) / std).to(dev)).argmax(1).cpu()
    return float((pred == test.y.cpu()).sum()) / len(test)


__all__ = ["DEFAULT_LAYERS", "HeadRecipe", "cka_between", "fit_linear_head", "layer_features",
           "linear_cka", "linear_probe", "penultimate_features"]
