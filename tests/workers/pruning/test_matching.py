"""Small-dense width matching: parameter counts by hand, the closest width."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models import build_model
from workers.pruning import density, full_masks, prunable_names, random_prune
from workers.pruning.matching import matching_width, param_count, ticket_param_count


def _gen(seed):
    return torch.Generator().manual_seed(seed)


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
