"""Figures, their medians and ratios, and BENCHMARKS.md written from them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Figure:
    """One measured figure of one system: every run's value, and what it is compared with."""

    scenario: str
    what: str
    system: str
    unit: str
    values: list[float] = field(default_factory=list)
    # The system whose figure of the same scenario and run this one is divided by.
    baseline: str | None = None
    # A target as a ratio to the baseline (`ratio_at_least`, `ratio_at_most`) or a bound
    # on the value.
    ratio_at_least: float | None = None
    ratio_at_most: float | None = None
    at_most: float | None = None
    at_least: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        """The median of the runs."""
        return statistics.median(self.values) if self.values else float("nan")


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(figure: Figure, figures: Sequence[Figure]) -> float | None:
    """The figure's median over its baseline's median, from the same run."""
    if figure.baseline is None:
        return None
    for other in figures:
        if (other.scenario, other.what, other.system) == (
            figure.scenario,
            figure.what,
            figure.baseline,
        ):
            if not other.values or other.median == 0:
                return None
            return figure.median / other.median
    return None


def verdict(figure: Figure, figures: Sequence[Figure], *, smoke: bool) -> str:
    """'met', 'missed (…)' or '' when the figure has no target (or this is a smoke run)."""
    if smoke:
        return ""
    if figure.ratio_at_least is not None:
        r = ratio(figure, figures)
        if r is None:
            return "no baseline"
        return (
            "met" if r >= figure.ratio_at_least else f"missed (target ≥ {figure.ratio_at_least}x)"
        )
    if figure.ratio_at_most is not None:
        r = ratio(figure, figures)
        if r is None:
            return "no baseline"
        return "met" if r <= figure.ratio_at_most else f"missed (target ≤ {figure.ratio_at_most}x)"
    if figure.at_least is not None and figure.values:
        ok = figure.median >= figure.at_least
        return "met" if ok else f"missed (target ≥ {_fmt(figure.at_least)} {figure.unit})"
    if figure.at_most is not None:
        ok = figure.median <= figure.at_most
        return "met" if ok else f"missed (target ≤ {_fmt(figure.at_most)} {figure.unit})"
    return ""


def render(
    figures: Sequence[Figure],
    *,
    machine: dict[str, str],
    command: str,
    date: str,
    runs: int,
    smoke: bool,
    notes: Sequence[str],
) -> str:
    """BENCHMARKS.md: the machine, the command, then one table per scenario."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (`make bench`); do not edit by hand: run it again.",
        "",
        f"- Date (UTC): {date}",
        f"- Command: `{command}`",
        f"- Runs per figure: {runs} (median, with min-max); ratios are to the baseline"
        " measured in the same run.",
    ]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    if smoke:
        lines += ["", "**Smoke run: tiny sizes, one run, no targets. Not figures to quote.**"]
    scenarios: list[str] = []
    for figure in figures:
        if figure.scenario not in scenarios:
            scenarios.append(figure.scenario)
    for scenario in scenarios:
        lines += [
            "",
            f"## {scenario}",
            "",
            "| figure | system | median | min-max | unit | ratio to baseline | target |",
            "| --- | --- | ---: | --- | --- | --- | --- |",
        ]
        for f in (f for f in figures if f.scenario == scenario):
            r = ratio(f, figures)
            span = f"{_fmt(min(f.values))}-{_fmt(max(f.values))}" if f.values else "not built"
            shown_ratio = f"{r:.2f}x {f.baseline}" if r is not None else ""
            note = f" ({f.note})" if f.note else ""
            lines.append(
                f"| {f.what}{note} | {f.system} | {_fmt(f.median)} | {span} | {f.unit} "
                f"| {shown_ratio} | {verdict(f, figures, smoke=smoke)} |"
            )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Write the report."""
    path.write_text(text)
