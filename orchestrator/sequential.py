"""An interval that stays valid however many seeds a cell ends with: the
anytime-valid t confidence sequence behind adaptive seeds (orchestrator/adaptive.py).

An adaptive sweep looks at a cell's per-seed gains after every batch of seeds
and stops adding seeds once its claim is resolved. An ordinary interval read
that way is wrong: stopping at the first batch whose 95% t interval excludes
the effect claims a gain that is not there far more often than 5% of the time
(tests/orchestrator/test_sequential.py measures it). What stays valid is a
test martingale, whose chance of *ever* crossing 1/alpha is at most alpha
(Ville's inequality), so any rule of when to stop, even one that looks at the
data, keeps the error.

The martingale here is the sequential t-test's mixture likelihood ratio
(Lai 1976, "On confidence sequences"; Perez-Ortiz, Lardy, de Heide and
Grunwald 2024, "E-statistics, group invariance and anytime-valid testing"):
per-seed gains x_1..x_n ~ N(mu, sigma^2) with sigma unknown; H0: mu = m.
With the right-Haar prior 1/sigma on the scale and a N(0, g) prior on the
standardised effect delta = (mu - m) / sigma, the Bayes factor depends on
the data only through the t statistic t_n and is, with nu = n - 1,

    E_n(m) = (1 + n g)^(-1/2) * [(1 + t_n^2 / nu) / (1 + t_n^2 / (nu (1 + n g)))]^(n / 2)

(Rouder et al. 2009, eq. 6 at a fixed g). Under H0 it is a nonnegative
martingale in n for every sigma (on the scale-invariant filtration), so
P(E_n(m) >= 1/alpha for some n) <= alpha. Its inversion is the confidence
sequence {m : E_n(m) < 1/alpha} = mean +- c_n * sd / sqrt(n): a t interval
whose critical value c_n is larger than Student's and grows with 1/alpha
instead of shrinking to 1.96. A family of `cells` cells is controlled by
Bonferroni (each cell at alpha / cells): the chance that any cell without the
effect is ever resolved is at most alpha, whatever the stopping.

What it assumes: a cell's per-seed gains are normal with one variance (each is
a mean of thousands of paired test-image differences, plus the training
seed's effect). The per-seed gain is also bounded in [-1, 1], and a betting
confidence sequence needs nothing more, but on a range of 2 it cannot
resolve a gain below ~0.3 within 15 seeds (its width carries a term of about
range * log(2/alpha) / n), so it would resolve nothing this tool is for.

`g` (PRIOR_G) is where the test spends its power: the prior variance of the
effect in units of the seed-to-seed sd. g = 4 (a prior sd of 2 sds) resolves
a gain of 3 sds within 7 seeds in more than 95% of cells
(tests/orchestrator/test_sequential.py), and one cell can resolve from 4
seeds on (`earliest()`; 5 at g = 1). A larger g lets very large effects
resolve a batch sooner and costs power on moderate ones.

With a `margin` (orchestrator/adaptive.py) a cell also resolves when its
whole interval lies within effect +- margin: no gain worth the margin. That
claim rests on the same coverage (every cell's sequence covers its mean at
every n at once, with probability 1 - alpha over the family), so it keeps the
same error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

PRIOR_G = 4.0
ALPHA = 0.05


def log_e_value(t: float, n: int, g: float = PRIOR_G) -> float:
    """log E_n of a t statistic `t` at n >= 2 values (the module's formula)."""
    nu = n - 1
    t2 = t * t
    return -0.5 * math.log1p(n * g) + 0.5 * n * (math.log1p(t2 / nu) - math.log1p(t2 / (nu * (1 + n * g))))


def log_e_max(n: int, g: float = PRIOR_G) -> float:
    """The most evidence n values can give (t -> infinity): (n - 1)/2 log(1 + n g)."""
    return 0.5 * (n - 1) * math.log1p(n * g)


def critical_t(n: int, threshold: float, g: float = PRIOR_G) -> float:
    """c_n: the |t| at which E_n reaches `threshold` (inf where n values
    cannot reach it). E_n increases in |t|, so bisection finds it."""
    if n < 2:
        return math.inf
    target = math.log(threshold)
    if log_e_max(n, g) <= target:
        return math.inf
    lo, hi = 0.0, 1.0
    while log_e_value(hi, n, g) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_e_value(mid, n, g) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return hi


def earliest(alpha: float = ALPHA, cells: int = 1, g: float = PRIOR_G) -> int:
    """The fewest seeds at which a cell can be resolved at all (however large its gain)."""
    n = 2
    while log_e_max(n, g) <= math.log(cells / alpha):
        n += 1
    return n


@dataclass(frozen=True)
class Verdict:
    """A cell's confidence sequence at its n seeds: [low, high] (clipped to
    the gain's range [-1, 1]), the evidence against `effect`, and whether
    `effect` is outside (the claim resolved, `direction` +1 above, -1 below)."""
    n: int
    mean: float
    low: float
    high: float
    log_e: float
    resolved: bool
    direction: int


def confidence_sequence(gains: Sequence[float], effect: float = 0.0, alpha: float = ALPHA, cells: int = 1,
                        g: float = PRIOR_G) -> Verdict:
    """The cell's anytime-valid interval at level alpha / cells and its verdict on `effect`."""
    x = np.asarray(gains, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Verdict(n, mean, -1.0, 1.0, 0.0, False, 0)
    sd = float(x.std(ddof=1))
    threshold = cells / alpha
    if sd <= 1e-12 * max(1.0, abs(mean)):  # equal gains (to rounding)
        # Equal gains in every seed (discrete accuracies): no spread to scale by. The
        # scale-invariant test has no evidence to give (t is 0/0); nothing is resolved.
        return Verdict(n, mean, -1.0, 1.0, 0.0, False, 0)
    c = critical_t(n, threshold, g)
    half = c * sd / math.sqrt(n)
    t = (mean - effect) / (sd / math.sqrt(n))
    log_e = log_e_value(t, n, g)
    resolved = log_e >= math.log(threshold)
    return Verdict(n, mean, max(-1.0, mean - half), min(1.0, mean + half), log_e, resolved,
                     (1 if mean > effect else -1) if resolved else 0)


def t_excludes(gains: Sequence[float], effect: float = 0.0, alpha: float = ALPHA) -> bool:
    """The fixed-n rule an adaptive sweep must not use: does the ordinary
    two-sided t interval at these n seeds exclude `effect`?"""
    x = np.asarray(gains, dtype=float)
    n = len(x)
    if n < 2 or x.std(ddof=1) <= 1e-12 * max(1.0, abs(float(x.mean()))):
        return False
    from scipy.stats import t as student
    half = float(student.ppf(1 - alpha / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return abs(float(x.mean()) - effect) > half


def checkpoints(start: int, step: int, most: int) -> list[int]:
    """The seed counts a cell is judged at: start, start + step, ..., the last clipped to `most`."""
    out = [start]
    while out[-1] < most:
        out.append(min(out[-1] + step, most))
    return out


def first_resolved(gains: Sequence[float], start: int, step: int, most: int, rule) -> Optional[int]:
    """The first checkpoint at which `rule(first n gains)` resolves the cell, None if none does."""
    for n in checkpoints(start, step, most):
        if n <= len(gains) and rule(gains[:n]):
            return n
    return None
