"""The needle-in-a-haystack heatmap in the style of the LWM paper's figures (after G. Kamradt's):
context length across, needle depth down (0 % at the top), score from red (0) through yellow to
green (1), thin white cell borders, mean score in the title."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Kamradt's palette, which the LWM figures reuse.
COLORS = ("#F0496E", "#EBB839", "#0CD79F")


def length_label(tokens: int) -> str:
    """4096 -> '4K', 1048576 -> '1M', 1536 -> '1.5K', 1000 -> '1000'."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if tokens >= size and (tokens * 10) % size == 0:
            return f"{tokens / size:g}{unit}"
    return str(tokens)


def plot_heatmap(lengths: Sequence[int], depths: Sequence[float], scores: np.ndarray, path: str | Path, *,
                 model: str = "", annotate: bool | None = None, title: str | None = None) -> Path:
    """Write `scores` [len(depths), len(lengths)] (NaN = not run) as a PNG heatmap at `path`.
    Cells are annotated with their score by default when the grid is small enough to read them."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in threads and on servers
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(depths), len(lengths)):
        raise ValueError(f"scores must be [depths, lengths] = {(len(depths), len(lengths))}, got {scores.shape}")
    annotate = scores.size <= 200 if annotate is None else annotate
    cmap = LinearSegmentedColormap.from_list("niah", COLORS).with_extremes(bad="#DDDDDD")  # grey: not run
    mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(lengths) + 3), max(4.0, 0.4 * len(depths) + 2)))
    image = ax.imshow(np.ma.masked_invalid(scores), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], rotation=45 if len(lengths) > 8 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Depth percent")
    # White borders between cells, as in the paper's figures.
    ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    if annotate:
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if np.isfinite(scores[i, j]):
                    ax.text(j, i, f"{scores[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="Score")
    heading = f"Needle in a haystack, mean score {mean:.2f}"
    ax.set_title(title or (f"{model}\n{heading}" if model else heading), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
