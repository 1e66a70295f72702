"""Model variants: how a k x k conv is built, shared by the architectures.

- "standard": the usual "same" padding, (k - 1) // 2.
- "full_conv": full convolution, padding k - 1 (3x3 -> 2, 7x7 -> 6, 1x1 -> 0),
  so a stride-1 3x3 conv maps H to H + 2 and every output pixel sees the
  image's border the same way. The paper uses it to take away the implicit
  position encoding that zero "same" padding gives a CNN. Blocks with a
  residual sum pad their shortcut to match (see `shortcut_pad`).
- "harmonic": harmonic blocks (Ulicny, Krylov, Dahyot, "Harmonic networks with
  limited training samples" / "Harmonic convolutional networks based on
  discrete cosine transform"): every 3x3 conv becomes a fixed 3x3 DCT-II
  filter bank applied depthwise (a buffer, never trained, never pruned)
  followed by a learned 1x1 conv that mixes the C_in * 9 responses into C_out.
  Convs of other sizes (1x1 shortcuts, the 7x7 ImageNet stem) stay plain.

IMP prunes every Conv2d weight. `HarmonicConv2d` is deliberately *not* a
Conv2d subclass: its learned part is the child `mix` (a Conv2d, so
`prunable_names(model, "conv")` lists `<name>.mix.weight`), and its DCT basis
is a registered buffer, so it is in the state dict but not in
`model.parameters()`, gets no gradient, no optimizer state and no mask.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from workers.registry import Registry

from .registry import ARCHS

# name -> what it changes (the module docstring has the details); the builders below
# (conv_padding, conv_kxk) dispatch on the name. ValueError: what callers caught before.
VARIANTS: Registry[str] = Registry("variant", error=ValueError)
VARIANTS.register("standard", "the usual 'same' padding, (k - 1) // 2")
VARIANTS.register("full_conv", "full convolution, padding k - 1, shortcuts padded to match")
VARIANTS.register("harmonic", "3x3 convs as a fixed DCT-II filter bank and a learned 1x1 mix")


def check_variant(variant: str, supported: Collection[str] = VARIANTS) -> None:
    VARIANTS.get(variant)
    if variant not in supported:
        raise ValueError(f"variant {variant!r} is not available for this arch; "
                         f"supported: {list(supported)}")


def conv_padding(variant: str, k: int) -> int:
    return k - 1 if variant == "full_conv" else (k - 1) // 2


def conv_kxk(variant: str, cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    """The k x k conv (bias=False: a BN always follows) under `variant`."""
    pad = conv_padding(variant, k)
    if variant == "harmonic" and k == 3:
        return HarmonicConv2d(cin, cout, stride=stride, padding=pad)
    return nn.Conv2d(cin, cout, k, stride, pad, bias=False)


def shortcut_pad(variant: str, convs: list[tuple[int, int]]) -> int:
    """Zero padding (pixels per side, in input coordinates) that aligns a
    block's shortcut with its main path, given the main path's convs as
    (kernel, stride) pairs in order.

    Output pixel o of the main path is centred on input pixel
    stride_total * o - P with P = sum_i (pad_i - (k_i - 1) / 2) * prod_{j<i} s_j:
    every conv padded beyond "same" shifts the centre by its excess padding,
    measured in the input's pixels. The shortcut (identity, or a 1x1 conv with
    the block's stride) is centred on stride_total * o - P exactly when its
    input is zero-padded by P on each side, and the sizes then agree for every
    input size (checked in the tests for odd and even sizes):
      standard / harmonic: P = 0 (the usual shortcut);
      full_conv BasicBlock, stride 1: P = 2 (H -> H + 4);
      full_conv BasicBlock, stride 2: P = 3 (H -> floor((H + 1) / 2) + 3);
      full_conv Bottleneck, stride 1 or 2: P = 1 (H -> floor((H + 1) / s) + 1).
    """
    total, scale = 0, 1
    for k, s in convs:
        excess = conv_padding(variant, k) - (k - 1) // 2
        total += excess * scale
        scale *= s
    return total


def dct_basis(n: int = 3) -> torch.Tensor:
    """The n*n orthonormal 2-D DCT-II basis filters, shape [n*n, 1, n, n].

    Filter u*n + v is c_u(i) * c_v(j) with the 1-D orthonormal DCT-II
    c_k(i) = a_k cos(pi (2i + 1) k / (2n)), a_0 = sqrt(1/n), a_k = sqrt(2/n).
    Filter 0 is the constant (DC) filter 1/n. Flattened, the filters are the
    rows of an orthogonal n^2 x n^2 matrix."""
    i = torch.arange(n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    c = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return torch.einsum("ui,vj->uvij", c, c).reshape(n * n, 1, n, n).float()


class HarmonicConv2d(nn.Module):
    """Replacement of a 3x3 conv: fixed depthwise DCT-II stage (stride and
    padding of the conv it replaces) then a learned 1x1 `mix` conv.

    Response channel c * 9 + k is DCT filter k on input channel c, so the
    block equals a 3x3 conv with weight W[o, c] = sum_k mix[o, c*9 + k] basis[k]:
    the same function class, expressed in an orthonormal basis. The mix is
    initialised so that this equivalent 3x3 weight has exactly the standard
    model's init (kaiming fan_out of the 3x3 conv, std sqrt(2 / (9 C_out))),
    because an orthonormal change of basis keeps i.i.d. Gaussians i.i.d.
    Costs 9 x C_in channels of activation memory between the two stages."""

    kernel_size = (3, 3)

    def __init__(self, cin: int, cout: int, stride: int = 1, padding: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.stride, self.padding = (stride, stride), (padding, padding)
        self.register_buffer("basis", dct_basis(3))  # persistent: in the state dict
        self.mix = nn.Conv2d(cin * 9, cout, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = math.sqrt(2.0 / (self.out_channels * 9))
        nn.init.normal_(self.mix.weight, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.basis.to(x.dtype).repeat(self.in_channels, 1, 1, 1)
        y = F.conv2d(x, w, None, self.stride, self.padding, groups=self.in_channels)
        return self.mix(y)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, dct=3x3, "
                f"stride={self.stride}, padding={self.padding}")


# How a network's weights start (ModelSpec.init_scheme, the yaml axis `init_schemes`):
#   torchvision  Kaiming-normal fan_out convs (std sqrt(2 / (C_out k^2))), conv biases
#                (vgg16_paper's) zero, BatchNorm at identity, Linear at PyTorch's default:
#                the default, as every lineage before the scheme was named (their trial
#                ids are unchanged);
#   pytorch      every module at PyTorch's own reset: convs and Linear
#                kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)), std
#                1/sqrt(3 fan_in) (~2.4x smaller than torchvision's for a 3x3x64
#                layer), biases U(+-1/sqrt(fan_in)), BatchNorm at identity;
#   paper        what the paper's released code (VITA-Group/DataEfficientLTH,
#                models/) gives the network of each (architecture, variant), by
#                `paper_recipe`:
#                "default"  PyTorch's own reset, as `pytorch` (its resnet.py and
#                           mobilenet.py apply no init of their own);
#                "kaiming"  its fresnet.py and hresnet.py, the networks of methods
#                           full_conv and harmonic: Kaiming-normal fan_out (relu) convs,
#                           BatchNorm at identity, Linear at PyTorch's default; a harmonic
#                           conv's mix as the released Harm2d weight (`harm2d_init`);
#                "vgg"      its vgg.py: "kaiming", conv biases zero, Linear N(0, 0.01)
#                           with zero bias.
#
# name -> f(model, arch, variant): re-initialises a network built with `init_weights` in place.
INIT_SCHEMES: Registry[Callable[[nn.Module, str, str], None]] = Registry("init scheme", error=ValueError)
# The paper's recipe per architecture (any variant), else per variant, else "default".
PAPER_OWN_INIT = {"vgg16": "vgg", "vgg16_paper": "vgg"}
PAPER_VARIANT_INIT = {"full_conv": "kaiming", "harmonic": "kaiming"}


def paper_recipe(arch: str, variant: str = "standard") -> str:
    """The released code's init recipe for the network of (arch, variant) (see INIT_SCHEMES)."""
    return PAPER_OWN_INIT.get(arch) or PAPER_VARIANT_INIT.get(variant, "default")


def init_weights(model: nn.Module) -> None:
    """torchvision's init (the `torchvision` scheme), applied by every
    architecture as it is built: Kaiming (fan_out) convs with zero biases, BN
    at identity; nn.Linear keeps its own default reset. Harmonic mixes then get
    their own init back."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    reset_harmonic(model)


def harm2d_init(m: "HarmonicConv2d", stem: bool) -> None:
    """The released Harm2d's init (Kaiming-normal fan_out, relu) on this
    project's mix, shape (C_out, C_in * 9, 1, 1). A block's Harm2d weight is
    (C_out, C_in, 9, 1, 1): fan_out 9 C_out, std sqrt(2 / (9 C_out)), a 3x3
    conv's (the mix's own `reset_parameters`). The stem's (`use_bn=True`) is
    (C_out, C_in * 9, 1, 1), the mix's own shape: fan_out C_out, std sqrt(2 / C_out)."""
    if stem:
        nn.init.kaiming_normal_(m.mix.weight, mode="fan_out", nonlinearity="relu")
    else:
        m.reset_parameters()


def stem_module(model: nn.Module, arch: str) -> Optional[nn.Module]:
    """The module holding the registered architecture's stem weight (None if not found)."""
    if arch not in ARCHS:
        return None
    try:
        return model.get_submodule(ARCHS[arch].stem_key.rsplit(".", 1)[0])
    except AttributeError:
        return None


def _reinit(model: nn.Module, recipe: str = "default", stem: Optional[nn.Module] = None) -> None:
    """Re-initialise every module by `recipe` (see INIT_SCHEMES; "default": PyTorch's
    own reset). `stem`: the network's first conv, a harmonic one inits as the
    released harmonic stem."""
    own = recipe != "default"
    mixes = {id(m.mix) for m in model.modules() if isinstance(m, HarmonicConv2d)}
    for m in model.modules():
        if own and isinstance(m, HarmonicConv2d):
            harm2d_init(m, stem=m is stem)
        elif own and isinstance(m, nn.Conv2d):
            if id(m) in mixes:
                continue  # set with its HarmonicConv2d
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif recipe == "vgg" and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            m.reset_parameters()  # PyTorch's own (a harmonic block's 1x1 mix is a Conv2d: its too)


def _paper(model: nn.Module, arch: str, variant: str) -> None:
    _reinit(model, paper_recipe(arch, variant), stem_module(model, arch))


INIT_SCHEMES.register("torchvision", lambda model, arch, variant: None)  # what the architectures build
INIT_SCHEMES.register("pytorch", lambda model, arch, variant: _reinit(model))
INIT_SCHEMES.register("paper", _paper)


def apply_init_scheme(model: nn.Module, scheme: str, arch: str, variant: str = "standard") -> None:
    """Re-initialise a freshly built network (built with `init_weights`) under
    `scheme` (see INIT_SCHEMES) as the network of (arch, variant); the caller
    seeds torch first."""
    INIT_SCHEMES.get(scheme)(model, arch, variant)


def reset_harmonic(model: nn.Module) -> None:
    """Re-apply the harmonic init after a model-wide Conv2d init loop (which
    would otherwise give the 1x1 mix a 1x1 conv's fan_out)."""
    for m in model.modules():
        if isinstance(m, HarmonicConv2d):
            m.reset_parameters()


class FeaturesNet(nn.Module):
    """`features` -> global average pool -> the Linear head `fc` (VGG, MobileNetV2).
    Subclasses build `features` and call `finish(features, channels, num_classes)`."""

    def finish(self, features: list[nn.Module], channels: int, num_classes: int) -> None:
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
