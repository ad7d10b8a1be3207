"""Mean and spread over seeds, and the paired t-test of a variant against its reference.

A study trains every variant with the same seeds, so the seed is a pairing: the test looks
at the per-seed differences d_i = x_i - y_i over the seeds both rows share,
t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom, two-sided
(``scipy.stats.ttest_rel``). With fewer than two shared seeds, or differences that are all
equal (sd = 0: the t statistic is undefined), there is no p-value and the note says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof 1; None for n < 2) of finite values."""

    mean: float | None
    std: float | None
    n: int


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return Summary(None, None, 0)
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return Summary(mean, std, n)


@dataclass(frozen=True)
class PairedTest:
    """A row against its reference over the seeds both have."""

    n: int  # shared seeds
    mean: float | None  # mean difference (row - reference)
    std: float | None  # sd of the differences (ddof 1)
    t: float | None
    p: float | None  # two-sided
    note: str  # why there is no p-value, else ""
    seeds: tuple[int, ...] = ()


def paired_ttest(x: Mapping[int, float], y: Mapping[int, float]) -> PairedTest:
    """Paired t-test of ``x`` against ``y`` (seed -> value) over their shared seeds."""
    seeds = tuple(sorted(s for s in x if s in y and _finite(x[s]) and _finite(y[s])))
    diffs = [float(x[s]) - float(y[s]) for s in seeds]
    s = summarize(diffs)
    if s.n == 0:
        return PairedTest(0, None, None, None, None, "no shared seeds", seeds)
    if s.n < 2:
        return PairedTest(s.n, s.mean, None, None, None,
                          "1 shared seed: no test (needs n >= 2)", seeds)
    assert s.std is not None
    if s.std == 0.0:
        return PairedTest(s.n, s.mean, 0.0, None, None,
                          "identical differences on every seed: t undefined", seeds)
    from scipy import stats

    res = stats.ttest_rel([x[k] for k in seeds], [y[k] for k in seeds])
    return PairedTest(s.n, s.mean, s.std, float(res.statistic), float(res.pvalue), "", seeds)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(float(v))


__all__ = ["Summary", "summarize", "PairedTest", "paired_ttest"]
