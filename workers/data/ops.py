"""Batched image ops on uint8 [B, C, H, W] with one parameter per sample.

These are torchvision.transforms.v2.functional's uint8 tensor kernels
(brightness, contrast, saturation, hue, sharpness, posterize, solarize,
autocontrast, equalize, invert, affine/rotate with nearest sampling and zero
fill), rewritten so that each sample of a batch gets its own factor: v2 takes
one Python float per call, so a batch would share one random draw. The
arithmetic (float32, the same grayscale weights, truncating casts, PIL's
equalize LUT) follows v2 line by line, so each op equals v2's on every image
(tests/test_augment.py checks that op by op); the hue conversion is adapted
from v2's `_rgb_to_hsv`/`_hsv_to_rgb` (BSD-3-Clause, torchvision).

Parameters are float/int tensors of shape [B] on the batch's device, so a
whole augmentation policy runs with no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import device_constant


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).view(-1, 1, 1, 1)


def _u8(xf: torch.Tensor) -> torch.Tensor:
    # v2 clamps then casts (truncation), never rounds.
    return xf.clamp_(0, 255).to(torch.uint8)


def _gray(xf: torch.Tensor) -> torch.Tensor:
    r, g, b = xf.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(xf: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # v2: image1.mul(ratio).add_(image2, alpha=1 - ratio) with a Python float
    # ratio, so 1 - ratio is taken in double; addcmul is the same fused
    # multiply-add with a per-sample alpha, so the rounding matches.
    alpha = _col(1.0 - ratio.to(torch.float64))
    return _u8(torch.addcmul(xf * _col(ratio), other, alpha))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _u8(x.float() * _col(factor))


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # v2 (like PIL) leaves one-channel images alone
        return x
    xf = x.float()
    return _blend(xf, _gray(xf).floor_(), factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    g = _gray(xf).floor_() if x.shape[1] == 3 else xf
    return _blend(xf, g.mean(dim=(1, 2, 3), keepdim=True), factor)


def grayscale3(x: torch.Tensor) -> torch.Tensor:
    """v2.RandomGrayscale's conversion: same channel count, uint8 by truncation."""
    if x.shape[1] == 1:
        return x
    return _gray(x.float()).to(torch.uint8).expand_as(x)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    neq_r = maxc != r
    eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(eq_g & neq_r)
    hr = bc.sub_(gc).mul_(~neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(neq_r.logical_and_(eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32).remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = device_constant("hsv_select", img.device, lambda: torch.tensor(
        [[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long))
    return vpqt.gather(-3, select[:, i].moveaxis(0, -3))


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x.float() / 255.0)
    h, s, v = hsv.unbind(1)
    h = (h + shift.to(torch.float32).view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=1))
    return rgb.mul_(255.0 + 1.0 - 1e-3).to(torch.uint8)  # v2's float -> uint8 scaling


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    if H <= 2 or W <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = device_constant(("sharpness", C), x.device, lambda: torch.tensor(
        [[a, a, a], [a, b, a], [a, a, a]]).expand(C, 1, 3, 3).contiguous())
    out = x.float()
    blurred = F.conv2d(out, kernel, groups=C).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((blurred - inner) * _col(1.0 - factor.to(torch.float64)))  # borders keep the original pixels
    return _u8(out)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    keep = (255 << (8 - bits.to(torch.int32))) & 255
    return x & keep.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x.float() >= _col(threshold), x.bitwise_not(), x)


def invert(x: torch.Tensor, _unused=None) -> torch.Tensor:
    return x.bitwise_not()


def autocontrast(x: torch.Tensor, _unused=None) -> torch.Tensor:
    xf = x.float()
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = lo.masked_fill(flat, 0.0)
    inv_scale = inv_scale.masked_fill(flat, 1.0)
    return xf.sub_(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(x: torch.Tensor, _unused=None) -> torch.Tensor:
    """PIL's histogram equalization per sample and channel (v2's batched kernel)."""
    flat = x.flatten(start_dim=-2).to(torch.long)  # [B, C, HW]
    hist = flat.new_zeros(flat.shape[:-1] + (256,), dtype=torch.int32)
    hist.scatter_add_(-1, flat, hist.new_ones(1).expand_as(flat))
    cum = hist.cumsum(-1)
    top = cum.argmax(-1, keepdim=True)
    step = (flat.shape[-1] - hist.gather(-1, top)).div_(255, rounding_mode="floor")
    valid = step.ne(0).unsqueeze(-1)
    lut = cum[..., :-1].add(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(lut.shape[:-1] + (1,)), lut], -1).to(torch.uint8)
    out = lut.gather(-1, flat).view_as(x)
    return torch.where(valid, out, x)


# --- geometry -------------------------------------------------------------------
# Each builds v2's *inverse* affine matrix (output pixel -> input pixel, in
# pixel coordinates about the image centre) per sample; `affine` samples it.

def shear_x(m: torch.Tensor, H: int, W: int) -> torch.Tensor:
    # v2: shear=[atan(m) in degrees, 0] about the top-left corner (center=[0, 0]).
    z, o = torch.zeros_like(m), torch.ones_like(m)
    return torch.stack([o, m, m * (H / 2), z, o, z], -1).view(-1, 2, 3)


def shear_y(m: torch.Tensor, H: int, W: int) -> torch.Tensor:
    z, o = torch.zeros_like(m), torch.ones_like(m)
    return torch.stack([o, z, z, m, o, m * (W / 2)], -1).view(-1, 2, 3)


def translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([o, z, -tx, z, o, -ty], -1).view(-1, 2, 3)


def rotation(degrees: torch.Tensor) -> torch.Tensor:
    r = torch.deg2rad(-degrees)  # v2's rotate passes -angle to the affine matrix
    c, s, z = torch.cos(r), torch.sin(r), torch.zeros_like(r)
    return torch.stack([c, s, z, -s, c, z], -1).view(-1, 2, 3)


def _base_grid(H: int, W: int) -> torch.Tensor:
    base = torch.empty(1, H, W, 3)
    base[..., 0].copy_(torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W))
    base[..., 1].copy_(torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H).unsqueeze(-1))
    base[..., 2].fill_(1)
    return base


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling through per-sample inverse matrices [B, 2, 3], zero fill."""
    B, C, H, W = x.shape
    dev = x.device
    theta = theta.to(device=dev, dtype=torch.float32)
    base = device_constant(("affine_grid", H, W), dev, lambda: _base_grid(H, W))
    half = device_constant(("affine_half", H, W), dev, lambda: torch.tensor([0.5 * W, 0.5 * H]))
    scaled = theta.transpose(1, 2) / half
    grid = base.view(1, H * W, 3).expand(B, -1, -1).bmm(scaled).view(B, H, W, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)
