"""Training losses and classifier heads for the loss-method axis.

Every loss has one signature, `loss(logits, target, num_classes) -> scalar`
(mean over the batch), so the training loop swaps them by name (`LOSSES`).
t-vMF changes the *head* rather than the loss: `make_head("tvmf", ...)`
builds a `TvMFHead` whose output is trained with plain cross-entropy.

References
- Barz & Denzler, "Deep Learning on Small Datasets without Pre-Training
  using Cosine Loss", WACV 2020 (arXiv:1901.09054); reference code
  github.com/cvjena/semantic-embeddings (`learn_image_embeddings.py`,
  `--embedding onehot --cls_weight 0.1`).
- Kobayashi, "t-vMF Similarity for Regularizing Intra-Class Feature
  Distribution", CVPR 2021; reference code github.com/tk1980/tvMF
  (`models/Loss.py`, classes `CosLoss` and `tvMFLoss`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from workers.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# Methods name their loss (Method.loss); ValueError: what callers caught before the registry.
LOSSES: Registry[LossFn] = Registry("loss", error=ValueError)


@LOSSES.register("cross_entropy")
def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Plain softmax cross-entropy (the paper's IMP baseline)."""
    return F.cross_entropy(logits, target)


@LOSSES.register("cosine")
def cosine_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                ce_weight: float = 0.1) -> torch.Tensor:
    """Barz & Denzler's cosine loss plus a 0.1-weighted cross-entropy term:

        L = mean_i [1 - cos(z_i, onehot(y_i))] + ce_weight * CE(z, y)

    With a one-hot target, cos(z, e_y) = z_y / ||z||_2, i.e. the paper's
    L_cos = 1 - <psi(f(x)), phi(y)> with psi = L2 normalisation and
    phi = one-hot class embedding (Sec. 3 of the paper; it is also
    `F.cosine_embedding_loss(z, onehot, +1)`).

    Deviation from the paper, on purpose: its "cosine loss + cross entropy"
    (lambda = 0.1) puts the CE on a *second* classifier (ReLU + BN + Dense
    softmax) stacked on the L2-normalised embedding. Here both terms use the
    same logits, so the method keeps the architecture's single Linear head
    and predictions are the usual argmax of those logits (argmax of z equals
    argmax of cos(z, e_c) over classes, so the two terms agree on the label).
    """
    onehot = F.one_hot(target, num_classes).to(logits.dtype)
    # eps guards an all-zero logit row (cos undefined): its cos counts as 0.
    cos = F.cosine_similarity(logits, onehot, dim=1, eps=1e-8)
    return (1.0 - cos).mean() + ce_weight * F.cross_entropy(logits, target)


def full_precision(x: torch.Tensor):
    """fp32 inside a bf16 autocast region: bf16 resolves a cosine near 1 in steps of
    2^-8, which phi's slope there (1 + 2 kappa = 33 at kappa 16) turns into steps of
    0.13 in the logits. A no-op on CPU, where training is fp32 anyway."""
    return torch.autocast(x.device.type, enabled=False)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def tvmf_similarity(cos: torch.Tensor, kappa: float) -> torch.Tensor:
    """phi(cos) = (1 + cos) / (1 + kappa (1 - cos)) - 1  (Kobayashi 2021, eq. for
    the t-vMF similarity). phi(1) = 1, phi(-1) = -1 and phi is increasing, so it
    stays in [-1, 1]; kappa = 0 gives back the cosine, larger kappa makes the
    peak around cos = 1 sharper (a compact, heavy-tailed similarity)."""
    return (1.0 + cos) / (1.0 + kappa * (1.0 - cos)) - 1.0


class TvMFHead(nn.Module):
    """Drop-in replacement for the final `nn.Linear`: logits are

        s * phi(cos(normalize(x), normalize(W_c)))

    `weight` has Linear's shape [num_classes, in_features] and no bias (as in
    the reference code), so it is excluded from pruning just like a Linear
    head (the prunable set is Conv2d weights).

    Scale s: the reference code (tk1980/tvMF `CosLoss.loss`) *learns* it as
    s = 1 + softplus(s_raw) with s_raw initialised to 0 (s = 1 + ln 2 at init),
    always >= 1. `scale=None` does the same (parameter `scale_raw`); a float
    fixes s (no parameter) for ablations. The reference applies s inside the
    loss; here the head returns the scaled logits, so training is plain
    cross-entropy on this module's output (`tvmf_loss`) and accuracy is their
    argmax (unchanged by s > 0).
    """

    def __init__(self, in_features: int, num_classes: int, kappa: float = 16.0,
                 scale: Optional[float] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.kappa = float(kappa)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        # Same init as nn.Linear (the reference subclasses nn.Linear): only the
        # direction of each row matters after normalisation.
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if scale is None:
            self.scale_raw = nn.Parameter(torch.zeros(1))
            self.fixed_scale = None
        else:
            if scale <= 0:
                raise ValueError(f"t-vMF scale must be > 0, got {scale}")
            self.scale_raw = None
            self.fixed_scale = float(scale)

    def scale(self) -> torch.Tensor | float:
        if self.fixed_scale is not None:
            return self.fixed_scale
        return 1.0 + F.softplus(self.scale_raw)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            cos = F.linear(F.normalize(at_least_fp32(x), dim=1), F.normalize(at_least_fp32(self.weight), dim=1))
        # Rounding can put |cos| a hair past 1, and phi'(1) = 1 + 2 kappa
        # (33 at kappa 16) would carry that past the [-1, 1] bound of phi.
        return cos.clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            return self.scale() * tvmf_similarity(self.cosine(x), self.kappa)

    def extra_repr(self) -> str:
        s = "learned" if self.fixed_scale is None else self.fixed_scale
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kappa={self.kappa}, scale={s}")


@LOSSES.register("tvmf")
def tvmf_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The t-vMF method's loss: cross-entropy on `TvMFHead`'s (scaled) output.
    Identical to `cross_entropy_loss`; a separate name so a run's config says
    which head the logits must come from."""
    return F.cross_entropy(logits, target)


HEADS = ("linear", "tvmf")


def make_head(kind: str, in_features: int, num_classes: int, **kw) -> nn.Module:
    """The classifier head: "linear" (nn.Linear, with bias, as the ResNet's
    own `fc`) or "tvmf" (`TvMFHead`; kw: kappa, scale)."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes, **kw)
    if kind == "tvmf":
        return TvMFHead(in_features, num_classes, **kw)
    raise ValueError(f"unknown head {kind!r}; known: {list(HEADS)}")


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)


__all__ = ["HEADS", "LOSSES", "TvMFHead", "cosine_loss", "cross_entropy_loss",
           "get_loss", "make_head", "tvmf_loss", "tvmf_similarity"]
