"""The arithmetic behind the gain columns of orchestrator/tables.py: intervals,
p-values and the Holm adjustment; one concern, the evidence a table states
(how many seeds it would take is orchestrator/power.py). Pure numpy and scipy
on per-seed numbers; no frames, no SQL.

The default interval of a cell's gain (`paired_bootstrap`) is a two-level
paired bootstrap over the two sources of noise in a gain: the training seeds
and the finite test split. Every seed of a cell is tested on the same images
(the dataset's one official test split), so seeds and images are crossed, and
the bootstrap resamples them independently (Owen's "pigeonhole" bootstrap for
crossed designs): a resample takes S seeds with replacement and N test images
with replacement, the same images for every seed and for the dense network
and the ticket. Per image only its pattern matters: the column of
"ticket correct" minus "dense correct" (-1, 0, +1) over the seeds, so
resampling N images is exactly a multinomial(N, pattern shares) draw. The
draws, precisely (an independent implementation that follows them reproduces
every bound):

    seeds s = 0..S-1: the cell's paired lineages in trial_id order, N test images each
    d[s, i] = ticket correct - dense correct on image i, in {-1, 0, +1}
    patterns M (P x S): the distinct columns d[:, i], in increasing lexicographic order
    (numpy.unique(d.T, axis=0)); c[p]: how many images have pattern p (sum N)
    rng = numpy.random.Generator(numpy.random.PCG64([BOOTSTRAP_SEED, key]))
          key = int(cell_id, 16) (cell ids are 16 hex digits; any other key:
          the first 16 hex digits of its sha256, `seed_key`)
    1. pick = rng.integers(0, S, size=(B, S))      resample b takes seeds pick[b, :]
    2. k: shape (B, P), resample b's images counted by pattern, a multinomial(N, c / N) draw:
       3P <= N: k = rng.multinomial(N, c / N, size=B)
       3P >  N: (nearly an image per pattern: numpy's multinomial costs a binomial per
                pattern, 10 s of a 30-seed CIFAR cell) the N images one by one:
                idx = rng.integers(0, N, size=(B, N), dtype=numpy.int32), images ordered by
                pattern (pattern 0's c[0] images first), k[b, p] = #{j: idx[b, j] is of p}
    3. g[b] = sum over p of k[b, p] * (mean over j of M[p, pick[b, j]]) / N
       (computed exactly, as an integer over S x N, in chunks of resamples: `resampled_gains`)
    gain = mean over seeds of their paired gains = sum over p of c[p] * mean(M[p, :]) / N
    S >= 2: the per-seed gains gs[s] = sum over p of c[p] * M[p, s] / N;
            v_seed = var(gs, ddof=1) / S                      the seeds' share of the variance
            var    = var(g, ddof=1) + v_seed / S              (see below); v_img = max(var - v_seed, 0)
            df     = var^2 / (v_seed^2 / (S - 1) + v_img^2 / (N - 1))     (Welch-Satterthwaite)
            half   = t.ppf(0.975, df) * sqrt(var);  p_value = 2 * t.sf(|gain| / sqrt(var), df)
            v_seed > 0: half    = max(half, t.ppf(0.975, S - 1) * sqrt(v_seed))     (never narrower
                        p_value = max(p_value, 2 * t.sf(|gain| / sqrt(v_seed), S - 1))  than the seed-level t)
            interval gain -/+ half (var = 0: [gain, gain] and p_value 1)
    S == 1: the images alone; the percentile interval numpy.quantile(g, [0.025, 0.975])
            (linear interpolation) and p_value = max(1/B, min(1, 2 * min(#{g <= 0}, #{g >= 0}) / B))

Why not the percentile interval for S >= 2: over a handful of seeds it takes
their spread as known (measured, `python -m bench.intervals`: over normal
per-seed gains a nominal 95% percentile interval covers 51% with 2 seeds, 76%
with 3, 84% with 5). So the resamples give the variance, not the quantiles:
a resampled mean of S seeds carries only (S - 1)/S of the seeds' share of the
variance (the plug-in variance), which `v_seed / S` restores, and the
quantile is Student's t with the Welch-Satterthwaite degrees of freedom of
the two shares, towards the normal where the shared test images dominate.
Where the seeds' share dominates, those degrees of freedom can still exceed
the S - 1 that S seeds support (the image share's estimate then carries the
seed-by-image interaction, counted at both levels): the interval is
therefore never narrower than the seed-level t interval, nor its p-value
below the paired t-test's. Measured coverage of the true mean gain in
simulated crossed cells (500 shared test images, 2 to 10 seeds, images-,
mixed- and seeds-dominated cells and cells sharing nothing, at accuracies
near 1 and near 0.5; 1,000 cells each, `python -m bench.intervals`, the
interval / the seed-level t interval):

    | regime | 2 seeds | 3 seeds | 5 seeds | 10 seeds |
    |---|---|---|---|---|
    | images dominate, accuracies near 1 | 99.0% / 90.8% | 98.3% / 86.5% | 98.1% / 72.9% | 96.7% / 54.6% |
    | mixed, accuracies near 1 | 96.2% / 94.4% | 96.0% / 94.5% | 96.0% / 94.5% | 97.5% / 93.5% |
    | seeds dominate, accuracies near 1 | 97.8% / 94.1% | 97.8% / 95.2% | 97.1% / 94.2% | 98.3% / 94.7% |
    | nothing shared, accuracies near 1 | 99.5% / 94.6% | 99.9% / 95.1% | 99.9% / 95.1% | 99.9% / 94.9% |
    | images dominate, accuracies near 0.5 | 98.5% / 90.6% | 97.8% / 84.7% | 97.5% / 70.9% | 97.4% / 53.9% |
    | mixed, accuracies near 0.5 | 99.3% / 95.0% | 98.0% / 95.3% | 98.5% / 93.4% | 98.6% / 91.0% |
    | seeds dominate, accuracies near 0.5 | 95.9% / 94.7% | 96.9% / 96.3% | 95.1% / 94.7% | 96.3% / 94.6% |
    | nothing shared, accuracies near 0.5 | 99.6% / 93.8% | 99.9% / 95.4% | 99.9% / 94.9% | 99.8% / 94.8% |

At least 95.1% everywhere (with the draws of step 2 as they are now; before the
image-by-image branch, 95.0% in one cell); the t interval, blind to the shared images, covers
as little as 54% where they dominate. Conservative where each seed's flips
are its own: the seed-by-image interaction is counted at both levels, as in
any pigeonhole bootstrap.

The interval is zero-width only when no resample can move the gain: when
dense and ticket are right on exactly the same images in every seed.

B = 20000: the bounds' third decimal is stable. Measured (`python -m
bench.intervals`: one simulated cell of 5 seeds of 500 test images under 30
generator seeds in place of BOOTSTRAP_SEED): each bound has a standard
deviation of 0.00014 and a range of 0.0005 over the 30 (5000 resamples:
0.00026 and 0.0011). Cost: the `bench` keys bootstrap_cell_s and
bootstrap_cell_peak_mb (30 seeds x 10,000 test images). With one seed the
image-level distribution is a lattice of step 1/N: a bound moves between
neighbouring points of it whatever B.
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
ALPHA = 0.05          # of "survives Holm" and of the power calculations (orchestrator/power.py)


# --- per-image correctness ------------------------------------------------------

def image_patterns(pairs: Sequence[tuple[bytes, bytes]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """From each seed's (dense, ticket) test_correct bits over the same n test
    images (workers/predictions.py): the distinct columns of ticket-minus-dense
    correctness over the seeds (P x S, int8, in increasing lexicographic order)
    and how many images have each (the module docstring's M and c)."""
    d = np.stack([unpack_correct(t, n).astype(np.int8) - unpack_correct(dn, n).astype(np.int8) for dn, t in pairs])
    patterns, counts = np.unique(d.T, axis=0, return_counts=True)
    return patterns.astype(np.int8), counts.astype(np.int64)


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


def paired_bootstrap(patterns: np.ndarray, counts: np.ndarray, cell_id: str, b: int = BOOTSTRAP_B,
                     confidence: float = CONFIDENCE) -> Bootstrap:
    """The interval and p-value of a cell's mean paired gain from its image
    patterns and their counts (`image_patterns`), by the draws of the module docstring."""
    m = np.ascontiguousarray(patterns, dtype=np.int8)
    return _bootstrap(m.tobytes(), m.shape, tuple(int(x) for x in counts), (BOOTSTRAP_SEED, seed_key(cell_id)),
                      b, confidence)


# Bounded memory: resamples are drawn and summed in chunks of about this many bytes per
# working array (at 30 seeds x 10,000 test images, the whole B at once was tens of GB).
CHUNK_BYTES = 32 << 20


def resampled_gains(m: np.ndarray, c: np.ndarray, rng: np.random.Generator, b: int,
                    chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """g[b] of the module docstring, in chunks of resamples. The draws are the
    docstring's, in its order (all seed picks, then the images' draws row by row,
    which numpy draws one row after another whatever the chunk), and the sums
    are exact: each g[b] is an integer over S x N computed in float64 from
    integers below 2^53, so any chunk size gives the same bits."""
    p_count, seeds = m.shape
    n_images = int(c.sum())
    pick = rng.integers(0, seeds, size=(b, seeds))
    picked = np.zeros((b, seeds))  # how often resample b took seed s
    for j in range(seeds):
        np.add.at(picked, (np.arange(b), pick[:, j]), 1.0)
    mt = np.ascontiguousarray(m.T, dtype=np.float64)
    by_image = 3 * p_count > n_images
    if by_image:
        pattern_of = np.repeat(np.arange(p_count), c)  # the images, ordered by pattern
    shares = c / n_images
    rows = max(1, chunk_bytes // (8 * (n_images if by_image else p_count)))
    g = np.empty(b)
    for start in range(0, b, rows):
        stop = min(b, start + rows)
        # sum over the S picks of M[p, pick]: (picked @ M^T)[b, p], integer-valued
        per_pattern = picked[start:stop] @ mt
        if by_image:
            idx = rng.integers(0, n_images, size=(stop - start, n_images), dtype=np.int32)
            g[start:stop] = np.take_along_axis(per_pattern, pattern_of[idx], axis=1).sum(axis=1)
        else:
            k = rng.multinomial(n_images, shares, size=stop - start)
            g[start:stop] = np.einsum("bp,bp->b", k.astype(np.float64), per_pattern)
    return g / (seeds * n_images)


@lru_cache(maxsize=4096)  # a report asks for the same cells several times; the draws are seeded
def _bootstrap(pattern_bytes: bytes, shape: tuple, counts: tuple, entropy: tuple[int, int], b: int,
               confidence: float, chunk_bytes: int = CHUNK_BYTES) -> Bootstrap:
    m = np.frombuffer(pattern_bytes, dtype=np.int8).reshape(shape)
    c = np.asarray(counts, dtype=np.int64)
    n_images, seeds = int(c.sum()), shape[1]
    g = resampled_gains(m, c, np.random.Generator(np.random.PCG64(list(entropy))), b, chunk_bytes)
    mf = m.astype(np.float64)
    gain = float(c @ mf.mean(axis=1)) / n_images
    if seeds == 1:
        low, high = np.quantile(g, [(1 - confidence) / 2, (1 + confidence) / 2])
        tail = min(int((g <= 0).sum()), int((g >= 0).sum()))
        return Bootstrap(float(low), float(high), max(1 / b, min(1.0, 2 * tail / b)))
    from scipy.stats import t
    per_seed = (c @ mf) / n_images
    v_seed = float(per_seed.var(ddof=1)) / seeds
    # The resampled mean of S seeds carries (S - 1)/S of the seeds' share: add the rest back.
    var = float(g.var(ddof=1)) + v_seed / seeds
    if var <= 0:
        return Bootstrap(gain, gain, 1.0)
    v_img = max(var - v_seed, 0.0)
    df = var ** 2 / (v_seed ** 2 / (seeds - 1) + v_img ** 2 / (n_images - 1))
    se = math.sqrt(var)
    half = float(t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * t.sf(abs(gain) / se, df))
    if v_seed > 0:
        # Never narrower than the seed-level t interval (and p never below its test's):
        # where the seeds' share dominates, the resampled variance is itself a noisy
        # estimate from S seeds, and its degrees of freedom can exceed S - 1.
        se_seed = math.sqrt(v_seed)
        half = max(half, float(t.ppf(0.5 + confidence / 2, seeds - 1)) * se_seed)
        p = max(p, float(2 * t.sf(abs(gain) / se_seed, seeds - 1)))
    return Bootstrap(gain - half, gain + half, p)


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
