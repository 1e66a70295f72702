"""How many seeds: the power of a cell's test, the smallest gain it detects, and
the seeds a gain needs (`query --power`, the report's power table). Two tests:

- the seed-level paired t-test over the per-seed gains (`--ci t`);
- the test the default interval makes (orchestrator/stats.py `_bootstrap`), which
  also counts the noise of the test images every seed shares. No number of seeds
  reduces that noise, so a seed-level calculation can promise a gain the default
  interval never confirms. Its power is simulated from the cell's two variance
  components (`components`), with the interval's own rule; a gain the split's
  images alone keep below the asked power is "not reachable with this test split".

tests/orchestrator/test_stats.py checks the t-test's power against its definition
and the simulated power against the default interval itself on simulated cells.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from orchestrator.stats import ALPHA, BOOTSTRAP_SEED

POWER = 0.80
MAX_SEEDS = 10000     # seeds_needed searches no further


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




# --- the default interval's test -------------------------------------------------------------
# The default interval also counts the noise of the test images every seed shares,
# which no number of seeds reduces; a seed-level power calculation ignores it and can
# promise a gain the interval never confirms. These answer for the test the default
# interval makes, from the cell's two variance components.

POWER_REPS = 4000        # simulated cells per power figure (its Monte Carlo sd at 0.8: 0.006)
POWER_MAX_SEEDS = 1000   # the two-level search goes no further


@dataclass(frozen=True)
class Components:
    seed_sd: float    # sd of one seed's gain on this test split (what the seed-level t sees)
    split_sd: float   # sd of the mean gain due to the test split's own images: shared by every seed
    n_images: int
    # sd of one seed's gain due to the seed-by-image interaction: the bootstrap counts it
    # at both levels (module docstring), so its image share of a mean of S seeds
    # carries about resid_sd^2 (2S - 1) / S^2 besides split_sd^2.
    resid_sd: float = 0.0


def components(patterns: np.ndarray, counts: np.ndarray) -> Components:
    """The two variance components of a cell's gain, by the method of moments of
    a two-way crossed design (seeds x test images, one outcome per pair), from its
    image patterns (`image_patterns`; at least two seeds): the image effects'
    variance is (MS_images - MS_residual) / S, and the split's share of the mean
    gain's variance that variance over N."""
    m = np.asarray(patterns, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    n, s = float(c.sum()), m.shape[1]
    per_seed = (c @ m) / n
    grand = float(per_seed.mean())
    per_image = m.mean(axis=1)
    ms_images = s * float(c @ (per_image - grand) ** 2) / (n - 1)
    resid = m - per_image[:, None] - per_seed[None, :] + grand
    ms_resid = float(c @ (resid ** 2).sum(axis=1)) / ((s - 1) * (n - 1))
    var_image = max(0.0, (ms_images - ms_resid) / s)
    return Components(float(per_seed.std(ddof=1)), math.sqrt(var_image / n), int(n), math.sqrt(ms_resid / n))


def two_level_power(effect: float, comp: Components, n: int, alpha: float = ALPHA,
                    reps: int = POWER_REPS) -> float:
    """Power of the default interval's test (`_bootstrap`: Welch-Satterthwaite t
    on the seeds' and the split's shares, never weaker than the seed-level t-test)
    against a true mean gain `effect` with n seeds on this test split, simulated
    from the cell's components (normal seeds and split; seeded, so repeatable):
    each simulated cell draws its split's offset (sd split_sd) and n seed gains
    around it (sd seed_sd)."""
    from scipy.stats import t
    rng = np.random.Generator(np.random.PCG64([BOOTSTRAP_SEED, n]))
    gains = effect + comp.split_sd * rng.standard_normal((reps, 1)) + comp.seed_sd * rng.standard_normal((reps, n))
    mean = gains.mean(axis=1)
    v_seed = gains.var(axis=1, ddof=1) / n
    # The image share the bootstrap measures: resampling images under S seeds drawn with
    # replacement, the interaction enters with the weight E[sum of squared pick shares].
    v_split = comp.split_sd ** 2 + comp.resid_sd ** 2 * (2 * n - 1) / n ** 2
    var = v_seed + v_split
    df = var ** 2 / (v_seed ** 2 / (n - 1) + v_split ** 2 / max(comp.n_images - 1, 1))
    q = 1 - alpha / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        both = np.abs(mean) > t.ppf(q, df) * np.sqrt(var)
        both &= (v_seed == 0) | (np.abs(mean) > t.ppf(q, n - 1) * np.sqrt(v_seed))
    return float(both.mean())


def split_limit(effect: float, comp: Components, alpha: float = ALPHA) -> float:
    """The power of the default interval's test with unlimited seeds: the split's
    images alone (a normal test of the split's mean gain)."""
    from scipy.stats import norm
    if comp.split_sd <= 0:
        return 1.0
    z, r = norm.ppf(1 - alpha / 2), effect / comp.split_sd
    return float(norm.sf(z - r) + norm.cdf(-z - r))


def two_level_seeds(effect: float, comp: Components, power: float = POWER,
                    alpha: float = ALPHA) -> tuple[Optional[int], bool]:
    """(the fewest seeds >= 2 whose default-interval test detects `effect` with
    `power`, reachable): (None, False) when the test split's images alone keep
    the power below `power` whatever the seeds; (None, True) above POWER_MAX_SEEDS."""
    if split_limit(effect, comp, alpha) < power:
        return None, False
    if two_level_power(effect, comp, 2, alpha) >= power:
        return 2, True
    low, high = 2, 4
    while two_level_power(effect, comp, high, alpha) < power:
        if high >= POWER_MAX_SEEDS:
            return None, True
        low, high = high, min(2 * high, POWER_MAX_SEEDS)
    while high - low > 1:  # power(low) < power <= power(high)
        mid = (low + high) // 2
        low, high = (low, mid) if two_level_power(effect, comp, mid, alpha) >= power else (mid, high)
    return high, True


def two_level_min_detectable(comp: Components, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true gain the default interval's test detects with `power` from
    n seeds on this test split (bisection on the seeded simulation)."""
    if n < 2 or not (comp.seed_sd > 0 or comp.split_sd > 0):
        return math.nan
    high = max(comp.seed_sd, comp.split_sd)
    while two_level_power(high, comp, n, alpha) < power:
        high *= 2
    low = 0.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if two_level_power(mid, comp, n, alpha) >= power else (mid, high)
    return high
