"""Initialisations applied to a freshly built model: random, ImageNet, SimCLR.

    report = load_init(model, init, arch=..., path=..., image_size=..., in_channels=...)

- "random": the architecture's own init (build_model already did it); nothing.
- "imagenet": torchvision's ImageNet-1k weights for the arch, read from `path`
  (the file, or a folder holding the official file name) or else from the
  torch hub cache, `torch.hub.get_dir()/checkpoints/<official file>`. Never
  downloads: a trial must not fetch 100 MB from the internet in the middle
  of a sweep; fetch the file once beforehand (URL in the error message).
- "simclr": a SimCLR backbone from `path`: a torch file holding a state dict,
  possibly under "state_dict", its keys possibly prefixed (repeatedly) by
  "module.", "backbone." or "encoder."; keys in this project's names or in
  torchvision's names. Projection-head and other extra keys are ignored.

Rules (both pretrained inits):
- The head `fc` is always new (its random init is kept): num_classes differs.
- The stem conv (resnet: stem.0.weight, vgg16: features.0.weight,
  mobilenetv2: features.0.0.weight) is new when its shape differs from the
  checkpoint's: in_channels != 3, or ResNet's small-image 3x3 stem against
  ImageNet's 7x7. A same-shape stem is copied: VGG-16 has no separate stem,
  MobileNetV2's small-image stem only changes the stride, and a CIFAR SimCLR
  ResNet has the 3x3 stem. The stem's BN is always copied.
- Every other state-dict entry (conv weights, BN affine *and* running
  statistics, num_batches_tracked) must be present with the same shape and
  is copied exactly; anything missing or mis-shaped (width != 1, harmonic
  variant, wrong arch) raises InitError and leaves the model untouched.
  full_conv models have the standard shapes and load normally.
- VGG-16: torchvision's vgg16_bn has conv biases, this project's VGG has none
  (a BN follows). BN(conv(x) + b) with running mean mu equals BN(conv(x))
  with running mean mu - b, exactly, in eval and in train mode (the batch
  mean absorbs b), so the bias is folded into the following BN's running
  mean; those running means are the one place that is not a plain copy.

- vgg16_paper, mobilenetv2_cifar (the paper's released CIFAR networks):
  torchvision has no checkpoint for them, so "imagenet" is refused with an
  InitError (`Arch.imagenet_file` is ""); "simclr" loads by this project's names.

Key mapping, project -> torchvision: each architecture's `Arch.renames`
(registry.py, set in the architecture's own file); keys without a rename are
identical, and torchvision's classifier.* is ignored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.data import DataError

from .registry import ARCHS

INITS = ("random", "imagenet", "simclr")

IMAGENET_URL = "https://download.pytorch.org/models/{}"
HEAD_PREFIX = "fc."
SIMCLR_PREFIXES = ("module.", "backbone.", "encoder.")


class InitError(DataError):
    """A pretrained init cannot be applied: missing file, unreadable file, or
    a checkpoint that does not fit the model (a one-line, user-facing message)."""


@dataclass
class InitReport:
    init: str
    source: str | None = None
    loaded: list[str] = field(default_factory=list)   # model keys copied from the file
    new: list[str] = field(default_factory=list)      # model keys left at their random init
    folded: list[str] = field(default_factory=list)   # file keys folded into a copied BN
    ignored: list[str] = field(default_factory=list)  # file keys with no place in the model

    def summary(self) -> str:
        if self.init == "random":
            return "init random"
        return (f"init {self.init} from {self.source}: {len(self.loaded)} tensors loaded, "
                f"new: {self.new}, {len(self.folded)} folded, {len(self.ignored)} ignored")


def torchvision_key(arch: str, key: str) -> str:
    """The torchvision state-dict name of this project's `key`."""
    return ARCHS[arch].torchvision_key(key)


def imagenet_path(arch: str, path: str | None = None) -> str:
    """Where the ImageNet checkpoint for `arch` is expected."""
    fname = ARCHS[arch].imagenet_file
    if not fname:
        raise InitError(f"model.init imagenet: no ImageNet checkpoint exists for {arch} (a CIFAR "
                        f"network of the paper's released code, never trained on ImageNet); use "
                        f"model.init random, or an architecture torchvision ships weights for")
    if path is None:
        return os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    return os.path.join(path, fname) if os.path.isdir(path) else path


def check_init_file(arch: str, init: str, path: str | None) -> None:
    """The weights file a trial's `model.init` will read exists (InitError if not)."""
    if init == "random":
        return
    where = imagenet_path(arch, path) if init == "imagenet" else path
    if not (where and os.path.isfile(where)):
        raise InitError(f"model.init {init}: weights file not found at {where or '(runtime.init_path unset)'}"
                        + ("; put torchvision's file there or set runtime.init_path" if init == "imagenet"
                           else "; set runtime.init_path to the SimCLR state dict"))


def load_init(model: nn.Module, init: str, *, arch: str, path: str | None = None,
              image_size: int | None = None, in_channels: int | None = None) -> InitReport:
    """Apply `init` to `model` (built by build_model(arch, ...)) in place.
    `image_size` / `in_channels` are the values the model was built with; they
    are only checked against the model and named in the report."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {list(INITS)}")
    if init == "random":
        if path is not None:
            raise ValueError(f"init 'random' takes no path (got {path!r})")
        return InitReport("random")
    stem = model.get_submodule(ARCHS.get(arch).stem_key.rsplit(".", 1)[0])
    if in_channels is not None and getattr(stem, "in_channels", in_channels) != in_channels:
        raise InitError(f"in_channels={in_channels} but the model's stem takes "
                        f"{stem.in_channels} channels")

    if init == "imagenet":
        file = imagenet_path(arch, path)
        if not os.path.isfile(file):
            raise InitError(
                f"ImageNet weights for {arch} not found at {file}; nothing is downloaded "
                f"during a trial: fetch {IMAGENET_URL.format(ARCHS[arch].imagenet_file)} "
                f"to that path (or pass its path) beforehand")
    else:
        if path is None:
            raise InitError("init 'simclr' needs a path to a SimCLR backbone state dict")
        file = path
        if not os.path.isfile(file):
            raise InitError(f"SimCLR checkpoint not found at {file}")
    src = _read_state_dict(file, strip=init == "simclr")
    report = InitReport(init, source=file)
    if ARCHS[arch].fold_conv_bias:
        src = _fold_conv_bias(src, model.state_dict(), report)
    _copy_mapped(model, src, arch=arch, report=report, image_size=image_size)
    return report


def _read_state_dict(file: str, *, strip: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, truncated file, not a torch file
        raise InitError(f"cannot read checkpoint {file}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InitError(f"checkpoint {file} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise InitError(f"checkpoint {file} holds no tensors")
    if not strip:
        return tensors
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        s = k
        while s.startswith(SIMCLR_PREFIXES):
            s = s[len(next(p for p in SIMCLR_PREFIXES if s.startswith(p))):]
        if s in out:
            raise InitError(f"checkpoint {file}: two keys map to {s!r} after removing "
                            f"the prefixes {SIMCLR_PREFIXES}")
        out[s] = v
    return out


def _fold_conv_bias(src: dict, own: dict, report: InitReport) -> dict:
    """torchvision vgg16_bn conv biases -> running mean of the BN after them
    (features.i.bias, BN at features.i+1), for convs the model has without bias."""
    src = dict(src)
    for k in list(src):
        m = re.fullmatch(r"features\.(\d+)\.bias", k)
        if not m or k in own or src.get(f"features.{m[1]}.weight", torch.empty(0)).dim() != 4:
            continue
        rm = f"features.{int(m[1]) + 1}.running_mean"
        if rm in src and src[rm].shape == src[k].shape:
            src[rm] = src[rm] - src.pop(k)
            report.folded.append(k)
    return src


def _copy_mapped(model: nn.Module, src: dict, *, arch: str, report: InitReport,
                 image_size: int | None) -> None:
    own = model.state_dict()
    stem_key = ARCHS[arch].stem_key
    plan, used, missing, mismatched = {}, set(), [], []
    for key, cur in own.items():
        if key.startswith(HEAD_PREFIX):
            report.new.append(key)
            continue
        cands = dict.fromkeys([key, torchvision_key(arch, key)])
        src_key = next((c for c in cands if c in src), None)
        if src_key is None:
            missing.append(key)
            continue
        used.add(src_key)
        t = src[src_key]
        if t.shape != cur.shape:
            if key == stem_key:
                report.new.append(key)  # new stem: in_channels != 3 or small-image stem
                continue
            mismatched.append(f"{key}: model {tuple(cur.shape)} vs file {tuple(t.shape)}")
            continue
        plan[key] = t
    if missing or mismatched:
        raise InitError(
            f"{report.source} does not fit this {arch} (image_size={image_size}); "
            f"pretrained inits need width 1 and variant standard or full_conv. "
            f"{len(missing)} model keys missing from the file: {missing[:5]}; "
            f"{len(mismatched)} shape mismatches: {mismatched[:5]}")
    with torch.no_grad():
        for key, t in plan.items():
            own[key].copy_(t)  # state_dict() shares storage with the model
    report.loaded = list(plan)
    report.ignored = sorted(set(src) - used)
