"""The main, scaling and churn tables of a run as rows of text, which the terminal report and
Markdown lay out (the program budget's rows: program_budget.py)."""

from __future__ import annotations

from .run import REFERENCE
from .verdicts import Spread, ratio_range, scaling_kept

ROWS = [  # figure, label, format
    ("ka1_rps", "ka1 req/s", "{:,.0f}"),
    ("ka16_rps", "ka16 req/s", "{:,.0f}"),
    ("ka1_p50_us", "ka1 p50 µs", "{:,.0f}"),
    ("ka1_p99_us", "ka1 p99 µs", "{:,.0f}"),
    ("cps16", "cps16 conn/s", "{:,.0f}"),
    ("crr1_p50_us", "crr1 p50 µs", "{:,.0f}"),
    ("crr1_p99_us", "crr1 p99 µs", "{:,.0f}"),
    ("bulk_mbps", "bulk Mbit/s", "{:,.0f}"),
    ("conntrack_entries", "conntrack", "{:,.0f}"),
]


def figure_cell(document: dict, mode: str, figure: str, fmt: str) -> tuple[str, float | None, Spread]:
    """A main-table cell: the value as text, its ratio to explicit (None for explicit) and that
    ratio's range over the rounds."""
    value = document["modes"][mode].get(figure)
    ratio = None if mode == REFERENCE else document["ratios"][mode].get(figure)
    if value is None:
        return "-", None, None
    return fmt.format(value), ratio, None if ratio is None else ratio_range(document, mode, figure)


def scaling_rows(document: dict) -> tuple[list[str], list[tuple]]:
    """The scaling table: its sizes, and per mode (mode, [(rate, ratio to explicit, its range)] per size,
    rate kept from the smallest to the largest N, kernel entries and install time at the
    largest N), as text; a ratio is None for explicit."""
    sizes = list(next(iter(document["scaling"].values())))
    rows = []
    for mode, by_size in document["scaling"].items():
        ratios = document["scaling_ratios"][mode]
        rates = [
            (
                f"{by_size[s]:,.0f}",
                None if mode == REFERENCE else ratios[s],
                ratio_range(document, mode, s, "scaling_samples"),
            )
            for s in sizes
        ]
        kept = scaling_kept(document, mode)
        entries = document["scaling_capture_entries"].get(mode, {}).get(sizes[-1])
        install = document["scaling_install_seconds"].get(mode, {}).get(sizes[-1])
        rows.append(
            (
                mode,
                rates,
                "-" if mode == REFERENCE or kept is None else f"{kept:.2f}×",
                "-" if entries is None else f"{entries:,}",
                "-" if install is None else f"{install:.2f} s",
            )
        )
    return sizes, rows


def bracketed(text: str, ratio: float | None, spread: Spread) -> str:
    if ratio is None:
        return text
    return f"{text} ({ratio:.2f}×{f', {range_text(spread)}' if spread else ''})"


def range_text(spread: tuple[float, float]) -> str:
    return f"{spread[0]:.2f}–{spread[1]:.2f}"


CHURN_COLUMNS = ("mode", "connections", "errors", "EADDRNOTAVAIL", "rate /s", "connect p50", "connect p99")


def churn_rows(document: dict) -> list[tuple[str, ...]]:
    """The churn workload, a row a mode (CHURN_COLUMNS); none if it did not run."""
    rows: list[tuple[str, ...]] = []
    for mode, run in ((document.get("churn") or {}).get("modes") or {}).items():
        rows.append(
            (
                mode,
                f"{run['connections']:,}",
                f"{run['errors']:,}",
                f"{run['eaddrnotavail']:,}",
                f"{run['rate']:,.0f}",
                f"{run['connect_p50_us']:,.0f} µs",
                f"{run['connect_p99_us']:,.0f} µs",
            )
        )
    return rows


def churn_legend(document: dict) -> str:
    churn = document["churn"]
    sysctls = (document.get("env") or {}).get("pod_sysctls") or {}
    settings = ", ".join(f"{key.rsplit('.', 1)[-1]} {value}" for key, value in sysctls.items())
    return (
        f"Churn: {churn['rate']:,} short connections/s offered for {churn['seconds']} s, one at a time, "
        "round-robin over 64 services (explicit: its sidecar), the app closing first so that TIME_WAIT stays "
        "on its side; EADDRNOTAVAIL: connects that found no source port. Pod sysctls as the kernel sets them"
        + (f": {settings}." if settings else ".")
    )
