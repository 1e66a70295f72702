"""Global magnitude and global random pruning: exact counts, global not per layer, ties."""
from __future__ import annotations

import torch

from tests.workers.models.helpers import tiny
from workers.pruning import density, full_masks, global_magnitude_prune, layer_densities, prunable_names, random_prune


def test_pruning_is_global_not_per_layer():
    model = tiny("resnet18")
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
    model = tiny("resnet18")
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
    model = tiny("resnet18")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    names = prunable_names(model)
    masks = global_magnitude_prune(model, full_masks(model, names), 0.2)
    flat = torch.cat([masks[n].reshape(-1) for n in names])
    k = round(0.2 * flat.numel())
    assert not flat[:k].any() and flat[k:].all()


def test_random_prune_exact_and_deterministic():
    model = tiny("resnet18")
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
