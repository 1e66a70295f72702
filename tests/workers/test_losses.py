"""Losses and heads of the loss methods: cross-entropy, cosine loss, the t-vMF head, by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers.losses import LOSSES, TvMFHead, cosine_loss, make_head, tvmf_loss, tvmf_similarity
from workers.models import build_model
from workers.pruning import prunable_names

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
