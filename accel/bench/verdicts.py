"""Whether a run met accel's targets: each target's ratio, a 95% confidence interval over the
per-round ratios, and the verdict (met, missed, or not separated from noise)."""

from __future__ import annotations

import math
import statistics

from .run import REFERENCE

# What the project aims for: (mode, figure, against, bound, at least?). A target whose modes are not
# in the run is skipped.
TARGETS = [
    ("ebpf", "cps16", REFERENCE, 0.97, True),
    ("ebpf", "cps16", "iptables-nft", 1.15, True),
    ("ebpf", "crr1_p50_us", REFERENCE, 1.03, False),
    ("ebpf", "ka16_rps", REFERENCE, 0.97, True),
    ("ebpf", "ka1_p50_us", REFERENCE, 1.03, False),
    ("ebpf+sockmap", "cps16", REFERENCE, 0.97, True),
    ("ebpf+sockmap", "cps16", "iptables-nft", 1.15, True),
    ("ebpf+sockmap", "crr1_p50_us", REFERENCE, 1.03, False),
    ("ebpf+sockmap", "ka1_rps", REFERENCE, 1.05, True),
    ("ebpf+sockmap", "ka16_rps", REFERENCE, 1.05, True),
    ("ebpf+sockmap", "bulk_mbps", REFERENCE, 1.10, True),
    ("ebpf+sockmap", "ka1_p50_us", REFERENCE, 0.95, False),
]

MET, MISSED, NOISE = "met", "missed", "not separated from noise"

ROUNDS_CAP = 40  # more rounds than this, on this VM, is not a suggestion anyone will follow
# Student's t, two-sided 95% (the 0.975 quantile), for 1 to 30 degrees of freedom
T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
Z_975 = 1.959964

Spread = tuple[float, float] | None


def round_ratios(
    document: dict, mode: str, figure: str, against: str = REFERENCE, samples: str = "samples"
) -> list[float]:
    """Each round's value of `mode` divided by `against`'s from the same round (rounds interleave
    the modes, so a round's drift divides out), over the rounds where both are positive."""
    by_mode = document.get(samples) or {}
    values, references = by_mode.get(mode, {}).get(figure), by_mode.get(against, {}).get(figure)
    return [
        value / reference
        for value, reference in zip(values or (), references or ())
        if value is not None and reference is not None and value > 0 and reference > 0
    ]


def ratio_range(document: dict, mode: str, figure: str, samples: str = "samples") -> Spread:
    """The lowest and highest ratio to explicit over the rounds, each round against explicit in
    the same round. The median ratio lies between them. None for explicit itself, or with fewer
    than two rounds."""
    if mode == REFERENCE:
        return None
    ratios = round_ratios(document, mode, figure, REFERENCE, samples)
    return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def scaling_kept(document: dict, mode: str) -> float | None:
    """The rate a mode keeps at the largest N against the smallest, each × explicit at that N."""
    by_size = document["scaling_ratios"].get(mode)
    if not by_size:
        return None
    sizes = list(by_size)
    first, last = by_size[sizes[0]], by_size[sizes[-1]]
    return last / first if first and last else None


def t_quantile(df: int) -> float:
    """Student's t 0.975 quantile (the half-width of a two-sided 95% interval, in standard errors)
    for df degrees of freedom: the table to 30, beyond it the Cornish-Fisher expansion around the
    normal quantile (within 1e-5 there; the normal value in the limit)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def _log_stats(ratios: list[float]) -> tuple[int, float, float]:
    """The number of ratios, the mean and the standard deviation of their logs (two ratios or more)."""
    logs = [math.log(r) for r in ratios]
    return len(logs), statistics.fmean(logs), statistics.stdev(logs)


def ratio_interval(ratios: list[float]) -> tuple[float, float] | None:
    """A 95% confidence interval for the typical ratio (the geometric mean of the per-round ratios):
    Student's t on the mean of the log ratios, taken back to ratios. None with fewer than two rounds."""
    if len(ratios) < 2:
        return None
    n, mean, sd = _log_stats(ratios)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


def rounds_needed(ratios: list[float], bound: float) -> int | None:
    """The fewest rounds whose 95% interval would probably leave `bound` out: the smallest n whose
    t half-width, with the log ratios' observed spread, is below the distance from their mean to
    the bound (on log scale). None with fewer than two rounds (no spread to go by) or when it
    would take ROUNDS_CAP rounds or more."""
    if len(ratios) < 2:
        return None
    _, mean, sd = _log_stats(ratios)
    gap = abs(mean - math.log(bound))
    return next((n for n in range(2, ROUNDS_CAP) if t_quantile(n - 1) * sd / math.sqrt(n) < gap), None)


def _verdict(interval: tuple[float, float] | None, bound: float, at_least: bool) -> str:
    """MET when the whole interval satisfies the target, MISSED when none of it does, NOISE when it
    holds the bound (or there is no interval)."""
    if interval is None:
        return NOISE
    low, high = interval
    if at_least:
        return MET if low >= bound else MISSED if high < bound else NOISE
    return MET if high <= bound else MISSED if low > bound else NOISE


def target_verdicts(document: dict) -> list[dict]:
    """Each target this run can judge (both its modes ran, both have the figure). The estimate is
    the ratio of the medians, as the table shows it; the 95% interval comes from the per-round
    ratios (each round of the mode against the same round of `against`), and the verdict from
    where it lies against the bound. rounds_needed (only when not separated from noise): how many
    rounds would probably separate it; None when one round gives no spread to go by, or past
    ROUNDS_CAP."""
    verdicts, modes = [], document["modes"]
    for mode, figure, against, bound, at_least in TARGETS:
        if mode not in modes or against not in modes:
            continue
        value, reference = modes[mode].get(figure), modes[against].get(figure)
        if not value or not reference:
            continue
        ratios = round_ratios(document, mode, figure, against)
        interval = ratio_interval(ratios)
        verdict = _verdict(interval, bound, at_least)
        verdicts.append(
            {
                "mode": mode,
                "figure": figure,
                "against": against,
                "bound": bound,
                "at_least": at_least,
                "estimate": round(value / reference, 4),
                "ci_low": None if interval is None else round(interval[0], 4),
                "ci_high": None if interval is None else round(interval[1], 4),
                "rounds": len(ratios),
                "verdict": verdict,
                "rounds_needed": rounds_needed(ratios, bound) if verdict == NOISE else None,
            }
        )
    return verdicts


def target_text(verdict: dict) -> str:
    sign = "≥" if verdict["at_least"] else "≤"
    return f"{verdict['mode']} {verdict['figure']} {sign} {verdict['bound']:.2f}× {verdict['against']}"


def interval_text(verdict: dict) -> str:
    rounds = verdict["rounds"]
    if verdict["ci_low"] is None:
        return f"{rounds} round{'s' if rounds != 1 else ''}, no interval"
    return f"95% CI {verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}, {rounds} rounds"


def advice(verdict: dict) -> str:
    """What would settle a verdict not separated from noise."""
    if verdict["rounds"] < 2:
        return "no spread over rounds to judge it by: run three rounds or more"
    if verdict["rounds_needed"] is None:
        return f"≥ {max(ROUNDS_CAP, verdict['rounds'] + 1)} rounds: too close to call on this VM"
    return f"about {verdict['rounds_needed']} rounds would probably separate it"
