"""The arithmetic of the gain columns (orchestrator/stats.py) against hand
computations: the documented bootstrap draws, the Holm adjustment, the
paired t-test and its power. Pure numpy/scipy, no sweep."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import stats as ST


def hand_bootstrap(counts, cell_id, b):
    """The module docstring's draws, written out one at a time."""
    rng = np.random.Generator(np.random.PCG64([ST.BOOTSTRAP_SEED, int(cell_id, 16)]))
    s = len(counts)
    n = [sum(c) for c in counts]
    pick = rng.integers(0, s, size=(b, s))
    g = np.empty(b)
    for i in range(b):
        total = 0.0
        for j in range(s):
            k = pick[i, j]
            minus, _, plus = rng.multinomial(n[k], [c / n[k] for c in counts[k]])
            total += (plus - minus) / n[k]
        g[i] = total / s
    srt = np.sort(g)

    def percentile(q):  # linear interpolation between order statistics
        h = (b - 1) * q
        lo = math.floor(h)
        return srt[lo] + (h - lo) * (srt[min(lo + 1, b - 1)] - srt[lo])
    tail = min((g <= 0).sum(), (g >= 0).sum())
    return percentile(0.025), percentile(0.975), max(1 / b, min(1.0, 2 * tail / b))


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


@pytest.mark.parametrize("counts", [[(3, 20, 7)], [(3, 20, 7), (5, 30, 1), (0, 12, 2)]])
def test_the_bootstrap_is_the_documented_draws_and_seeded(counts):
    got = ST.paired_bootstrap(counts, CELL, b=400)
    low, high, p = hand_bootstrap(counts, CELL, 400)
    assert (got.low, got.high, got.p_value) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12),
                                                pytest.approx(p))
    assert ST.paired_bootstrap(counts, CELL, b=400) == got
    assert ST.paired_bootstrap(counts, "fedcba9876543210", b=400) != got  # another cell, other draws


def test_zero_width_only_without_a_differing_image():
    same = ST.paired_bootstrap([(0, 40, 0), (0, 35, 0)], CELL, b=1000)
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    # The same gain (+2 images of 40) in both seeds, but from different images: not zero-width.
    moved = ST.paired_bootstrap([(1, 36, 3), (4, 30, 6)], CELL, b=1000)
    assert moved.low < 0.05 < moved.high
    # Every resample on one side: p at its floor, 1/B.
    assert ST.paired_bootstrap([(0, 20, 20)], CELL, b=1000).p_value == pytest.approx(1 / 1000)


def test_image_counts_read_the_packed_bits():
    dense = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    ticket = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=bool)
    pack = [np.packbits(x, bitorder="little").tobytes() for x in (dense, ticket)]
    assert ST.image_counts(pack[0], pack[1], 9) == (2, 4, 3)


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
        assert float(ST.t_power(effect, sd, n)) == pytest.approx(hand_power(effect, sd, n), abs=1e-7)
    # Cohen's table: a paired t-test needs 34 pairs for d = 0.5 at 80% power, alpha 0.05 two-sided.
    assert ST.seeds_needed(0.5, 1.0) == 34
    d = ST.min_detectable(0.03, 5)
    assert hand_power(d, 0.03, 5) == pytest.approx(0.80, abs=1e-6)
    assert math.isnan(ST.min_detectable(0.03, 1)) and math.isnan(ST.min_detectable(0.0, 5))
    assert ST.seeds_needed(0.02, 0.0) is None and ST.seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS
