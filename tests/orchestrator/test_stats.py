"""The arithmetic of the gain columns (orchestrator/stats.py) against hand
computations: the documented bootstrap draws, the Holm adjustment, the
paired t-test and its power. Pure numpy/scipy, no sweep."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import power as PW
from orchestrator import stats as ST


def hand_bootstrap(d, cell_id, b):
    """The module docstring's draws, written out one resample at a time, from the
    per-seed ticket-minus-dense correctness rows `d` (S x N, values -1/0/+1)."""
    d = np.asarray(d, dtype=np.int8)
    s, n = d.shape
    patterns = sorted({tuple(col) for col in d.T})
    counts = [sum(1 for col in d.T if tuple(col) == p) for p in patterns]
    rng = np.random.Generator(np.random.PCG64([ST.BOOTSTRAP_SEED, int(cell_id, 16)]))
    pick = rng.integers(0, s, size=(b, s))
    if 3 * len(patterns) <= n:
        k = rng.multinomial(n, [c / n for c in counts], size=b)
    else:  # the images one by one, ordered by pattern
        idx = rng.integers(0, n, size=(b, n), dtype=np.int32)
        first = np.cumsum([0] + counts)
        k = np.array([[int(((row >= first[p]) & (row < first[p + 1])).sum()) for p in range(len(patterns))]
                      for row in idx])
    g = np.empty(b)
    for i in range(b):
        g[i] = sum(k[i, p] * np.mean([patterns[p][j] for j in pick[i]]) for p in range(len(patterns))) / n
    gain = float(d.mean())
    if s == 1:
        srt = np.sort(g)

        def percentile(q):  # linear interpolation between order statistics
            h = (b - 1) * q
            lo = math.floor(h)
            return srt[lo] + (h - lo) * (srt[min(lo + 1, b - 1)] - srt[lo])
        tail = min((g <= 0).sum(), (g >= 0).sum())
        return percentile(0.025), percentile(0.975), max(1 / b, min(1.0, 2 * tail / b))
    per_seed = d.mean(axis=1)
    v_seed = np.var(per_seed, ddof=1) / s
    var = np.var(g, ddof=1) + v_seed / s
    v_img = max(var - v_seed, 0.0)
    df = var ** 2 / (v_seed ** 2 / (s - 1) + v_img ** 2 / (n - 1))
    half = sps.t.ppf(0.975, df) * math.sqrt(var)
    p = 2 * sps.t.sf(abs(gain) / math.sqrt(var), df)
    if v_seed > 0:  # never narrower than the seed-level t interval, p never below its test's
        half = max(half, sps.t.ppf(0.975, s - 1) * math.sqrt(v_seed))
        p = max(p, 2 * sps.t.sf(abs(gain) / math.sqrt(v_seed), s - 1))
    return gain - half, gain + half, p


def rows(*seeds):
    """Per-seed correctness rows from (minus, same, plus) image counts in that order."""
    return [[-1] * m + [0] * z + [1] * p for m, z, p in seeds]


def boot(d, cell=None, b=400):
    return ST.paired_bootstrap(*ST.image_patterns([_bits(r) for r in d], len(d[0])), cell or CELL, b=b)


def _bits(row):
    """(dense, ticket) test_correct bits giving ticket-minus-dense `row`."""
    row = np.asarray(row)
    dense, ticket = row < 0, row > 0  # -1: dense right only; +1: ticket right only; 0: both wrong
    return tuple(np.packbits(x, bitorder="little").tobytes() for x in (dense, ticket))


def hand_power(effect, sd, n, alpha=0.05):
    """Power of the two-sided paired t-test from its definition: T = (Z + nc) / sqrt(V / df),
    Z standard normal, V chi-square(df), integrated over V."""
    from scipy import integrate
    df, nc = n - 1, effect * math.sqrt(n) / sd
    crit = sps.t.ppf(1 - alpha / 2, df)

    def rejects(v):
        c = crit * math.sqrt(v / df)
        return (sps.norm.sf(c - nc) + sps.norm.cdf(-c - nc)) * sps.chi2.pdf(v, df)
    return integrate.quad(rejects, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


CELL = "0123456789abcdef"


@pytest.mark.parametrize("d", [rows((3, 20, 7)),
                               [[-1, 0, 1, 1, 0, 0, 1, -1, 0, 1], [0, 0, 1, 0, 0, -1, 1, 0, 0, 0],
                                [1, 0, 1, 1, -1, 0, 0, 0, 0, 1]]])
def test_the_bootstrap_is_the_documented_draws_and_seeded(d):
    got = boot(d)
    low, high, p = hand_bootstrap(d, CELL, 400)
    assert (got.low, got.high, got.p_value) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12),
                                                pytest.approx(p, abs=1e-12))
    assert boot(d) == got
    assert boot(d, "fedcba9876543210") != got  # another cell, other draws


def test_zero_width_only_without_a_differing_image():
    same = boot([[0] * 40, [0] * 40], b=1000)
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    # The same gain (+2 images of 40) in both seeds, but from different images: not zero-width.
    moved = boot(rows((1, 36, 3)) + [[1, 1, 1, -1] + [0] * 36], b=1000)
    assert moved.low < 0.05 < moved.high and moved.high - moved.low > 0.01
    # Every resample on one side: p at its floor, 1/B.
    assert boot(rows((0, 20, 20)), b=1000).p_value == pytest.approx(1 / 1000)


def test_with_no_image_noise_the_interval_is_the_seed_level_t_interval():
    # Each seed flips every image the same way: resampling images cannot move a
    # seed's gain, so only the seeds' spread is left, and the t interval over seeds.
    d = [[1] * 20, [0] * 20, [1] * 20, [-1] * 20]
    got = boot(d, b=4000)
    gains = [1.0, 0.0, 1.0, -1.0]
    low, high = ST.t_interval(np.mean(gains), np.std(gains, ddof=1), 4)
    assert (got.low, got.high) == (pytest.approx(low, abs=0.03), pytest.approx(high, abs=0.03))


def test_image_patterns_read_the_packed_bits():
    dense = np.array([[1, 1, 0, 0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=bool)
    ticket = np.array([[1, 0, 1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=bool)
    pack = [tuple(np.packbits(x, bitorder="little").tobytes() for x in (dn, t)) for dn, t in zip(dense, ticket)]
    patterns, counts = ST.image_patterns(pack, 9)
    # Per image (seed 0, seed 1): (-1,0) x2, (0,0) x4, (1,-1) x1, (1,0) x2.
    assert patterns.tolist() == [[-1, 0], [0, 0], [1, -1], [1, 0]] and counts.tolist() == [2, 4, 1, 2]


def test_holm_by_hand():
    # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> 0.06 (never below the previous).
    got = ST.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[4])
    assert ST.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0]) and len(ST.holm([])) == 0


def test_t_test_and_share_of_wins():
    gains = [0.02, 0.05, -0.01, 0.04]
    mean, sd = np.mean(gains), np.std(gains, ddof=1)
    assert ST.t_test(mean, sd, 4) == pytest.approx(sps.ttest_1samp(gains, 0.0).pvalue)
    assert math.isnan(ST.t_test(mean, sd, 1)) and math.isnan(ST.t_test(0.01, 0.0, 4))
    assert ST.prob_better([0.1, 0.0, -0.2, 0.3]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert math.isnan(ST.prob_better([]))


def test_power_of_the_paired_t_test_by_hand():
    for effect, sd, n in ((0.02, 0.03, 5), (0.01, 0.02, 12), (0.05, 0.02, 2)):
        assert float(PW.t_power(effect, sd, n)) == pytest.approx(hand_power(effect, sd, n), abs=1e-7)
    # Cohen's table: a paired t-test needs 34 pairs for d = 0.5 at 80% power, alpha 0.05 two-sided.
    assert PW.seeds_needed(0.5, 1.0) == 34
    d = PW.min_detectable(0.03, 5)
    assert hand_power(d, 0.03, 5) == pytest.approx(0.80, abs=1e-6)
    assert math.isnan(PW.min_detectable(0.03, 1)) and math.isnan(PW.min_detectable(0.0, 5))
    assert PW.seeds_needed(0.02, 0.0) is None and PW.seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS


def _random_cell(gen, seeds, n=300):
    """Per-seed rows with a shared per-image part and a per-seed shift."""
    own = gen.choice([-1, 0, 1], p=[0.2, 0.55, 0.25], size=n)
    out = []
    for _ in range(seeds):
        up = float(np.clip(0.25 + gen.normal(0, 0.1), 0.0, 0.75))
        fresh = gen.choice([-1, 0, 1], p=[0.2, 0.8 - up, up], size=n)
        out.append(np.where(gen.random(n) < 0.5, own, fresh))
    return np.asarray(out, dtype=np.int8)


def test_chunked_resamples_are_the_same_draws_bit_for_bit():
    """Any chunk size (one resample at a time included) gives the same g, and the
    whole bootstrap the same bounds: the draws are taken in the documented order and
    the sums are exact."""
    gen = np.random.default_rng(7)
    branches = set()
    for seeds, n in ((1, 300), (3, 300), (6, 300), (6, 40)):
        m, c = np.unique(_random_cell(gen, seeds, n).T, axis=0, return_counts=True)
        branches.add(3 * len(c) > n)  # the images drawn one by one, or as a multinomial
        whole = ST.resampled_gains(m, c, np.random.Generator(np.random.PCG64([1, 2])), 500, chunk_bytes=1 << 40)
        for chunk in (1, 8 * len(c) * 3, 8 * len(c) * 77):
            got = ST.resampled_gains(m, c, np.random.Generator(np.random.PCG64([1, 2])), 500, chunk_bytes=chunk)
            assert got.tobytes() == whole.tobytes(), (seeds, chunk)
        # ... and the documented formula, one resample at a time, within float rounding
        rng = np.random.Generator(np.random.PCG64([1, 2]))
        pick = rng.integers(0, seeds, size=(500, seeds))
        if 3 * len(c) <= n:
            k = rng.multinomial(n, c / n, size=500)
        else:
            idx = rng.integers(0, n, size=(500, n), dtype=np.int32)
            k = np.stack([np.bincount(np.repeat(np.arange(len(c)), c)[row], minlength=len(c)) for row in idx])
        want = (k * m.astype(float)[:, pick].mean(axis=2).T).sum(axis=1) / c.sum()
        np.testing.assert_allclose(whole, want, rtol=0, atol=1e-15)
        key = (m.tobytes(), m.shape, tuple(int(x) for x in c), (3, 4), 500, 0.95)
        assert ST._bootstrap.__wrapped__(*key, chunk_bytes=64) == ST._bootstrap.__wrapped__(*key)
    assert branches == {False, True}


def test_never_narrower_than_the_seed_level_t_interval():
    """Where the seeds' share dominates, the Welch-Satterthwaite degrees of freedom
    can exceed S - 1; the interval then falls back to the seed-level t interval,
    and its p-value to the t-test's. Checked over random cells of 2 to 6 seeds."""
    gen = np.random.default_rng(11)
    wider = 0
    for r in range(60):
        seeds = 2 + r % 5
        d = _random_cell(gen, seeds)
        got = boot(d.tolist(), cell=f"{r:016x}", b=300)
        gains = d.mean(axis=1)
        low, high = ST.t_interval(gains.mean(), gains.std(ddof=1), seeds)
        if low is None:
            continue
        assert got.low <= low + 1e-12 and got.high >= high - 1e-12, (r, got, low, high)
        assert got.p_value >= ST.t_test(gains.mean(), gains.std(ddof=1), seeds) - 1e-12
        wider += got.high - got.low > high - low + 1e-9
    assert 0 < wider < 60  # both sides occur: image noise sometimes widens it beyond t


def _crossed_cell(gen, seeds, n=300, shared=0.5, shift=0.04, p=(0.20, 0.55, 0.25)):
    """A simulated cell of bench/intervals.py (a fresh test split of n images each
    time; true mean gain p[2] - p[0]): its patterns and counts."""
    from bench.intervals import _crossed
    return _crossed(gen, seeds, n_images=n, shared=shared, shift=shift, p=p)


def test_the_recommended_seeds_reach_the_stated_power_of_the_default_interval():
    """Plan from a pilot cell's components, then run the default interval itself on
    fresh simulated cells (new test splits) with that many seeds: it rejects as
    often as the plan says, within a few points (Monte Carlo sd ~2.5 points here).
    The seed-level answer promises fewer seeds than this test needs."""
    gen = np.random.default_rng(3)
    effect, p = 0.06, (0.19, 0.56, 0.25)  # the cells' true mean gain: 0.25 - 0.19
    comp = PW.components(*_crossed_cell(gen, 60, n=400, p=p))
    n, reachable = PW.two_level_seeds(effect, comp)
    assert reachable and n is not None and n > PW.seeds_needed(effect, comp.seed_sd)
    predicted = PW.two_level_power(effect, comp, n)
    assert predicted >= PW.POWER > PW.two_level_power(effect, comp, n - 1)
    reps = 250
    hits = 0
    for r in range(reps):
        m, c = _crossed_cell(gen, n, n=400, p=p)
        hits += ST._bootstrap.__wrapped__(m.tobytes(), m.shape, tuple(int(x) for x in c), (r, 9), 1000,
                                          0.95).p_value < ST.ALPHA
    assert abs(hits / reps - predicted) < 0.08, (hits / reps, predicted, n)


def test_a_gain_below_the_split_s_own_noise_is_not_reachable():
    """With 60 test images the split's images alone move the mean gain by more
    than 0.02: no seed count gives the default interval 80% power against 0.02."""
    gen = np.random.default_rng(4)
    comp = PW.components(*_crossed_cell(gen, 8, n=60, shared=0.9))
    assert comp.split_sd > 0.02
    assert PW.two_level_seeds(0.02, comp) == (None, False)
    assert PW.split_limit(0.02, comp) < PW.POWER
    assert PW.two_level_seeds(0.5, comp)[1]  # a large gain still is
