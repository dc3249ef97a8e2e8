"""The statistics behind a sweep's verdicts, as pure functions of paired differences (no Ray, no
training): the paired t test and its power, Holm's correction over the comparisons a sweep makes,
two one-sided tests for equivalence within a margin, and the alpha spending that lets a sweep look
at its data between rounds of seeds without raising its error rate.

Why Holm rather than Benjamini-Hochberg: a sweep's verdict is read one comparison at a time ("1
view is worse"), and each one should be as trustworthy as the table says; Holm bounds the chance
of even one false verdict (the family-wise error) at ALPHA under any dependence between the
comparisons (they share the reference's trials, so they are correlated), where BH bounds only the
expected share of false verdicts among those made and needs positive dependence for that.

Why a union bound over the rounds (a Bonferroni split of ALPHA across looks, shaped by a Lan-DeMets
spending function) rather than exact group-sequential boundaries: those are computed for z
statistics with a known variance, and a round here is 2-3 seeds, where the t distribution of a
paired test with 1-8 degrees of freedom is far from normal. Splitting ALPHA into the increments of
the spending function and testing each look at its own share is valid for any test at any sample
size (the chance of a false verdict at some look is at most the sum of the shares), at the cost of
some power.

(Not named statistics.py: `python sweeps/ablate.py` puts sweeps/ first on sys.path, where that
name would hide the standard library's statistics module from everything the sweep imports.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Hashable, Sequence

ALPHA = 0.05  # the family-wise error rate a sweep's verdicts keep
POWER = 0.8  # the power the planning lines and "seeds needed" refer to


def mean_se(diffs: Sequence[float]) -> tuple[float, float]:
    """The mean of the paired differences and its standard error (needs 2 or more)."""
    n = len(diffs)
    mean = math.fsum(diffs) / n
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n)


def t_p(diffs: Sequence[float]) -> float:
    """Two-sided p value of the paired t test of mean(diffs) = 0. Differences that are all equal
    have no spread: p is 1 when they are 0 and 0 otherwise (a difference by construction)."""
    return float(t_p_rows([list(diffs)])[0])


def t_p_rows(diffs) -> "numpy.ndarray":  # noqa: F821
    """t_p of each row of a 2-D array of paired differences at once (the simulations' many sweeps)."""
    import numpy as np
    from scipy.stats import t

    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    se = d.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * t.sf(np.abs(mean) / se, n - 1)
    return np.where(se > 0, p, np.where(mean == 0, 1.0, 0.0))


def tost_p(diffs: Sequence[float], margin: float) -> float:
    """p value of two one-sided paired t tests that mean(diffs) lies inside (-margin, margin): the
    larger of the two one-sided p values (small = equivalent within the margin)."""
    from scipy.stats import t

    mean, se = mean_se(diffs)
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    df = len(diffs) - 1
    return float(max(t.sf((mean + margin) / se, df), t.cdf((mean - margin) / se, df)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (in the input's order): reject where adjusted <= alpha
    and the family-wise error rate is at most alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def holm_by_key(pvalues: dict[Hashable, float]) -> dict[Hashable, float]:
    keys = list(pvalues)
    return dict(zip(keys, holm([pvalues[k] for k in keys])))


# ------------------------------------------------------------------------------------------ power
def power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t test at level alpha with n pairs when the true mean
    difference is `effect` standard deviations of the paired differences (noncentral t)."""
    from scipy.integrate import quad
    from scipy.stats import chi2, nct, norm, t

    if n < 2:
        return 0.0
    df, ncp = n - 1, abs(effect) * math.sqrt(n)
    crit = t.ppf(1 - alpha / 2, df)
    p = float(nct.sf(crit, df, ncp) + nct.cdf(-crit, df, ncp))
    if math.isfinite(p):
        return p
    # scipy's noncentral t gives NaN far in its tail (few pairs at a strict level): the same
    # probability as an integral over the chi-square of the sample variance.
    def given(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return (norm.cdf(ncp - c) + norm.cdf(-ncp - c)) * chi2.pdf(v, df)

    return float(quad(given, 0, math.inf, limit=200)[0])


def detectable(n: int, alpha: float, target: float = POWER) -> float:
    """The smallest true difference, in standard deviations of the paired differences, that the
    paired t test at level alpha detects with probability `target` from n pairs (inf below 2)."""
    from scipy.optimize import brentq

    if n < 2:
        return math.inf
    high = 1.0
    while power(high, n, alpha) < target:
        high *= 2
    return float(brentq(lambda d: power(d, n, alpha) - target, 0.0, high, xtol=1e-6))


def seeds_needed(effect: float, alpha: float, target: float = POWER, most: int = 100_000) -> int | None:
    """The fewest pairs with which the paired t test at level alpha detects a true difference of
    `effect` standard deviations with probability `target` (None: 0 effect or more than `most`)."""
    if effect == 0 or not math.isfinite(effect):
        return None
    if power(effect, 2, alpha) >= target:
        return 2
    low, high = 2, 4
    while power(effect, high, alpha) < target:  # power grows with n: double, then bisect
        low, high = high, high * 2
        if high > most:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(effect, mid, alpha) >= target else (mid, high)
    return high


# -------------------------------------------------------------------------------- the sequential
class Spending(StrEnum):
    """How the error rate is spent over the planned rounds (Lan-DeMets spending functions)."""

    pocock = "pocock"  # about even shares: a large difference is answered in the first rounds
    obrien_fleming = "obrien_fleming"  # almost nothing early, most at the last round


def spent(fraction: float, alpha: float, kind: Spending) -> float:
    """The error rate spent by the time `fraction` (0-1) of the planned seeds have run."""
    from scipy.stats import norm

    if fraction <= 0:
        return 0.0
    fraction = min(fraction, 1.0)
    if kind == Spending.pocock:
        return alpha * math.log(1 + (math.e - 1) * fraction)
    return float(2 * norm.sf(norm.isf(alpha / 2) / math.sqrt(fraction)))


def look_level(look: int, looks: int, alpha: float = ALPHA, kind: Spending = Spending.pocock) -> float:
    """The level of look `look` (1-based) of `looks` planned: its share of alpha. The shares add up
    to alpha, so the chance of a false verdict at any look is at most alpha."""
    return spent(look / looks, alpha, kind) - spent((look - 1) / looks, alpha, kind)


@dataclass
class Decision:
    """A comparison's answer at one look: separated (p_adjusted <= level) or equivalent."""

    p_adjusted: float
    separated: bool
    tost_adjusted: float | None = None
    equivalent: bool = False


def decide(p: dict[Hashable, float], level: float, tost: dict[Hashable, float] | None = None) -> dict[Hashable, Decision]:
    """One look at the comparisons still open: Holm over their t tests at `level` (separated) and,
    for those with a margin, Holm over their equivalence tests at `level` (equivalent). Answered
    comparisons leave the family: a true null answered earlier was already a false verdict, so
    testing the rest at the next look's share keeps the bound."""
    adjusted = holm_by_key(p)
    tost = tost or {}
    tost_adjusted = holm_by_key(tost) if tost else {}
    out = {}
    for k, pa in adjusted.items():
        ta = tost_adjusted.get(k)
        out[k] = Decision(pa, pa <= level, ta, ta is not None and ta <= level and pa > level)
    return out


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """The pooled standard deviation of several comparisons' paired differences (each group's
    variance weighted by its degrees of freedom); groups of fewer than 2 are skipped."""
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    if df == 0:
        return None
    ss = 0.0
    for g in groups:
        if len(g) > 1:
            mean = math.fsum(g) / len(g)
            ss += math.fsum((x - mean) ** 2 for x in g)
    return math.sqrt(ss / df)
