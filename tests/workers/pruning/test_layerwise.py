"""Same-layer random masks: the parent's per-layer counts, other positions."""
from __future__ import annotations

import pytest
import torch

from workers.models import build_model
from workers.pruning import density, full_masks, global_magnitude_prune, layer_densities, prunable_names
from workers.pruning.layerwise import layerwise_random_masks


@pytest.fixture(scope="module")
def imp_masks():
    """A real ResNet-18 mask set (tiny width) after 3 rounds of global
    magnitude pruning: per-layer densities differ from layer to layer."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=0.125)
    masks = full_masks(model, prunable_names(model))
    for _ in range(3):
        masks = global_magnitude_prune(model, masks, 0.2)
    return masks


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_same_layer_masks_keep_exact_per_layer_counts(imp_masks):
    # Guard: the parent really is non-uniform, or the test would be vacuous.
    assert len({round(d["density"], 3) for d in layer_densities(imp_masks)}) > 5
    out = layerwise_random_masks(imp_masks, _gen(1))
    assert list(out) == list(imp_masks)
    for name, parent in imp_masks.items():
        m = out[name]
        assert m.dtype == torch.bool and m.shape == parent.shape and m.device == parent.device
        assert int(m.sum()) == int(parent.sum()), name
    assert layer_densities(out) == layer_densities(imp_masks)
    assert density(out) == density(imp_masks)


def test_same_layer_masks_move_positions(imp_masks):
    out = layerwise_random_masks(imp_masks, _gen(1))
    for name, parent in imp_masks.items():
        if 0 < int(parent.sum()) < parent.numel():
            assert not torch.equal(out[name], parent), name
    # Random positions: the overlap with the parent's kept weights is about
    # density^2 of the weights, far from the parent's own density.
    kept = sum(int(m.sum()) for m in imp_masks.values())
    both = sum(int((out[n] & imp_masks[n]).sum()) for n in imp_masks)
    assert both < 0.7 * kept


def test_same_layer_masks_deterministic_per_seed(imp_masks):
    a = layerwise_random_masks(imp_masks, _gen(7))
    b = layerwise_random_masks(imp_masks, _gen(7))
    c = layerwise_random_masks(imp_masks, _gen(8))
    assert all(torch.equal(a[n], b[n]) for n in imp_masks)
    assert any(not torch.equal(a[n], c[n]) for n in imp_masks)


def test_same_layer_masks_fully_kept_and_fully_pruned_layers():
    parent = {"a": torch.ones(3, 4, dtype=torch.bool), "b": torch.zeros(5, dtype=torch.bool),
              "c": torch.tensor([[True, False], [False, False]])}
    out = layerwise_random_masks(parent, _gen(0))
    assert out["a"].all() and not out["b"].any() and int(out["c"].sum()) == 1
