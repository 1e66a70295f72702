"""Masks: the prunable set, densities, bit-packing, and keeping pruned weights at zero."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.workers.models.helpers import tiny
from workers.pruning import (
    MaskApplier,
    density,
    full_masks,
    global_magnitude_prune,
    pack_masks,
    prunable_names,
    unpack_masks,
)


def test_prunable_set_is_exactly_the_conv_weights():
    model = tiny("resnet18")
    names = prunable_names(model)
    assert len(names) == 20  # stem + 16 block convs + 3 shortcuts
    assert names[0] == "stem.0.weight"
    assert sum(".shortcut." in n for n in names) == 3
    params = dict(model.named_parameters())
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(names) == convs and all(params[n].dim() == 4 for n in names)
    assert not any(n.startswith("fc.") or n.endswith(".bias") or ".bn" in n for n in names)
    with_fc = prunable_names(model, "conv+linear")
    assert with_fc == names + ["fc.weight"]
    with pytest.raises(ValueError):
        prunable_names(model, "bn")


def test_density_after_rounds_tracks_exact_counts():
    model = tiny("resnet18")
    masks = full_masks(model, prunable_names(model))
    remaining = sum(m.numel() for m in masks.values())
    total = remaining
    for _ in range(5):
        masks = global_magnitude_prune(model, masks, 0.2)
        remaining -= round(0.2 * remaining)
        assert sum(int(m.sum()) for m in masks.values()) == remaining
        assert density(masks) == remaining / total
    assert abs(density(masks) - 0.8 ** 5) < 1e-4
    assert all(m.dtype == torch.bool for m in masks.values())


def test_pack_unpack_round_trip_odd_sizes():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(3, 5, 7, generator=g) > 0.5,      # 105 bits
             "b": torch.rand(13, generator=g) > 0.3,
             "c": torch.rand(64, 3, 3, 3, generator=g) > 0.9}
    packed = pack_masks(masks)
    assert all(isinstance(v, torch.Tensor) for v in packed.values())
    assert packed["a"].dtype == torch.uint8 and packed["a"].numel() == 14  # ceil(105/8)
    assert packed["c"].numel() == 64 * 27 // 8
    back = unpack_masks(packed)
    assert list(back) == list(masks)
    for n in masks:
        assert back[n].dtype == torch.bool and torch.equal(back[n], masks[n])


def test_packed_masks_survive_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file
    model = tiny("resnet18")
    masks = global_magnitude_prune(model, full_masks(model, prunable_names(model)), 0.2)
    save_file(pack_masks(masks), tmp_path / "masks.safetensors")
    back = unpack_masks(load_file(tmp_path / "masks.safetensors"))
    assert all(torch.equal(back[n], masks[n]) for n in masks)


def test_mask_applier_keeps_pruned_weights_and_momentum_zero():
    model = tiny("resnet18", in_channels=1, image_size=8)
    names = prunable_names(model)
    masks = global_magnitude_prune(model, full_masks(model, names), 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    applier = MaskApplier(model, masks, opt)
    applier.apply()  # install the mask before the first step
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        applier.apply()
    for n in names:
        p, m = params[n], masks[n]
        assert (p[~m] == 0.0).all()
        assert (opt.state[p]["momentum_buffer"][~m] == 0.0).all()
        assert not torch.equal(p[m], before[n][m])   # survivors did train
