"""PNG pictures of a pipeline's output (matplotlib, Agg backend: files only, no display needed).

Inputs are the dataclasses of `curation.inspect_output`; every function writes one PNG and
returns its path. The frame grid decodes a row's VQGAN codes back into frames.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, whatever the user's default backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter  # noqa: E402

from curation.inspect_output import DocumentLengths, OutputSummary, RowView, StageStats  # noqa: E402

if TYPE_CHECKING:
    from curation.vqgan import VQGAN

DPI = 120
TRAINED = "#2e9e4f"  # positions with loss (the --row output uses the same green)
CONDITIONING = "#9aa5b1"
PADDING = "#e4e7eb"
KEPT = "#44546a"  # kept documents in the length histogram
STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titleweight": "bold",
    "axes.titlesize": 12,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 10,
}
THOUSANDS = FuncFormatter(lambda x, _: f"{x:,.0f}")


def _short(n: float) -> str:
    """1,234,567 -> 1.2M, for labels on bars."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:,.0f}"


# Stage colours: tab10 without its red and green, which mean "rejected" and "trained" here.
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def _colors(n: int) -> list[str]:
    return [STAGE_COLORS[i % len(STAGE_COLORS)] for i in range(n)]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    return path


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _stage_window(stats: StageStats) -> tuple[float, float | None, str]:
    """(low, high or None, label) of what a stage takes: its document-length window, or, for a
    stage without one (video, QA), its row length, which bounds every example."""
    if stats.min_tokens > 0 or stats.max_tokens:
        upper = f"{stats.max_tokens:,}" if stats.max_tokens else "inf"
        return stats.min_tokens, stats.max_tokens, f"{stats.name}  [{stats.min_tokens:,}, {upper})"
    return stats.length, stats.length, f"{stats.name}  rows of {stats.length:,}"


def plot_document_lengths(documents: DocumentLengths, stages: list[StageStats], path: str | Path, title: str = "") -> Path:
    """Histogram of document token lengths on a log axis (kept, and rejected where rejects give a
    length), with each stage's thresholds as vertical lines (solid: min_tokens, dashed:
    max_tokens, dotted: the row length of a stage without a window) and, below, one bar per stage
    spanning its window, so windows that share a threshold stay readable."""
    kept = np.asarray(sorted(documents.kept), float)
    kept_counts = np.asarray([documents.kept[n] for n in sorted(documents.kept)], float)
    rejected = {reason: np.asarray(v, float) for reason, v in documents.rejected.items() if v}
    everything = np.concatenate([kept, *rejected.values()])
    everything = everything[everything > 0]
    with plt.rc_context(STYLE):
        rows = max(len(stages), 1)
        fig, (ax, strip) = plt.subplots(
            2, 1, figsize=(9, 4.6 + 0.28 * rows), sharex=True, layout="constrained",
            gridspec_kw={"height_ratios": [4.2, 0.35 * rows + 0.4]},
        )
        if not everything.size:
            _empty(ax, "no documents with a known length")
            strip.axis("off")
            ax.set_title(title or "Document token lengths and stage windows")
            return _save(fig, path)
        windows = [_stage_window(st) for st in stages]
        bounds = [b for low, high, _ in windows for b in (low, high) if b]
        lo = min([everything.min(), *bounds]) / 1.4
        hi = max([everything.max(), *bounds]) * 1.4
        bins = np.geomspace(lo, hi, 40)
        # Kept lengths come counted (length -> how many), so they are weighted, never expanded.
        data = [kept] + list(rejected.values())
        weights = [kept_counts] + [np.ones(len(v)) for v in rejected.values()]
        labels = [f"kept ({documents.kept_count:,} {documents.unit}s)"] + [f"rejected: {r} ({len(v):,})" for r, v in rejected.items()]
        colors = [KEPT] + [plt.get_cmap("Reds")(0.75 - 0.15 * i) for i in range(len(rejected))]
        ax.hist(data, bins=bins, weights=weights, stacked=True, label=labels, color=colors, edgecolor="white", linewidth=0.6)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(THOUSANDS)
        ax.set_ylabel(f"{documents.unit}s")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
        ax.set_title(title or "Document token lengths and stage windows")
        for i, ((low, high, label), color) in enumerate(zip(windows, _colors(len(stages)))):
            y = len(stages) - 1 - i
            if low == high:  # no window: the row length
                ax.axvline(low, color=color, linestyle=":", linewidth=1.5, alpha=0.9)
                strip.plot([low], [y], marker="|", markersize=14, color=color, markeredgewidth=2.5)
            else:
                if low > 0:
                    ax.axvline(low, color=color, linestyle="-", linewidth=1.5, alpha=0.85)
                if high:
                    ax.axvline(high, color=color, linestyle="--", linewidth=1.5, alpha=0.85)
                left = low if low > 0 else lo
                strip.barh(y, (high or hi) - left, left=left, height=0.55, color=color, alpha=0.85)
        # Stage names (and windows) label the strip's rows, in each stage's colour.
        strip.set_yticks(range(len(stages) - 1, -1, -1), [label for _, _, label in windows], fontsize=8)
        for tick, color in zip(strip.get_yticklabels(), _colors(len(stages))):
            tick.set_color(color)
            tick.set_fontweight("bold")
        strip.set_ylim(-0.6, len(stages) - 0.4)
        strip.grid(False)
        strip.spines["left"].set_visible(False)
        strip.set_xlabel(f"{documents.unit} length (tokens, log scale)")
        strip.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        strip.xaxis.set_major_formatter(THOUSANDS)
        strip.xaxis.set_minor_formatter(NullFormatter())
        return _save(fig, path)


def plot_tokens_per_stage(stages: list[StageStats], path: str | Path, title: str = "") -> Path:
    """Tokens per stage, stacked: trained (loss > 0), conditioning (no loss), padding; labelled
    with the packing efficiency."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6, 2.1 * len(stages) + 3.5), 4.6))
        if not stages:
            _empty(ax, "no stages")
            return _save(fig, path)
        names = [s.name for s in stages]
        x = np.arange(len(stages))
        trained = np.array([s.loss_tokens for s in stages], float)
        conditioning = np.array([s.tokens - s.loss_tokens for s in stages], float)
        padding = np.array([s.padding for s in stages], float)
        ax.bar(x, trained, color=TRAINED, label="tokens with loss")
        ax.bar(x, conditioning, bottom=trained, color=CONDITIONING, label="tokens without loss (conditioning)")
        ax.bar(x, padding, bottom=trained + conditioning, color=PADDING, edgecolor="#c0c4c8", label="padding")
        for i, s in enumerate(stages):
            ax.text(i, s.capacity, f"{_short(s.tokens)} tokens\n{100 * s.packing_efficiency:.1f}% packed\n{100 * s.loss_share:.1f}% with loss",
                    ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, [f"{n}\n{s.rows:,} rows\nx {s.length:,}" for n, s in zip(names, stages)], fontsize=9)
        ax.yaxis.set_major_formatter(THOUSANDS)
        ax.set_ylim(0, max(1, max(s.capacity for s in stages)) * 1.25)
        ax.set_ylabel("tokens")
        ax.set_title(title or "Tokens per stage")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="x", visible=False)
        return _save(fig, path)


def plot_docs_per_row(stages: list[StageStats], path: str | Path, title: str = "") -> Path:
    """How many documents (packed segments) share a row, one panel per stage."""
    with plt.rc_context(STYLE):
        n = max(len(stages), 1)
        fig, axes = plt.subplots(1, n, figsize=(max(5, 3.6 * n), 3.8), squeeze=False)
        for ax, stats, color in zip(axes[0], stages, _colors(len(stages))):
            if not stats.rows:
                _empty(ax, "no rows")
            else:
                ks = sorted(stats.docs_per_row)
                bars = ax.bar(ks, [stats.docs_per_row[k] for k in ks], color=color, width=0.8)
                if len(ks) <= 12:
                    ax.bar_label(bars, labels=[f"{stats.docs_per_row[k]:,}" for k in ks], fontsize=8, padding=2)
                    ax.set_xticks(ks)
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                # From 1 (a row holds at least one document), and never narrower than two bars.
                ax.set_xlim(0.4, max(max(ks), 2) + 0.6)
                ax.set_ylim(0, max(stats.docs_per_row.values()) * 1.15)
                ax.yaxis.set_major_formatter(THOUSANDS)
                ax.set_xlabel("documents in the row")
                ax.grid(axis="x", visible=False)
            ax.set_title(f"{stats.name}: mean {stats.mean_docs_per_row:.2f}", fontsize=11)
        if not stages:
            _empty(axes[0][0], "no stages")
        axes[0][0].set_ylabel("rows")
        fig.suptitle(title or "Documents per row", fontweight="bold")
        return _save(fig, path)


def plot_loss_share(stages: list[StageStats], path: str | Path, title: str = "") -> Path:
    """Per stage, the share of non-padding tokens with loss, and (vision shards) of vision tokens."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(stages) + 3), 4.2))
        if not stages:
            _empty(ax, "no stages")
            return _save(fig, path)
        x = np.arange(len(stages))
        vision = any(s.vision_share is not None for s in stages)
        width = 0.38 if vision else 0.6
        loss = [s.loss_share for s in stages]
        bars = ax.bar(x - (width / 2 if vision else 0), loss, width, color=TRAINED, label="tokens with loss")
        ax.bar_label(bars, labels=[f"{100 * v:.1f}%" for v in loss], fontsize=9, padding=2)
        if vision:
            shares = [s.vision_share or 0.0 for s in stages]
            vbars = ax.bar(x + width / 2, shares, width, color="#8e44ad", label="vision tokens")
            ax.bar_label(vbars, labels=[f"{100 * v:.1f}%" for v in shares], fontsize=9, padding=2)
        ax.set_xticks(x, [s.name for s in stages])
        ax.set_ylim(0, 1.12)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel("share of non-padding tokens")
        ax.set_title(title or "Loss-mask share per stage")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="x", visible=False)
        return _save(fig, path)


def write_summary_plots(summary: OutputSummary, folder: str | Path) -> list[Path]:
    """The four summary pictures of an output, into `folder`."""
    folder = Path(folder)
    label = f"{summary.kind}: "
    return [
        plot_document_lengths(summary.documents, summary.stages, folder / "document_lengths.png",
                              label + f"{summary.documents.unit} token lengths and stage windows"),
        plot_tokens_per_stage(summary.stages, folder / "tokens_per_stage.png", label + "tokens per stage"),
        plot_docs_per_row(summary.stages, folder / "docs_per_row.png", label + "documents per row"),
        plot_loss_share(summary.stages, folder / "loss_share.png", label + "loss-mask share per stage"),
    ]


@dataclass
class FrameGrid:
    path: Path
    frames: list[int]  # frames decoded per vision block shown, in row order
    total_frames: list[int]  # frames each of those blocks holds
    blocks_in_row: int


def _segment_text(spans, width: int, max_lines: int) -> list[tuple[str, str]]:
    """(line, colour) pairs of a segment's text runs, wrapped; conditioning grey, trained green."""
    lines: list[tuple[str, str]] = []
    for span in spans:
        if span.kind == "vision":
            lines.append((f"[{span.frames} frames]", "#8e44ad"))
            continue
        text = span.text + (f" … {span.elided:,} tokens … " + span.tail if span.elided else "")
        text = text.replace("<s>", "").replace("</s>", "").strip()
        if not text:
            continue
        color = TRAINED if span.trained else "#6b7785"
        for line in textwrap.wrap(text, width) or [""]:
            lines.append((line, color))
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [("…", "#6b7785")]
    return lines


def plot_frame_grid(row: RowView, vqgan: VQGAN, path: str | Path, max_frames: int = 8, max_blocks: int = 4) -> FrameGrid:
    """A row's videos decoded back to frames (VQGAN.decode of their codes), one line per video
    beside its text (green: trained on, grey: conditioning). At most `max_frames` frames per
    video, spread evenly over it, and `max_blocks` videos."""
    blocks = row.vision_spans
    if not blocks:
        raise ValueError(f"row {row.row} of stage {row.stage} holds no vision tokens")
    shown = blocks[:max_blocks]
    side = int(round(np.sqrt(shown[0][1].codes.shape[1])))
    decoded, picks = [], []
    for _, span in shown:
        pick = np.unique(np.linspace(0, span.frames - 1, min(max_frames, span.frames)).round().astype(int))
        picks.append(pick)
        decoded.append(vqgan.decode(span.codes[pick].reshape(len(pick), side, side)))
    cols = max(len(p) for p in picks)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig = plt.figure(figsize=(3.6 + 1.55 * cols, 1.9 * len(shown) + 0.9))
        grid = fig.add_gridspec(len(shown), cols + 1, width_ratios=[2.4] + [1] * cols)
        for i, ((seg, span), frames, pick) in enumerate(zip(shown, decoded, picks)):
            ax = fig.add_subplot(grid[i, 0])
            ax.axis("off")
            head = f"segment {seg.index}: {seg.doc_id} @ {seg.doc_start}\n{span.frames} frames, {len(span):,} tokens"
            ax.text(0, 1, head, va="top", ha="left", fontsize=9, fontweight="bold", transform=ax.transAxes)
            for j, (line, color) in enumerate(_segment_text(seg.spans, 34, 7)):
                ax.text(0, 0.72 - 0.11 * j, line, va="top", ha="left", fontsize=8, color=color, transform=ax.transAxes)
            for j, (frame, index) in enumerate(zip(frames, pick)):
                fax = fig.add_subplot(grid[i, j + 1])
                fax.imshow(frame, interpolation="nearest")
                fax.set_xticks([])
                fax.set_yticks([])
                # doc_start of a video segment is the index of its first sampled frame.
                fax.set_title(f"frame {seg.doc_start + int(index)}", fontsize=8)
                for spine in fax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(TRAINED if span.trained else CONDITIONING)
                    spine.set_linewidth(2)
        more = f" (first {len(shown)} of {len(blocks)} videos)" if len(blocks) > len(shown) else ""
        fig.suptitle(f"stage {row.stage}, row {row.row}: decoded frames{more}", fontweight="bold")
        fig.text(0.01, 0.005, "text: green = trained on (loss > 0), grey = conditioning (no loss); "
                 "frame border: green = frames trained on, grey = not", fontsize=7.5, color="#555", va="bottom")
        out = _save(fig, path)
    return FrameGrid(out, [len(p) for p in picks], [span.frames for _, span in shown], len(blocks))
