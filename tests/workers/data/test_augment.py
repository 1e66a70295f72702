"""The batched, on-device augmentations against torchvision.transforms.v2.

Op by op, the batched kernels (workers/data/ops.py) must equal v2's own op on
every image with that image's parameter. Whole pipelines draw their random
choices differently from v2 (per sample on the device instead of from the
global RNG), so those are compared on sample statistics over many images."""
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from workers.data import dataset_info, ops
from workers.data.augment import (
    RANDAUGMENT_OPS,
    AutoAugmentBatched,
    apply_op,
    color_jitter,
    make_augment,
    random_grayscale,
    reference_augment,
)

N = 48


def images(n=N, c=3, size=16, seed=0):
    """Smooth gradients plus noise: real-looking histograms (not uniform noise,
    on which equalize and autocontrast would be near identities)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = ramp[None, None, :, None] * torch.rand(n, c, 1, 1, generator=g) * 200 \
        + ramp[None, None, None, :] * torch.rand(n, c, 1, 1, generator=g) * 55
    noise = torch.randn(n, c, size, size, generator=g) * 12
    return (base + noise + torch.rand(n, c, 1, 1, generator=g) * 40).clamp(0, 255).to(torch.uint8)


def per_image(fn, x, params):
    return torch.stack([fn(x[i], float(params[i])) for i in range(len(x))])


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name,ref,lo,hi", [
    ("brightness", TF.adjust_brightness, 0.0, 2.0),
    ("contrast", TF.adjust_contrast, 0.0, 2.0),
    ("saturation", TF.adjust_saturation, 0.0, 2.0),
    ("sharpness", TF.adjust_sharpness, 0.0, 2.0),
    ("hue", TF.adjust_hue, -0.5, 0.5),
    ("solarize", TF.solarize, 0.0, 255.0),
])
def test_factor_ops_equal_torchvision_per_image(name, ref, lo, hi, c):
    x = images(c=c)
    f = torch.empty(N).uniform_(lo, hi, generator=torch.Generator().manual_seed(1))
    assert torch.equal(getattr(ops, name)(x, f), per_image(ref, x, f))


@pytest.mark.parametrize("c", [1, 3])
def test_parameterless_ops_equal_torchvision(c):
    x = images(c=c)
    bits = torch.randint(0, 9, (N,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(ops.posterize(x, bits), per_image(lambda im, b: TF.posterize(im, int(b)), x, bits))
    assert torch.equal(ops.autocontrast(x), TF.autocontrast(x))
    assert torch.equal(ops.equalize(x), torch.stack([TF.equalize(im) for im in x]))
    assert torch.equal(ops.invert(x), TF.invert(x))
    flat = torch.full((2, c, 16, 16), 77, dtype=torch.uint8)  # constant images: both stay as they are
    assert torch.equal(ops.autocontrast(flat), flat) and torch.equal(ops.equalize(flat), flat)
    gray = ops.grayscale3(x)
    assert torch.equal(gray, torch.stack([TF.rgb_to_grayscale(im, num_output_channels=c) for im in x]))


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("name", RANDAUGMENT_OPS + ["Invert"])
def test_policy_ops_equal_v2s_own_op_dispatch(name, size):
    """apply_op(name, batch, m) vs v2's `_apply_image_or_video_transform` (what
    AutoAugment/RandAugment call), at magnitudes of both signs."""
    x = images(size=size)
    space = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331 * size, "TranslateY": 150 / 331 * size,
             "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    g = torch.Generator().manual_seed(3)
    if name in space:
        m = torch.empty(N).uniform_(-space[name], space[name], generator=g)
    elif name == "Posterize":
        m = torch.randint(4, 9, (N,), generator=g).float()
    elif name == "Solarize":
        m = torch.rand(N, generator=g)
    else:
        m = torch.zeros(N)
    aa = v2.RandAugment()
    ref = torch.stack([aa._apply_image_or_video_transform(x[i], name, float(m[i]), interpolation=aa.interpolation,
                                                          fill=aa._fill) for i in range(N)])
    out = apply_op(name, x, m)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, ref)


def _stats(out: torch.Tensor, inp: torch.Tensor) -> dict:
    o, i = out.float(), inp.float()
    gray = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    return {"mean": o.mean((0, 2, 3)), "std": o.std((0, 2, 3)), "change": (o - i).abs().mean(),
            "zeros": (out == 0).float().mean(), "gray": gray.float().mean(),
            "changed_images": ((o - i).abs().amax((1, 2, 3)) > 0).float().mean()}


@pytest.mark.parametrize("name", ["contrast", "auto", "rand"])
def test_pipelines_match_torchvision_statistics(name):
    info = dataset_info("cifar10")
    n = 1500
    x = images(n=n, size=32, seed=5)
    fast = make_augment(name, info)(x, torch.Generator().manual_seed(0))
    ref = reference_augment(name, info)(x, torch.Generator().manual_seed(0))
    a, b = _stats(fast, x), _stats(ref, x)
    assert (a["mean"] - b["mean"]).abs().max() < 3.0, (a["mean"], b["mean"])
    assert (a["std"] - b["std"]).abs().max() < 3.0, (a["std"], b["std"])
    for key, tol in (("change", 2.5), ("zeros", 0.01), ("gray", 0.03), ("changed_images", 0.03)):
        assert abs(float(a[key]) - float(b[key])) < tol, (key, a[key], b[key])


def test_color_jitter_probabilities():
    x = images(n=4000, seed=6)
    g = torch.Generator().manual_seed(0)
    jittered = (color_jitter(x, g) != x).flatten(1).any(1).float().mean()
    assert abs(float(jittered) - 0.8) < 0.03  # RandomApply p=0.8 (a factor draw is never exactly 1)
    gray = random_grayscale(x, g)
    picked = (gray[:, 0] == gray[:, 1]).flatten(1).all(1) & (gray[:, 1] == gray[:, 2]).flatten(1).all(1)
    assert abs(float(picked.float().mean()) - 0.2) < 0.03


def test_autoaugment_uses_the_datasets_policy():
    cifar = AutoAugmentBatched("cifar10", 32, 32)
    imagenet = AutoAugmentBatched("imagenet", 32, 32)
    assert "Invert" in cifar.names and "TranslateY" in cifar.names
    assert "TranslateY" not in imagenet.names and len(cifar.op) == len(imagenet.op) == 25


def test_batched_pipelines_never_touch_the_host_rng_or_the_global_rng():
    info = dataset_info("cifar10")
    x = images(size=32)
    state = torch.get_rng_state()
    for name in ("contrast", "auto", "rand"):
        make_augment(name, info)(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


def _bright_column(info, n=400):
    """n copies of an image whose only bright pixel sits in column 1: mirroring
    sends it to the other half of the image, a crop shift by at most padding."""
    S = info.image_size
    x = torch.zeros(n, info.channels, S, S, dtype=torch.uint8)
    x[:, :, S // 2, 1] = 255
    return x


def _columns(out):
    return set(torch.nonzero(out.amax(dim=(1, 2)) == 255)[:, 1].tolist())


@pytest.mark.parametrize("name", ["basic", "contrast", "auto", "rand"])
def test_augmentations_never_mirror_datasets_whose_labels_flips_break(name):
    for dataset in ("digits", "clamm"):
        info = dataset_info(dataset)
        assert info.flips == ()
    info = dataset_info("digits")
    out = make_augment(name, info)(_bright_column(info), torch.Generator().manual_seed(0))
    if name in ("basic", "contrast"):
        assert max(_columns(out)) <= 1 + info.image_size // 8
    else:
        # Their translations (< 45% of the width), rotations (<= 30 degrees) and shears move
        # the pixel by less than a mirror would; images where an op lit more pixels (invert,
        # equalize) say nothing about position and are left out.
        single = (out == 255).flatten(1).sum(1) == 1
        assert single.sum() > 50
        assert max(_columns(out[single])) < info.image_size - 2
    ref = reference_augment("basic", info)(_bright_column(info, 100), torch.Generator().manual_seed(0))
    assert max(_columns(ref)) <= 1 + info.image_size // 8  # torchvision's own pipeline honours it too


def test_basic_still_mirrors_cifar():
    info = dataset_info("cifar10")
    assert "horizontal" in info.flips
    out = make_augment("basic", info)(_bright_column(info), torch.Generator().manual_seed(0))
    cols = _columns(out)
    S, pad = info.image_size, info.image_size // 8
    assert min(cols) <= 1 + pad and max(cols) >= S - 2 - pad  # both the plain and the mirrored crops occur
