"""Small matplotlib helpers for the benchmark figures (headless, PNG, about 100 KB each)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def ratio_bars(
    path: Path,
    groups: Sequence[str],
    series: dict[str, list[tuple[float, float, float]]],
    *,
    title: str,
    ylabel: str,
    targets: dict[str, float] | None = None,
) -> None:
    """Grouped bars of ratios with [q1, q3] whiskers; `series[name]` holds (median, q1, q3) per group."""
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))]
        medians = [value[0] for value in values]
        errors = [[value[0] - value[1] for value in values], [value[2] - value[0] for value in values]]
        axis.bar(positions, medians, width, yerr=errors, capsize=3, label=name)
        for x, median in zip(positions, medians):
            axis.text(x, median, f"{median:.2f}", ha="center", va="bottom", fontsize=7)
    axis.axhline(1.0, color="black", linewidth=0.8)
    for label, value in (targets or {}).items():
        axis.axhline(value, color="red", linestyle="--", linewidth=0.8)
        axis.text(len(groups) - 0.5, value, label, color="red", fontsize=7, ha="right", va="bottom")
    axis.set_xticks(range(len(groups)), groups)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def lines(
    path: Path,
    series: dict[str, tuple[list[float], list[float], list[float] | None, list[float] | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    reference_slope: float | None = None,
) -> None:
    """Line plot; `series[name]` = (x, median, q1 or None, q3 or None). With `reference_slope`, a dotted
    y ~ x**slope line through the first point of the first series (on log-log axes)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, (xs, medians, lows, highs) in series.items():
        axis.plot(xs, medians, marker="o", label=name)
        if lows is not None and highs is not None:
            axis.fill_between(xs, lows, highs, alpha=0.2)
    if reference_slope is not None and series:
        xs, medians, _, _ = next(iter(series.values()))
        reference = [medians[0] * (x / xs[0]) ** reference_slope for x in xs]
        axis.plot(xs, reference, linestyle=":", color="gray", label=f"slope {reference_slope:g} (linear)")
    if log:
        axis.set_xscale("log")
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
