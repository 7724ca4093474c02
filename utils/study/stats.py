"""Statistics of a seeded study: mean, sample standard deviation, Student-t 95% half-widths, paired deltas.

The t quantile is computed here (no scipy): the t CDF is written with the regularized incomplete beta function,
    P(T <= t) = 1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2   for t >= 0,
I is evaluated by its continued fraction (modified Lentz), and the quantile is found by bisection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

_TINY = 1e-300
_EPS = 1e-15


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= c * d
        if abs(c * d - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x = {x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection to machine precision)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Interval:
    n: int
    mean: float
    sd: float  # sample standard deviation (n - 1); nan for n < 2
    ci95: float  # Student-t 95% half-width of the mean; nan for n < 2


def interval(values) -> Interval:
    """Mean and 95% t interval half-width over the given values (one per seed)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n < 2:
        return Interval(1, mean, math.nan, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(n, mean, sd, t_quantile(0.975, n - 1) * sd / math.sqrt(n))


def paired_deltas(variant: dict, baseline: dict) -> list[float]:
    """variant - baseline for every seed both have ({seed: value}); seeds sorted."""
    return [float(variant[s]) - float(baseline[s]) for s in sorted(set(variant) & set(baseline))]


def verdict(delta: Interval, is_baseline: bool = False) -> str:
    """'baseline', 'better' / 'worse' when the 95% interval of the paired delta excludes 0, else 'inconclusive'."""
    if is_baseline:
        return "baseline"
    if delta.n < 2 or math.isnan(delta.ci95):
        return "inconclusive"
    if delta.mean - delta.ci95 > 0:
        return "better"
    if delta.mean + delta.ci95 < 0:
        return "worse"
    return "inconclusive"
