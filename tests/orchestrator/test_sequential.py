"""The anytime-valid confidence sequence behind adaptive seeds (orchestrator/sequential.py).

The simulation is the point: 2,000 cells with no true gain, judged after every
batch of seeds (3, 5, ..., 15) and stopped at the first batch that resolves
them. Under the confidence sequence the share wrongly resolved stays at or
below alpha; the same stopping with the ordinary fixed-n t interval claims a
gain far more often: the test below fails with it."""
import math

import numpy as np
import pytest
from scipy import integrate, stats as sps

from orchestrator import sequential as seq

from bench.adaptive_study import (SIM_MAX as MOST, SIM_START as START, SIM_STEP as STEP, anytime, fixed_n_t,
                                  null_accuracies, null_gaussian, share_resolved as share_wrongly_resolved)

ALPHA = seq.ALPHA
N_CELLS = 2000  # bench/adaptive_study.py's simulation, whose numbers the README quotes


@pytest.mark.parametrize("null", [null_gaussian, null_accuracies])
def test_adaptive_stopping_keeps_false_claims_at_or_below_alpha(null):
    gains = null(np.random.default_rng(20261207), N_CELLS)
    share = share_wrongly_resolved(gains, anytime)
    assert share <= ALPHA, f"{share:.3f} of {N_CELLS} null cells resolved under the confidence sequence"


@pytest.mark.parametrize("null", [null_gaussian, null_accuracies])
def test_the_fixed_n_interval_stopped_at_first_exclusion_inflates_false_claims(null):
    """What the test above would see with the ordinary t interval in its place:
    it fails that test by a wide margin (about 3x alpha here)."""
    gains = null(np.random.default_rng(20261207), N_CELLS)
    share = share_wrongly_resolved(gains, fixed_n_t)
    assert share > 2 * ALPHA, f"{share:.3f}"


def test_bonferroni_over_cells_controls_the_family():
    """Families of 8 null cells at alpha/8 each: the chance that any of a family's
    cells is ever resolved stays at most alpha."""
    rng = np.random.default_rng(7)
    families = 400
    wrong = 0
    for _ in range(families):
        gains = rng.normal(0, 0.02, size=(8, MOST))
        rule = lambda g: seq.confidence_sequence(g, 0.0, ALPHA, cells=8).resolved  # noqa: E731
        wrong += any(seq.first_resolved(row, START, STEP, MOST, rule) is not None for row in gains)
    assert wrong / families <= ALPHA


def test_the_e_value_is_the_mixture_of_noncentral_t_likelihood_ratios():
    """The closed form against its definition, integrated numerically: the t
    statistic's density under delta ~ N(0, g) over its density under delta = 0."""
    for t, n in [(0.0, 3), (1.7, 4), (-3.2, 7), (5.0, 12)]:
        nu, g = n - 1, seq.PRIOR_G

        def integrand(d):
            return sps.nct.pdf(t, nu, d * math.sqrt(n)) * sps.norm.pdf(d, 0, math.sqrt(g))
        mixed, _ = integrate.quad(integrand, -40, 40, points=[t / math.sqrt(n)], limit=200)
        assert seq.log_e_value(t, n) == pytest.approx(math.log(mixed / sps.t.pdf(t, nu)), abs=1e-6)


def test_the_sequence_is_the_set_of_effects_it_does_not_reject():
    rng = np.random.default_rng(3)
    gains = rng.normal(0.08, 0.02, size=7)
    v = seq.confidence_sequence(gains, 0.0, ALPHA)
    assert v.resolved and v.direction == 1 and 0.0 < v.low < gains.mean() < v.high
    for edge, outside in [(v.low, -1e-6), (v.high, 1e-6)]:
        assert not seq.confidence_sequence(gains, edge - outside, ALPHA).resolved
        assert seq.confidence_sequence(gains, edge + outside, ALPHA).resolved
    # wider than the fixed-n t interval at the same n: the price of stopping when it likes
    half_t = sps.t.ppf(1 - ALPHA / 2, 6) * gains.std(ddof=1) / math.sqrt(7)
    assert v.high - v.low > 2 * half_t


def test_too_few_seeds_or_no_spread_resolve_nothing():
    assert seq.earliest(ALPHA, 1) == 4  # (n - 1)/2 log(1 + 4n) first exceeds log(20) at n = 4
    assert not seq.confidence_sequence([0.3, 0.31, 0.29], 0.0, ALPHA).resolved  # 3 < earliest
    v = seq.confidence_sequence([0.1] * 6, 0.0, ALPHA)  # equal gains: no scale to judge by
    assert not v.resolved and (v.low, v.high) == (-1.0, 1.0)
    assert seq.critical_t(3, 20) == math.inf and seq.critical_t(4, 20) < math.inf
    assert seq.checkpoints(3, 2, 10) == [3, 5, 7, 9, 10]


def test_a_clear_gain_is_resolved_within_a_few_batches():
    """Power where it matters: a gain of 3 seed-to-seed sd resolves by 7 seeds
    in nearly every cell (the prior's scale, PRIOR_G, puts the power there)."""
    rng = np.random.default_rng(11)
    gains = rng.normal(3.0, 1.0, size=(500, MOST)) * 0.02
    at = [seq.first_resolved(row, START, STEP, MOST, anytime) for row in gains]
    assert np.mean([a is not None and a <= 7 for a in at]) > 0.95
