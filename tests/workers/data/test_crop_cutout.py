"""The geometric augmentations: crop + flip against torchvision, cutout, sizes, determinism."""
from __future__ import annotations

import pytest
import torch

from workers.data import AUGMENTATIONS, DataError, dataset_info, make_augment
from workers.data.augment import cutout, cutout_for, padding_for, random_crop_flip, reference_transform


def _batch(info, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                         dtype=torch.uint8)


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augment_shape_dtype_device_and_determinism(dataset, name):
    info = dataset_info(dataset)
    x = _batch(info)
    aug = make_augment(name, info)
    before = torch.get_rng_state()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is left alone
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert torch.equal(a, b)
    if name == "none":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(a, c) and not torch.equal(a, x)
    with pytest.raises(DataError):
        aug(x.float(), torch.Generator())


def test_sizes_follow_resolution():
    assert (padding_for(32), cutout_for(32)) == (4, 16)
    assert (padding_for(8), cutout_for(8)) == (1, 4)


def _decode(out, pad):
    """Recover (dy, dx, flip) of each crop of the coordinate image from its centre pixel."""
    H = out.shape[-1]
    r = out[:, 0, H // 2, H // 2].long() - 1  # source row of the centre pixel
    cc = out[:, 1, H // 2, H // 2].long() - 1  # source column
    right = out[:, 1, H // 2, H // 2 + 1].long() - 1
    flip = right < cc
    dy = r - H // 2 + pad
    dx = torch.where(flip, cc - (H - 1 - H // 2), cc - H // 2) + pad
    return dy, dx, flip


def test_basic_matches_torchvision_reference():
    info = dataset_info("cifar10")
    H, pad, n = 32, padding_for(32), 2000
    ar = torch.arange(1, H + 1, dtype=torch.uint8)
    # channel 0 = row+1, channel 1 = col+1, channel 2 = a texture: every pixel says where it came from.
    img = torch.stack([ar[:, None].expand(H, H), ar[None, :].expand(H, H),
                       torch.randint(0, 256, (H, H), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)])
    fast = make_augment("basic", info)(img.expand(n, 3, H, H).contiguous(), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    basic = reference_transform("basic", info)  # torchvision's own pipeline (global RNG)
    ref = torch.stack([basic(img) for _ in range(n)])

    for out in (fast, ref):
        dy, dx, flip = _decode(out, pad)
        assert abs(flip.float().mean().item() - 0.5) < 0.05
        for d in (dy, dx):  # offsets uniform over 0..2*pad inclusive (9 values at 32 px)
            counts = torch.bincount(d, minlength=2 * pad + 1)
            assert len(counts) == 2 * pad + 1
            assert (counts - n / (2 * pad + 1)).abs().max() < 70

    # The fast path is exactly crop-of-zero-padded-then-flip for every sample.
    dy, dx, flip = _decode(fast, pad)
    padded = torch.nn.functional.pad(img, (pad,) * 4)
    for i in range(0, n, 97):
        crop = padded[:, dy[i]:dy[i] + H, dx[i]:dx[i] + H]
        assert torch.equal(fast[i], crop.flip(-1) if flip[i] else crop)

    # And on average it looks like torchvision's (zero borders and flips included).
    diff = (fast.float().mean(0) - ref.float().mean(0)).abs()
    assert diff.mean() < 1.5 and diff.max() < 12


def test_basic_on_digits_moves_by_at_most_one_pixel():
    info = dataset_info("digits")
    x = _batch(info, n=400)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding_for(8))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(0, 400, 37):
        ok = [torch.equal(out[i], c) for dy in range(3) for dx in range(3)
              for c in (padded[i, :, dy:dy + 8, dx:dx + 8], padded[i, :, dy:dy + 8, dx:dx + 8].flip(-1))]
        assert any(ok)


def test_cutout_zeroes_one_clipped_square():
    x = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out = cutout(x, torch.Generator().manual_seed(0), 16)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    full = clipped = 0
    for m in zero[:, 0]:
        rows, cols = m.any(1), m.any(0)
        assert torch.equal(m, rows[:, None] & cols[None, :])  # a rectangle
        rr, cc = rows.nonzero().flatten(), cols.nonzero().flatten()
        assert len(rr) == rr[-1] - rr[0] + 1 and len(cc) == cc[-1] - cc[0] + 1  # contiguous
        h, w = len(rr), len(cc)
        assert 8 <= h <= 16 and 8 <= w <= 16  # the centre is inside, so at least half survives
        full += (h, w) == (16, 16)
        clipped += (h, w) != (16, 16)
    assert full > 100 and clipped > 100
    assert torch.equal(out[~zero], x[~zero])
