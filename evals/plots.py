"""Pictures of RULER runs (`longctx eval ruler`, `longctx eval report`): score against context length
per task with the threshold line, and the task x length heatmap. evals/niah_plot.py draws the NIAH
depth x length heatmap; evals/loss_by_position.py the loss-by-position curves.

Every function takes summaries as evals/runner.py writes them (summary.json: scores in percent,
lengths as string keys), so a chart can be redrawn from the files of any earlier run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evals.niah_plot import COLORS, length_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def score_rows(summary: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """{task: {length: score}} with the all-task average last, as `average`."""
    rows = {task: {int(n): float(s) for n, s in by.items()} for task, by in summary["tasks"].items()}
    rows["average"] = {int(n): float(s) for n, s in summary["average"].items()}
    return rows


def plot_scores_by_length(runs: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """One panel per task (and the average), score against length (log scale), one line per run,
    a dashed line at each run's threshold."""
    if not runs:
        raise ValueError("no run to plot")
    plt = _pyplot()
    rows = {label: score_rows(summary) for label, summary in runs.items()}
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r if t != "average")) + ["average"]
    cols = min(4, len(tasks))
    lines = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.4 * cols, 2.8 * lines), squeeze=False, sharey=True)
    lengths = sorted({n for r in rows.values() for by in r.values() for n in by})
    thresholds = sorted({float(s["threshold"]) for s in runs.values()})
    for ax, task in zip(axes.flat, tasks):
        for label, r in rows.items():
            points = sorted(r.get(task, {}).items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        for threshold in thresholds:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_title(task, fontsize=9, fontweight="bold" if task == "average" else "normal")
        ax.set_ylim(-3, 103)
        if len(lengths) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [length_label(n) for n in lengths], fontsize=7)
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("score (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(runs) > 1 and handles:
        fig.legend(handles, labels, loc="lower right", fontsize=8)
    bar = ", ".join(f"{t:g}" for t in thresholds)
    fig.suptitle(title or f"RULER score by context length (dashed: threshold {bar})", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_task_heatmap(summary: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Tasks down (the average last), lengths across; red (0) to green (100), grey where not run."""
    plt = _pyplot()
    from matplotlib.colors import LinearSegmentedColormap

    rows = score_rows(summary)
    tasks = list(rows)
    lengths = [int(n) for n in summary["lengths"]]
    grid = np.array([[rows[t].get(n, np.nan) for n in lengths] for t in tasks], dtype=float)
    cmap = LinearSegmentedColormap.from_list("ruler", COLORS).with_extremes(bad="#DDDDDD")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(lengths) + 3), 0.38 * len(tasks) + 1.8))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(tasks)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for i in range(len(tasks)):
        for j in range(len(lengths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="score (%)")
    effective = summary.get("effective_length")
    heading = f"effective length {length_label(effective) if effective else 'below the shortest'}"
    model = summary.get("model") or ""
    ax.set_title(title or (f"{model}: {heading}" if model else heading), fontsize=10)
    ax.set_xlabel("context length (tokens)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_ruler_plots(summary: Mapping[str, Any], out: str | Path) -> list[Path]:
    """OUT/scores_by_length.png and OUT/heatmap.png of one run."""
    out = Path(out)
    label = summary.get("model") or "model"
    return [plot_scores_by_length({label: summary}, out / "scores_by_length.png"),
            plot_task_heatmap(summary, out / "heatmap.png")]
