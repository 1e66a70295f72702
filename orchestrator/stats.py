"""The arithmetic behind the gain columns of orchestrator/tables.py: intervals,
p-values, the Holm adjustment and the power of a paired t-test. Pure numpy and
scipy on per-seed numbers; no frames, no SQL.

The default interval of a cell's gain (`paired_bootstrap`) is a two-level
paired bootstrap: it resamples the seeds (training noise) and, within each
resampled seed, the test images (the noise of a finite test split every seed
shares), the same images for the dense network and the ticket. Per seed only
the counts of test images where "ticket correct" minus "dense correct" is
-1, 0 or +1 matter, and resampling the n images of a seed with replacement
is exactly a multinomial(n, those proportions) draw. The draws, precisely
(an independent implementation that follows them reproduces every bound):

    seeds s = 0..S-1 are the cell's paired lineages in trial_id order; n[s] its
    test images, p[s] = (minus, same, plus)[s] / n[s]
    rng = numpy.random.Generator(numpy.random.PCG64([BOOTSTRAP_SEED, key]))
          key = int(cell_id, 16) (cell ids are 16 hex digits; any other key:
          the first 16 hex digits of its sha256, `seed_key`)
    1. pick  = rng.integers(0, S, size=(B, S))       resample b takes seeds pick[b, :]
    2. drawn = rng.multinomial(n[pick], p[pick])     shape (B, S, 3): the same numbers as
          rng.multinomial(n[pick[b, j]], p[pick[b, j]]) called for b = 0..B-1, then j = 0..S-1
    3. g[b]  = mean over j of (drawn[b, j, 2] - drawn[b, j, 0]) / n[pick[b, j]]
    4. interval = numpy.quantile(g, [0.025, 0.975])  (percentile; linear interpolation)
    5. p_value  = max(1/B, min(1, 2 * min(#{g <= 0}, #{g >= 0}) / B))

With one seed step 1 picks that seed every time: the interval is image-level
only (tables.py labels it so). The interval is zero-width only when no
resample can move the gain: when dense and ticket are right on exactly the
same images in every seed (or, never seen in practice, when every image of
every seed moves the same way and all seeds agree). p_value is the
percentile-interval inversion (p < 0.05 exactly when the 95% interval,
up to interpolation, excludes 0); B resamples cannot resolve less than 1/B,
hence the floor.

B = 20000. Measured (`python -m orchestrator.stats`: the bounds of one cell
under 30 generator seeds in place of BOOTSTRAP_SEED; 5 seeds of 397-599 test
images): with per-seed gains 0.015 ± 0.015 and 4% of the images flipped each
way, each bound has a standard deviation of 0.00012-0.00018 and a range of
0.0005-0.0009 over the 30; with gains ± 0.03 and 8% flipped, 0.0002 and
0.0008-0.0010. So the third decimal of a bound moves by at most one unit,
and only where a bound sits near a rounding edge (10000 resamples: sd
0.0002-0.0003, ranges 0.0010-0.0017). 25-65 ms per cell on one core here.
With one seed the image-level distribution is a lattice of step 1/n: a bound
moves between neighbouring points of it whatever B.

What the interval does not do (same script): its seed level is a percentile
bootstrap, which takes the seeds' spread as known. With few seeds it is too
narrow: over normal per-seed gains a nominal 95% covers 51% with 2 seeds, 76%
with 3, 84% with 5, 90% with 10 (the t interval: 94-95%); tables.notes() says
so under a table with such cells, and `--ci t` is the check. And images are
resampled within each seed independently, as if every seed had its own test
split: where a ticket flips the same images in every seed (the seeds share
one split) the image level is understated; where the flips are seed-specific
it is overstated.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from workers.predictions import unpack_correct

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 25  # the issue that introduced it; a stated constant, so tables reproduce
BOOTSTRAP_B = 20000
ALPHA = 0.05          # of the power calculation and of "survives Holm"
POWER = 0.80
MAX_SEEDS = 10000     # seeds_needed searches no further


# --- per-image correctness ------------------------------------------------------

def image_counts(dense_bits: bytes, ticket_bits: bytes, n: int) -> tuple[int, int, int]:
    """From the test_correct bits of the dense round and of the ticket (n test
    images, workers/predictions.py): the images where ticket-minus-dense
    correctness is -1, 0, +1, in that order."""
    d = unpack_correct(dense_bits, n).astype(np.int8)
    t = unpack_correct(ticket_bits, n).astype(np.int8)
    diff = t - d
    minus, plus = int((diff < 0).sum()), int((diff > 0).sum())
    return minus, n - minus - plus, plus


# --- the two-level paired bootstrap ------------------------------------------------

@dataclass(frozen=True)
class Bootstrap:
    low: float
    high: float
    p_value: float


def seed_key(cell_id: str) -> int:
    """The generator key of a cell (see the module docstring)."""
    try:
        return int(cell_id, 16)
    except ValueError:
        return int(hashlib.sha256(cell_id.encode()).hexdigest()[:16], 16)


def paired_bootstrap(counts: Sequence[tuple[int, int, int]], cell_id: str, b: int = BOOTSTRAP_B,
                     confidence: float = CONFIDENCE) -> Bootstrap:
    """The interval and p-value of a cell's mean paired gain from its seeds'
    (minus, same, plus) image counts, by the draws of the module docstring."""
    return _bootstrap(tuple(tuple(int(x) for x in c) for c in counts), (BOOTSTRAP_SEED, seed_key(cell_id)), b,
                      confidence)


@lru_cache(maxsize=4096)  # a report asks for the same cells several times; the draws are seeded
def _bootstrap(counts: tuple, entropy: tuple[int, int], b: int, confidence: float) -> Bootstrap:
    c = np.asarray(counts, dtype=np.int64)
    n = c.sum(axis=1)
    p = c / n[:, None]
    rng = np.random.Generator(np.random.PCG64(list(entropy)))
    pick = rng.integers(0, len(c), size=(b, len(c)))
    drawn = rng.multinomial(n[pick], p[pick])
    g = ((drawn[..., 2] - drawn[..., 0]) / n[pick]).mean(axis=1)
    low, high = np.quantile(g, [(1 - confidence) / 2, (1 + confidence) / 2])
    tail = min(int((g <= 0).sum()), int((g >= 0).sum()))
    return Bootstrap(float(low), float(high), max(1 / b, min(1.0, 2 * tail / b)))


# --- seed-level t ------------------------------------------------------------------

def t_interval(mean: float, sd: float, n: int,
               confidence: float = CONFIDENCE) -> tuple[Optional[float], Optional[float]]:
    """Two-sided t interval of a mean of n paired differences; (None, None) for
    n < 2 and for sd == 0. With no spread between seeds the t interval would be
    [mean, mean]: certainty that a handful of seeds cannot give (accuracies are
    discrete, so equal gains in every seed are common, e.g. when validation
    picks round 0 everywhere). None is given; tables.notes() says why, and the
    default bootstrap, which also resamples test images, gives one."""
    if _undefined(mean, sd, n):
        return None, None
    from scipy.stats import t
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * float(sd) / math.sqrt(n)
    return float(mean) - half, float(mean) + half


def t_test(mean: float, sd: float, n: int) -> float:
    """Two-sided p of the paired t-test of gain == 0 (a one-sample t-test of the
    per-seed gains); NaN where t_interval gives no interval."""
    if _undefined(mean, sd, n):
        return math.nan
    from scipy.stats import t
    return float(2 * t.sf(abs(float(mean)) / (float(sd) / math.sqrt(n)), n - 1))


def _undefined(mean, sd, n) -> bool:
    return n is None or n < 2 or any(v is None or not math.isfinite(float(v)) for v in (mean, sd)) or float(sd) == 0


# --- a table as a family ---------------------------------------------------------------

def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment over the non-NaN p-values (NaN stays NaN):
    the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled) if m else scaled
    return out


def prob_better(gains: Sequence[float]) -> float:
    """The share of seeds whose ticket beats its dense network on the test
    split; a tie (equal accuracy) counts half. NaN without seeds."""
    g = np.asarray(gains, dtype=float)
    return float(((g > 0) + 0.5 * (g == 0)).mean()) if len(g) else math.nan


# --- how many seeds ------------------------------------------------------------------

def t_power(effect, sd: float, n, alpha: float = ALPHA):
    """Power of the two-sided paired t-test at level alpha with n seeds whose
    per-seed gains have sd `sd`, against a true mean gain `effect`: the
    noncentral t with n - 1 degrees of freedom and noncentrality effect*sqrt(n)/sd
    beyond either critical value. Vectorised over effect and n."""
    from scipy.stats import nct, t
    n = np.asarray(n, dtype=float)
    df = n - 1
    crit = t.ppf(1 - alpha / 2, df)
    nc = np.asarray(effect, dtype=float) * np.sqrt(n) / sd
    # The far tail as the upper tail of the mirrored distribution: scipy's
    # nct.cdf(-crit, df, nc) is NaN for large nc where this is a clean ~0.
    return nct.sf(crit, df, nc) + nct.sf(crit, df, -nc)


def min_detectable(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true gain the paired t-test detects with `power` from n seeds
    of spread sd; NaN for n < 2 or no spread (sd 0 or unknown)."""
    if n is None or n < 2 or sd is None or not math.isfinite(sd) or sd <= 0:
        return math.nan
    from scipy.optimize import brentq
    high = sd
    while t_power(high, sd, n, alpha) < power:
        high *= 2
    return float(brentq(lambda e: t_power(e, sd, n, alpha) - power, 0.0, high, xtol=1e-12 * sd, rtol=1e-12))


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> Optional[int]:
    """The fewest seeds (>= 2) whose paired t-test detects a true gain `effect`
    with `power`, for per-seed gains of spread sd; None above MAX_SEEDS or
    without a spread."""
    if sd is None or not math.isfinite(sd) or sd <= 0:
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    enough = np.flatnonzero(t_power(effect, sd, n, alpha) >= power)
    return int(n[enough[0]]) if len(enough) else None


def _stability(b: int, spread: float, flips: float, seeds: int = 30) -> str:
    """The measurement behind BOOTSTRAP_B (module docstring): one cell of 5 seeds
    of 397-599 test images, per-seed gains ~ N(0.015, spread), a share `flips`
    of the images flipped ticket-wrong, bootstrapped under `seeds` generator seeds."""
    import time
    gen = np.random.default_rng(0)
    n = gen.integers(397, 600, size=5)
    minus = np.round(flips * n).astype(int)
    plus = np.round((flips + gen.normal(0.015, spread, size=5)) * n).astype(int)
    counts = tuple((int(mi), int(k - mi - pl), int(pl)) for k, mi, pl in zip(n, minus, plus))
    start = time.perf_counter()
    x = np.array([(r.low, r.high) for r in (_bootstrap.__wrapped__(counts, (1000 + s, 1), b, CONFIDENCE)
                                            for s in range(seeds))])
    ms = (time.perf_counter() - start) / seeds * 1000
    return (f"B={b}, gain sd {spread}, {flips:.0%} flipped each way: sd of (low, high) "
            f"{x.std(0).round(5).tolist()}, range {np.ptp(x, 0).round(5).tolist()}, {ms:.0f} ms per cell")


def _seed_coverage(seeds: int, reps: int = 2000, b: int = 2000) -> str:
    """How often the seed level alone (a percentile bootstrap of the mean of
    `seeds` normal per-seed gains) and the t interval cover the true mean."""
    from scipy.stats import t
    gen = np.random.default_rng(0)
    x = gen.normal(0.0, 1.0, size=(reps, seeds))
    boot = x[np.arange(reps)[:, None, None], gen.integers(0, seeds, size=(reps, b, seeds))].mean(axis=2)
    low, high = np.quantile(boot, [0.025, 0.975], axis=1)
    half = t.ppf(0.975, seeds - 1) * x.std(axis=1, ddof=1) / math.sqrt(seeds)
    return (f"{seeds} seeds: the 95% percentile bootstrap over seeds covers {np.mean((low <= 0) & (0 <= high)):.0%}, "
            f"the t interval {np.mean(np.abs(x.mean(axis=1)) <= half):.0%}")


if __name__ == "__main__":
    for spread, flips in ((0.015, 0.04), (0.03, 0.08)):
        for b in (10000, BOOTSTRAP_B, 50000):
            print(_stability(b, spread, flips))
    for seeds in (2, 3, 5, 10, 20):
        print(_seed_coverage(seeds))
