"""Linear CKA and linear-probe transfer as pure functions."""
import numpy as np
import pytest
import torch

from workers.analysis import (
    DEFAULT_LAYERS,
    HeadRecipe,
    cka_between,
    fit_linear_head,
    layer_features,
    linear_cka,
    linear_probe,
    penultimate_features,
)
from workers.data import DatasetInfo, Split
from workers.models import build_model

INFO = DatasetInfo("synthetic", 10, 1, 8, (0.5,), (0.25,), "cifar10")


def tiny(seed: int, arch: str = "resnet18") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=10, in_channels=1, image_size=8, width=0.125)


def images(n: int, seed: int, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def numpy_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """The formula written independently: HSIC with an explicit centring
    matrix H on linear kernels, CKA = tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_cka_invariances():
    r = rng(0)
    X = torch.from_numpy(r.standard_normal((50, 8)))
    Q, _ = np.linalg.qr(r.standard_normal((8, 8)))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ torch.from_numpy(Q)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, 3 * X + 7.0) == pytest.approx(1.0, abs=1e-12)
    # A per-column offset too (the centring must be per column, not global).
    assert linear_cka(X + torch.arange(8.0), X) == pytest.approx(1.0, abs=1e-12)
    # float32 input is computed in float64 all the same.
    assert linear_cka(X.float(), 3 * X.float() + 7.0) == pytest.approx(1.0, abs=1e-6)


def test_cka_unrelated_is_below_one_and_symmetric():
    r = rng(1)
    X = torch.from_numpy(r.standard_normal((60, 8)))
    Y = torch.from_numpy(r.standard_normal((60, 5)))
    c = linear_cka(X, Y)
    assert 0.0 <= c < 0.5
    assert linear_cka(Y, X) == pytest.approx(c, abs=1e-12)
    # Not invariant to a non-isotropic scaling of the columns.
    Z = X * torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert linear_cka(X, Z) < 0.99
    # Partly related: strictly between.
    W = X[:, :4] + 0.5 * torch.from_numpy(r.standard_normal((60, 4)))
    assert 0.2 < linear_cka(X, W) < 0.95


def test_cka_matches_numpy_formula():
    r = rng(2)
    X = r.standard_normal((30, 6)) + 3.0
    Y = X @ r.standard_normal((6, 4)) + r.standard_normal((30, 4))
    Y = np.maximum(Y, 0) - 2.0
    want = numpy_cka(X, Y)
    assert 0.1 < want < 0.99  # a non-trivial example
    for method in ("auto", "feature", "gram"):
        got = linear_cka(torch.from_numpy(X), torch.from_numpy(Y), method=method)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12), method


@pytest.mark.parametrize("n,p,q", [(10, 40, 25), (80, 5, 3), (12, 12, 300)])
def test_cka_gram_form_equals_feature_form(n, p, q):
    r = rng(n + p + q)
    X = torch.from_numpy(r.standard_normal((n, p)))
    Y = torch.from_numpy(np.tanh(r.standard_normal((n, q)) + X.numpy()[:, :1]))
    f = linear_cka(X, Y, method="feature")
    g = linear_cka(X, Y, method="gram")
    assert 0.0 < f < 1.0
    assert g == pytest.approx(f, rel=1e-10)
    assert linear_cka(X, Y) == pytest.approx(f, rel=1e-10)


def test_cka_bad_inputs():
    X = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(X, X[:9])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(X.view(10, 3, 1), X)
    with pytest.raises(ValueError, match="method"):
        linear_cka(X, X, method="rbf")
    assert np.isnan(linear_cka(torch.ones(10, 3), X))  # no variance: undefined


@pytest.fixture(scope="module")
def models():
    return tiny(0), tiny(1)


@pytest.fixture(scope="module")
def x64():
    return images(64, seed=0)


def test_layer_features_shapes_and_repeatable(models, x64):
    m = models[0]
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]
    f = layer_features(m, x64, INFO, names)
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "stem": (64, 8), "layer1": (64, 8), "layer2": (64, 16), "layer3": (64, 32),
        "layer4": (64, 64), "pool": (64, 64)}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in f.values())
    g = layer_features(m, x64, INFO, names, batch=7)  # other batching: same features
    for k in names:
        assert torch.allclose(f[k], g[k], atol=1e-5), k
    again = layer_features(m, x64, INFO, names)
    assert all(torch.equal(f[k], again[k]) for k in names)
    # GAP of layer4 is exactly what the classifier sees.
    assert torch.allclose(f["pool"], penultimate_features(m, x64, INFO), atol=1e-6)
    # Unpooled: flattened maps (8x8 -> 4x4 -> 2x2 -> 1x1 through the stages).
    u = layer_features(m, x64, INFO, ["stem", "layer2", "layer4"], pool=False)
    assert {k: tuple(v.shape) for k, v in u.items()} == {
        "stem": (64, 8 * 8 * 8), "layer2": (64, 16 * 4 * 4), "layer4": (64, 64)}
    assert torch.allclose(u["stem"].view(64, 8, 64).mean(2), f["stem"], atol=1e-5)


def test_layer_features_leave_the_model_as_found(x64):
    m = tiny(3)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    layer_features(m, x64, INFO, ["layer1", "layer3.1"])
    # Eval mode inside (BN running stats untouched), train flags restored.
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(mod.training for mod in m.modules())
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())


def test_layer_features_unknown_layer(models, x64):
    with pytest.raises(ValueError, match=r"layer9.*top-level children.*layer4"):
        layer_features(models[0], x64, INFO, ["layer1", "layer9"])


def test_cka_between_self_and_other_seed(models, x64):
    a, b = models
    same = cka_between(a, a, x64, INFO)
    assert [r["layer"] for r in same] == DEFAULT_LAYERS
    assert all(abs(r["cka"] - 1.0) < 1e-6 for r in same), same
    other = cka_between(a, b, x64, INFO)
    assert [r["layer"] for r in other] == DEFAULT_LAYERS
    assert all(0.0 <= r["cka"] < 0.99 for r in other), other
    # A copy with the same weights is "the same" model.
    c = tiny(0)
    assert all(abs(r["cka"] - 1.0) < 1e-6 for r in cka_between(a, c, x64, INFO))


def test_cka_between_skips_missing_layers(models, x64):
    vgg = tiny(0, "vgg16")
    with pytest.raises(ValueError, match=r"none of the layers.*'features'.*'pool'"):
        cka_between(vgg, vgg, x64, INFO)
    rows = cka_between(models[0], vgg, x64, INFO, layers=["stem", "pool", "layer4"])
    assert [r["layer"] for r in rows] == ["pool"]
    assert 0.0 <= rows[0]["cka"] <= 1.0


PROTOS = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(123),
                       dtype=torch.uint8)


def separable(n: int, seed: int) -> Split:
    """Class k = a fixed random 8x8 prototype k + uniform noise in [-20, 20]:
    a frozen random ResNet's features separate these linearly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    noise = torch.randint(-20, 21, (n, 1, 8, 8), generator=g)
    return Split((PROTOS[y].int() + noise).clamp(0, 255).to(torch.uint8), y)


@pytest.fixture(scope="module")
def target():
    return separable(100, seed=1), separable(100, seed=2)


def test_linear_probe_separable_and_backbone_frozen(target):
    train, test = target
    m = tiny(0)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    acc = linear_probe(m, train, test, INFO)
    assert acc > 0.9
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(mod.training for mod in m.modules())
    # Same again (same seed) -> same accuracy.
    assert linear_probe(m, train, test, INFO) == acc


def test_linear_probe_random_test_labels_near_chance(target):
    train, test = target
    shuffled = Split(test.x, torch.randint(0, 10, (len(test),),
                                           generator=torch.Generator().manual_seed(5)))
    acc = linear_probe(tiny(0), train, shuffled, INFO)
    assert acc < 0.3


def test_fit_linear_head_deterministic_for_a_seed(target):
    f = penultimate_features(tiny(0), target[0].x, INFO)
    y = target[0].y
    h1, m1, s1 = fit_linear_head(f, y, 10, HeadRecipe(epochs=3, batch=16, seed=4))
    h2, m2, s2 = fit_linear_head(f, y, 10, HeadRecipe(epochs=3, batch=16, seed=4))
    h3, _, _ = fit_linear_head(f, y, 10, HeadRecipe(epochs=3, batch=16, seed=5))
    assert torch.equal(h1.weight, h2.weight) and torch.equal(h1.bias, h2.bias)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)
    assert not torch.equal(h1.weight, h3.weight)  # the seed orders the minibatches
    with pytest.raises(ValueError, match="labels"):
        fit_linear_head(f, y, 5)


def test_linear_probe_other_resolution_and_bad_channels(target):
    m = tiny(0)
    g = torch.Generator().manual_seed(7)
    big = Split(torch.randint(0, 256, (20, 1, 16, 16), generator=g, dtype=torch.uint8),
                torch.arange(20) % 4)
    acc = linear_probe(m, big, big, INFO, recipe=HeadRecipe(epochs=2))  # 16 px on a model built for 8 px
    assert 0.0 <= acc <= 1.0
    rgb = Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4))
    with pytest.raises(ValueError, match="channels"):
        linear_probe(m, rgb, rgb, INFO)
