"""Building blocks of the loss and parent-dependent methods: cosine and t-vMF
losses/heads, same-layer random masks, and small-dense width matching.
CPU only; expected values are computed by hand with `math`, not with the
torch formulas under test."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers.losses import (LOSSES, TvMFHead, cosine_loss, make_head, tvmf_loss,
                            tvmf_similarity)
from workers.models import build_model
from workers.pruning import (density, full_masks, global_magnitude_prune,
                             layer_densities, prunable_names, random_prune)
from workers.pruning.layerwise import same_layer_random_masks
from workers.pruning.matching import matching_width, param_count, ticket_param_count

# --- losses -----------------------------------------------------------------

# Two samples, three classes.
LOGITS = [[2.0, 0.0, 1.0], [1.0, 2.0, 2.0]]
TARGET = [0, 2]


def _ce_by_hand(row, y):
    return -row[y] + math.log(sum(math.exp(v) for v in row))


def _hand_cross_entropy():
    return sum(_ce_by_hand(r, y) for r, y in zip(LOGITS, TARGET)) / 2


def _hand_cosine():
    # cos(z, e_y) = z_y / ||z||: sample 1: 2 / sqrt(5); sample 2: 2 / 3.
    cos = [2 / math.sqrt(5), 2 / 3]
    return sum(1 - c for c in cos) / 2 + 0.1 * _hand_cross_entropy()


def _t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def test_cross_entropy_and_cosine_loss_by_hand():
    z, y = _t(LOGITS), torch.tensor(TARGET)
    assert LOSSES["cross_entropy"](z, y, 3).item() == pytest.approx(_hand_cross_entropy(), abs=1e-12)
    assert cosine_loss(z, y, 3).item() == pytest.approx(_hand_cosine(), abs=1e-12)
    assert LOSSES["cosine"](z, y, 3).item() == pytest.approx(_hand_cosine(), abs=1e-12)
    # ce_weight is the CE term's coefficient: 0 leaves the pure cosine loss.
    pure = (1 - 2 / math.sqrt(5) + 1 - 2 / 3) / 2
    assert cosine_loss(z, y, 3, ce_weight=0.0).item() == pytest.approx(pure, abs=1e-12)


def test_cosine_loss_is_zero_cosine_term_for_one_hot_direction():
    # Logits pointing exactly along the target's one-hot: only CE remains.
    z, y = _t([[5.0, 0.0, 0.0]]), torch.tensor([0])
    ce = -5 + math.log(math.exp(5) + 2)
    assert cosine_loss(z, y, 3).item() == pytest.approx(0.1 * ce, abs=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_uniform_signature_scalar_and_gradient(name):
    z, y = _t(LOGITS, grad=True), torch.tensor(TARGET)
    loss = LOSSES[name](z, y, 3)
    assert loss.dim() == 0
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def _phi(c, kappa):
    return (1 + c) / (1 + kappa * (1 - c)) - 1


def test_tvmf_head_matches_formula_by_hand():
    head = TvMFHead(2, 3, kappa=16.0).double()
    with torch.no_grad():
        # Rows normalise to (1, 0), (0, 1), (-1, 0).
        head.weight.copy_(_t([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    x = _t([[3.0, 4.0]])  # normalises to (0.6, 0.8)
    cos = [0.6, 0.8, -0.6]
    s = 1 + math.log(2)  # learned scale at init: 1 + softplus(0)
    expected = [s * ((1 + c) / (1 + 16 * (1 - c)) - 1) for c in cos]
    # Written out: 1.6 / 7.4 - 1, 1.8 / 4.2 - 1, 0.4 / 26.6 - 1, times s.
    assert expected[0] == pytest.approx(s * (1.6 / 7.4 - 1))
    out = head(x)
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-12)
    # A fixed scale replaces the learned one and adds no parameter.
    fixed = TvMFHead(2, 3, kappa=16.0, scale=10.0).double()
    with torch.no_grad():
        fixed.weight.copy_(head.weight)
    assert fixed(x)[0].tolist() == pytest.approx([10 * _phi(c, 16) for c in cos], abs=1e-12)
    assert [n for n, _ in fixed.named_parameters()] == ["weight"]


def test_tvmf_similarity_bounds_and_endpoints():
    for kappa in (0.0, 1.0, 16.0, 64.0):
        assert tvmf_similarity(torch.tensor(1.0), kappa).item() == pytest.approx(1.0)
        assert tvmf_similarity(torch.tensor(-1.0), kappa).item() == pytest.approx(-1.0)
    # kappa = 0 is the plain cosine.
    c = torch.linspace(-1, 1, 11, dtype=torch.float64)
    assert torch.allclose(tvmf_similarity(c, 0.0), c)


def test_tvmf_head_output_bounded_by_scale():
    torch.manual_seed(0)
    head = TvMFHead(8, 5, kappa=16.0, scale=7.0)
    out = head(100 * torch.randn(64, 8))
    assert out.abs().max() <= 7.0 + 1e-5
    # Feature equal to a class row: phi(1) = 1; opposite: phi(-1) = -1.
    w = head.weight.detach()
    assert head(w[:1])[0, 0].item() == pytest.approx(7.0, abs=1e-5)
    assert head(-w[:1])[0, 0].item() == pytest.approx(-7.0, abs=1e-5)


def test_tvmf_gradients_reach_features_weights_and_scale():
    torch.manual_seed(0)
    head = TvMFHead(4, 3)
    x = torch.randn(6, 4, requires_grad=True)
    tvmf_loss(head(x), torch.tensor([0, 1, 2, 0, 1, 2]), 3).backward()
    for g in (x.grad, head.weight.grad, head.scale_raw.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_make_head_kinds_and_tvmf_head_is_never_prunable():
    lin, tv = make_head("linear", 16, 10), make_head("tvmf", 16, 10)
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (10, 16)
    assert isinstance(tv, TvMFHead) and tv.weight.shape == (10, 16)
    with pytest.raises(ValueError, match="unknown head"):
        make_head("mlp", 16, 10)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=8, width=0.125)
    model.fc = make_head("tvmf", model.fc.in_features, 10)
    for prunable in ("conv", "conv+linear"):
        assert "fc.weight" not in prunable_names(model, prunable)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# --- same-layer random masks -------------------------------------------------

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
    out = same_layer_random_masks(imp_masks, _gen(1))
    assert list(out) == list(imp_masks)
    for name, parent in imp_masks.items():
        m = out[name]
        assert m.dtype == torch.bool and m.shape == parent.shape and m.device == parent.device
        assert int(m.sum()) == int(parent.sum()), name
    assert layer_densities(out) == layer_densities(imp_masks)
    assert density(out) == density(imp_masks)


def test_same_layer_masks_move_positions(imp_masks):
    out = same_layer_random_masks(imp_masks, _gen(1))
    for name, parent in imp_masks.items():
        if 0 < int(parent.sum()) < parent.numel():
            assert not torch.equal(out[name], parent), name
    # Random positions: the overlap with the parent's kept weights is about
    # density^2 of the weights, far from the parent's own density.
    kept = sum(int(m.sum()) for m in imp_masks.values())
    both = sum(int((out[n] & imp_masks[n]).sum()) for n in imp_masks)
    assert both < 0.7 * kept


def test_same_layer_masks_deterministic_per_seed(imp_masks):
    a = same_layer_random_masks(imp_masks, _gen(7))
    b = same_layer_random_masks(imp_masks, _gen(7))
    c = same_layer_random_masks(imp_masks, _gen(8))
    assert all(torch.equal(a[n], b[n]) for n in imp_masks)
    assert any(not torch.equal(a[n], c[n]) for n in imp_masks)


def test_same_layer_masks_fully_kept_and_fully_pruned_layers():
    parent = {"a": torch.ones(3, 4, dtype=torch.bool), "b": torch.zeros(5, dtype=torch.bool),
              "c": torch.tensor([[True, False], [False, False]])}
    out = same_layer_random_masks(parent, _gen(0))
    assert out["a"].all() and not out["b"].any() and int(out["c"].sum()) == 1


# --- small-dense width matching ----------------------------------------------

def _resnet18(width: float) -> nn.Module:
    return build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=width)


def test_param_count_and_ticket_count_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(4, 3))
    # conv weight 2*1*3*3 = 18, conv bias 2, BN 2 + 2, linear 4*3 + 3.
    assert param_count(model) == 18 + 2 + 4 + 15
    mask = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    mask.view(-1)[[0, 3, 5, 11, 17]] = True
    assert ticket_param_count(model, {"0.weight": mask}) == 5 + 2 + 4 + 15
    with pytest.raises(ValueError, match="does not match"):
        ticket_param_count(model, {"0.weight": torch.ones(3, dtype=torch.bool)})


def test_matching_width_picks_closest_stair_on_synthetic_staircase():
    # count(width) = 10 * max(1, round(10 * width)): levels 10, 20, ..., 100.
    build = lambda w: nn.Linear(max(1, round(10 * w)), 10, bias=False)
    count = lambda w: param_count(build(w))
    assert count(matching_width(build, 34)) == 30
    assert count(matching_width(build, 36)) == 40
    assert count(matching_width(build, 35)) == 30  # tie: the smaller model
    assert count(matching_width(build, 70)) == 70
    assert matching_width(build, 1) == 0.01 and matching_width(build, 10**6) == 1.0
    # The returned width sits inside its stair with few decimals.
    assert matching_width(build, 70) == pytest.approx(0.7)


@pytest.fixture(scope="module")
def resnet18_tickets():
    """Full-width ResNet-18 and {k: masks at density 0.8**k}. The parameter
    count depends only on how many weights survive, not where, so one
    random pruning step from the previous density stands in for the IMP
    rounds in between (16 rounds on 11M weights would only cost time)."""
    model = _resnet18(1.0)
    masks, prev, g, out = full_masks(model, prunable_names(model)), 0, _gen(0), {}
    for k in (1, 4, 8, 12, 16):
        masks = random_prune(masks, 1 - 0.8 ** (k - prev), g)
        out[k], prev = masks, k
    return model, out


@pytest.mark.parametrize("k", [1, 4, 8, 12, 16])
def test_matching_width_within_one_percent_of_ticket(resnet18_tickets, k):
    model, all_masks = resnet18_tickets
    masks = all_masks[k]
    assert density(masks) == pytest.approx(0.8 ** k, rel=1e-4)
    target = ticket_param_count(model, masks)
    width = matching_width(_resnet18, target)
    achieved = param_count(_resnet18(width))
    assert abs(achieved - target) / target < 0.01, (k, width, target, achieved)
