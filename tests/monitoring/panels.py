"""Draws a Grafana dashboard's panels from a real Prometheus's answers, laid out on the
dashboard's own grid, for docs/MONITORING.md: Grafana's server is in neither Debian 12,
PyPI nor npm, so this shows the same queries' data rather than Grafana's pixels."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#fade2a", "#96d98d", "#ffb357"]
ROW_HEIGHT = 0.42  # inches per grid unit of height; the grid is 24 units wide


@dataclass(frozen=True)
class Series:
    """One answer of a range query: its labels and (unix time, value) points."""

    labels: Mapping[str, str]
    points: Sequence[tuple[float, float]]


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's `{{label}}` legend format."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or "value"


def _format(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.2f}%"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "reqps":
        return f"{value:,.0f} req/s"
    if abs(value) >= 10_000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def render(dashboard: Mapping[str, Any], answers: Mapping[tuple[int, str], list[Series]],
           start: float, path: Path, title: str) -> None:
    """Every panel of `dashboard`, with `answers[(panel id, target refId)]`, into one PNG;
    time axes in seconds since `start`."""
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, height * ROW_HEIGHT + 0.6), facecolor=BACKGROUND)
    fig.suptitle(title, color=TEXT, x=0.01, ha="left", fontsize=13)
    top = 1 - 0.6 / (height * ROW_HEIGHT + 0.6)
    for panel in panels:
        pos = panel["gridPos"]
        # Room inside the grid cell for the tick labels (left, bottom) and the title (top).
        left, bottom, title = (0.006, 0.006, 0.018) if panel["type"] == "stat" else (0.03, 0.022, 0.018)
        x, w = pos["x"] / 24, pos["w"] / 24
        y, h = top * (1 - (pos["y"] + pos["h"]) / height), top * pos["h"] / height
        ax = fig.add_axes([x + left, y + bottom, w - left - 0.006, h - bottom - title],
                          facecolor=PANEL)
        ax.set_title(panel["title"], color=TEXT, fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color(GRID)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = [(target, s) for target in panel["targets"]
                  for s in answers.get((panel["id"], target["refId"]), [])]
        if panel["type"] == "stat":
            _stat(ax, series, unit)
        else:
            _timeseries(ax, series, unit, start)
    fig.savefig(path, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)


def _stat(ax: Any, series: list[tuple[dict[str, Any], Series]], unit: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    last = [s.points[-1][1] for _, s in series if s.points]
    text = _format(sum(last), unit) if last else "No data"
    ax.text(0.5, 0.45, text, color=PALETTE[0], fontsize=20, ha="center", va="center",
            transform=ax.transAxes, fontweight="bold")


def _timeseries(ax: Any, series: list[tuple[dict[str, Any], Series]], unit: str,
                start: float) -> None:
    ax.tick_params(colors=TEXT, labelsize=7)
    ax.grid(color=GRID, linewidth=0.5)
    if not series:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=ax.transAxes)
        return
    for i, (target, s) in enumerate(sorted(series, key=lambda ts: legend(
            ts[0].get("legendFormat", ""), ts[1].labels))):
        xs = [t - start for t, _ in s.points]
        ys = [v * 1000 if unit == "s" else v for _, v in s.points]
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linewidth=1,
                label=legend(target.get("legendFormat", ""), s.labels))
    ax.set_xlabel("seconds", color=TEXT, fontsize=7)
    if unit == "s":
        ax.set_ylabel("ms", color=TEXT, fontsize=7)
    ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
              ncol=3)
