"""Power of the t-tests of analysis.stats, for planning: how many seeds a paired (or two-sample) t-test needs
for 80% power at the observed difference and spread, and the smallest difference the current seeds detect.
Pure functions on numbers (scipy's noncentral t), tested against Monte-Carlo simulation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

from analysis.stats import no_spread


def t_test_power(effect: float, sd: float, n_a: float, n_b: Optional[float] = None, *,
                 alpha: float = 0.05) -> float:
    """Power of the two-sided t-test at level ``alpha`` when the true difference is ``effect``.

    Paired (``n_b`` None): ``n_a`` pairs, ``sd`` of the differences; T ~ noncentral t with df = n - 1 and
    nc = effect / sd * sqrt(n). Two-sample (Student's, a common ``sd``; the usual planning stand-in for
    Welch's test): df = n_a + n_b - 2, nc = effect / (sd * sqrt(1/n_a + 1/n_b)). n may be fractional.
    """
    if sd <= 0:
        raise ValueError(f"sd={sd}: power needs a positive spread")
    if n_b is None:
        df, nc = n_a - 1, effect / sd * math.sqrt(n_a)
    else:
        df, nc = n_a + n_b - 2, effect / (sd * math.sqrt(1 / n_a + 1 / n_b))
    crit = scipy_stats.t.ppf(1 - alpha / 2, df)
    # P(T > crit) + P(T < -crit); the lower tail as P(T' > crit) with T' = -T ~ nct(df, -nc), because scipy's
    # nct.cdf returns nan far in the lower tail (df 1.5, nc 14) while its sf stays finite
    return float(scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.sf(crit, df, -nc))


def n_for_power(effect: float, sd: float, *, paired: bool, power: float = 0.8, alpha: float = 0.05,
                max_n: int = 100_000) -> Optional[int]:
    """The smallest n >= 2 (pairs; unpaired: runs per arm) whose :func:`t_test_power` is >= ``power``;
    None when ``effect`` is 0 or more than ``max_n`` would be needed. brentq on the continuous n, then
    the neighbouring integers checked."""
    def power_at(n: float) -> float:
        return t_test_power(effect, sd, n, None if paired else n, alpha=alpha)

    if effect == 0:
        return None
    if power_at(2) >= power:
        return 2
    high = 4
    while power_at(high) < power:
        if high >= max_n:
            return None
        high = min(2 * high, max_n)
    n = max(2, math.ceil(optimize.brentq(lambda x: power_at(x) - power, 2, high, xtol=1e-6) - 1e-6))
    while power_at(n) < power:
        n += 1
    while n > 2 and power_at(n - 1) >= power:
        n -= 1
    return n


def detectable_effect(sd: float, n_a: int, n_b: Optional[int] = None, *, power: float = 0.8,
                      alpha: float = 0.05) -> float:
    """The smallest |effect| the test detects with ``power`` at these n (brentq on :func:`t_test_power`)."""
    def gap(effect: float) -> float:
        return t_test_power(effect, sd, n_a, n_b, alpha=alpha) - power

    high = sd
    for _ in range(200):  # power -> 1 as the effect grows, slowly for df = 1
        if gap(high) >= 0:
            return float(optimize.brentq(gap, 0.0, high, xtol=sd * 1e-10))
        high *= 2
    raise ValueError(f"no effect reaches power {power} with sd {sd} and n {n_a}, {n_b}")


@dataclass(frozen=True)
class PowerAnalysis:
    """Planning for a two-sided t-test at ``alpha`` from an observed difference and spread.

    Paired: ``n_variant`` = ``n_baseline`` = pairs, ``sd`` of the differences, ``n_needed`` pairs.
    Unpaired: the runs on each side, the pooled sd, ``n_needed`` runs per arm. ``n_needed`` is None when
    the observed effect is 0 or it would take more than 100000; ``detectable`` is the smallest |effect|
    the current n detect with ``power``.
    """

    paired: bool
    n_variant: int
    n_baseline: int
    effect: float
    sd: float
    n_needed: Optional[int]
    detectable: float
    power: float = 0.8
    alpha: float = 0.05


def power_analysis(variant: Sequence[float], baseline: Sequence[float], *, paired: bool, power: float = 0.8,
                   alpha: float = 0.05) -> Optional[PowerAnalysis]:
    """From the data (paired: ``variant[i]`` and ``baseline[i]`` of seed i). None when not computable:
    fewer than 2 pairs (2 runs on a side) or no spread at all."""
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if paired:
        if a.shape != b.shape or a.size < 2:
            return None
        d = a - b
        if no_spread(d):
            return None
        effect, sd, n_b = float(d.mean()), float(d.std(ddof=1)), None
    else:
        if a.size < 2 or b.size < 2 or (no_spread(a) and no_spread(b)):
            return None
        effect, n_b = float(a.mean() - b.mean()), b.size
        sd = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    if not sd > 0:
        return None
    return PowerAnalysis(paired=paired, n_variant=int(a.size), n_baseline=int(b.size), effect=effect, sd=sd,
                         n_needed=n_for_power(effect, sd, paired=paired, power=power, alpha=alpha),
                         detectable=detectable_effect(sd, a.size, n_b, power=power, alpha=alpha),
                         power=power, alpha=alpha)


def seed_count(needed: Sequence[Optional[int]], floor: int, ceiling: int) -> tuple[int, str]:
    """A pre-registered study's pair count from its pilot: the largest of the pairs each primary comparison needs
    (``n_for_power``; None when no n reaches the power or the pilot shows no spread), clamped to [floor, ceiling].
    Returns the count and why it is that number, for the report."""
    known = [n for n in needed if n is not None]
    if not known or len(known) < len(needed):
        return ceiling, "a comparison no n reaches with 80% power (or no spread): the ceiling"
    n = min(max(max(known), floor), ceiling)
    why = "as computed" if n == max(known) else "raised to the floor" if n > max(known) else "capped at the ceiling"
    return n, why


def write_seed_count(folder, *, study: str, command: str, commit: str, pilot_seeds: Sequence[int],
                     rows: list[dict], bounds: tuple[int, int], write_into: str) -> dict:
    """A pre-registered study's seed count from its pilot, as ``folder/seed_counts.md`` and ``.json``: one row per
    primary comparison (``comparison``, ``delta`` and ``sd`` as fractions, shown x100, ``n_needed`` from
    :func:`n_for_power`), and the count :func:`seed_count` makes of them within ``bounds`` (floor, ceiling). Prints
    where to write it: ``write_into`` ("<file>: <line>") with the count for ``{n}``."""
    floor, ceiling = bounds
    n, why = seed_count([r["n_needed"] for r in rows], floor, ceiling)
    lines = [f"# The {study}'s seed count, from its pilot", "",
             f"`{command}` at commit {commit}; pilot seeds {sorted(pilot_seeds)}. Rule (experiments/README.md, "
             "written before the pilot): for each primary comparison the pairs a paired t-test needs for 80% power "
             "at two-sided α 0.05, the pilot's mean difference and sd taken as true; the largest, clamped to "
             f"[{floor}, {ceiling}].", "",
             "| comparison | mean difference (×100) | sd of the differences (×100) | pairs needed |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        sd = "–" if r["sd"] is None else f"{100 * r['sd']:.2f}"
        lines.append(f"| {r['comparison']} | {100 * r['delta']:+.2f} | {sd} | {r['n_needed'] or '–'} |")
    lines += ["", f"**N = {n}** pairs ({why})."]
    result = {"command": command, "commit": commit, "rows": rows, "n": n, "why": why, "bounds": [floor, ceiling]}
    Path(folder, "seed_counts.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(folder, "seed_counts.md").write_text("\n".join(lines) + "\n")
    script, line = write_into.format(n=n).split(": ", 1)
    print("\n".join(lines) + f"\n\n{script}:\n{line}  # pre-registered: pairs of the study")
    return result
