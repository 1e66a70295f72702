"""Models and pruning: shapes, init, the prunable set, global magnitude /
random pruning, mask storage and the mask applier. CPU, small widths."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models import ARCHS, build_model
from workers.pruning import (MaskApplier, density, full_masks, global_magnitude_prune,
                             layer_densities, pack_masks, prunable_names, random_prune,
                             unpack_masks)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(num_classes=10, in_channels=3, image_size=32, width=0.125) | kw
    return build_model("resnet18", **args)


# --- models ---------------------------------------------------------------

@pytest.mark.parametrize("cin,px,small", [(1, 8, True), (3, 32, True), (3, 224, False)])
def test_resnet18_shapes_and_stem(cin, px, small):
    model = tiny(in_channels=cin, image_size=px).eval()
    stem = model.stem[0]
    assert stem.in_channels == cin
    assert stem.kernel_size == ((3, 3) if small else (7, 7))
    assert stem.stride == ((1, 1) if small else (2, 2))
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem) == (not small)
    with torch.no_grad():
        out = model(torch.randn(2, cin, px, px))
    assert out.shape == (2, 10)


def test_resnet18_param_count_full_width():
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_width_multiplier_scales_channels():
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    half, eighth = convs(tiny(width=0.5)), convs(tiny(width=0.125))
    assert half[0] == 32 and max(half) == 256
    assert eighth[0] == 8 and max(eighth) == 64
    assert tiny(width=0.125).fc.in_features == 64


def test_init_deterministic_under_seed_and_torchvision_style():
    a, b, c = tiny(seed=1), tiny(seed=1), tiny(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["stem.0.weight"], sc["stem.0.weight"])
    # Conv biases absent; BN starts at identity.
    assert all(m.bias is None for m in a.modules() if isinstance(m, nn.Conv2d))
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0)
               for m in a.modules() if isinstance(m, nn.BatchNorm2d))
    # kaiming fan_out: std = sqrt(2 / (out_channels * k * k)) (loose check).
    w = a.layer4[0].conv2.weight
    expected = (2 / (w.shape[0] * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.1


def test_unknown_arch_rejected():
    assert "resnet18" in ARCHS
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet9000", num_classes=10, in_channels=3, image_size=32)


# --- prunable set ------------------------------------------------------------

def test_prunable_set_is_exactly_the_conv_weights():
    model = tiny()
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


# --- global magnitude pruning -----------------------------------------------

def test_density_after_rounds_tracks_exact_counts():
    model = tiny()
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


def test_pruning_is_global_not_per_layer():
    model = tiny()
    names = prunable_names(model)
    big = "layer1.0.conv1.weight"
    with torch.no_grad():
        dict(model.named_parameters())[big].mul_(100)
    masks = global_magnitude_prune(model, full_masks(model, names), 0.5)
    dens = {d["layer"]: d["density"] for d in layer_densities(masks)}
    assert list(dens) == names
    # Per-layer pruning would give every layer 0.5; globally the scaled layer
    # keeps almost everything (only its near-zero weights go), and the other
    # layers end up at different densities (kaiming fan_out scales differ).
    assert dens[big] > 0.95
    assert max(dens.values()) - min(dens.values()) > 0.5
    params = dict(model.named_parameters())
    kept = torch.cat([params[n].abs()[masks[n]] for n in names])
    pruned = torch.cat([params[n].abs()[~masks[n]] for n in names])
    assert kept.min() >= pruned.max()


def test_pruned_weights_never_revived_and_inputs_untouched():
    model = tiny()
    masks0 = full_masks(model, prunable_names(model))
    masks1 = global_magnitude_prune(model, masks0, 0.2)
    assert all(m.all() for m in masks0.values())   # input not mutated
    # Make the pruned weights the *largest*: magnitude alone would revive them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks1:
                p[~masks1[n]] = 1e6
    masks2 = global_magnitude_prune(model, masks1, 0.2)
    for n in masks1:
        assert not (masks2[n] & ~masks1[n]).any()


def test_ties_broken_by_flat_index():
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    names = prunable_names(model)
    masks = global_magnitude_prune(model, full_masks(model, names), 0.2)
    flat = torch.cat([masks[n].reshape(-1) for n in names])
    k = round(0.2 * flat.numel())
    assert not flat[:k].any() and flat[k:].all()


def test_random_prune_exact_and_deterministic():
    model = tiny()
    masks = full_masks(model, prunable_names(model))
    total = remaining = sum(m.numel() for m in masks.values())
    gen = lambda: torch.Generator().manual_seed(7)
    a = random_prune(masks, 0.2, gen())
    b = random_prune(masks, 0.2, gen())
    c = random_prune(masks, 0.2, torch.Generator().manual_seed(8))
    remaining -= round(0.2 * remaining)
    assert sum(int(m.sum()) for m in a.values()) == remaining
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    a2 = random_prune(a, 0.2, gen())
    remaining -= round(0.2 * remaining)
    assert density(a2) == remaining / total
    assert all(not (a2[n] & ~a[n]).any() for n in a)


# --- storage -------------------------------------------------------------------

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
    model = tiny()
    masks = global_magnitude_prune(model, full_masks(model, prunable_names(model)), 0.2)
    save_file(pack_masks(masks), tmp_path / "masks.safetensors")
    back = unpack_masks(load_file(tmp_path / "masks.safetensors"))
    assert all(torch.equal(back[n], masks[n]) for n in masks)


# --- mask applier --------------------------------------------------------------

def test_mask_applier_keeps_pruned_weights_and_momentum_zero():
    model = tiny(in_channels=1, image_size=8)
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
