"""PNG pictures of a pipeline's output (matplotlib, Agg backend: files only, no display needed).

Inputs are the dataclasses of `inspection.output`; every function writes one PNG and
returns its path. The frame grid decodes a row's VQGAN codes back into frames.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files, whatever the user's default backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter  # noqa: E402

from inspection.document_lengths import DocumentLengths  # noqa: E402
from inspection.output import OutputSummary  # noqa: E402
from inspection.rows import RowView  # noqa: E402
from inspection.stage_stats import StageStats  # noqa: E402
from inspection.training_runs import LOSS_KEYS, LR_KEYS, TrainingRun  # noqa: E402
from curation.stages import applies_windows  # noqa: E402

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


def _stage_window(stats: StageStats, windows: bool = True) -> tuple[float, float | None, str]:
    """(low, high or None, label) of what a stage takes: its document-length window (books), or,
    for a stage without one or a job that applies none (QA, video, images: `windows` False), its
    row length, which bounds every example."""
    if windows and (stats.min_tokens > 0 or stats.max_tokens):
        upper = f"{stats.max_tokens:,}" if stats.max_tokens else "inf"
        return stats.min_tokens, stats.max_tokens, f"{stats.name}  [{stats.min_tokens:,}, {upper})"
    return stats.length, stats.length, f"{stats.name}  rows of {stats.length:,}"


def plot_document_lengths(documents: DocumentLengths, stages: list[StageStats], path: str | Path, title: str = "",
                          kind: str = "books") -> Path:
    """Histogram of document token lengths on a log axis (kept, and rejected where rejects give a
    length), with each stage's thresholds as vertical lines (solid: min_tokens, dashed:
    max_tokens, dotted: the row length of a stage without a window) and, below, one bar per stage
    spanning its window, so windows that share a threshold stay readable. Only books apply
    windows; for a QA, video or images job (`kind`) each stage shows its row length."""
    windowed = applies_windows(kind)
    default_title = "Document token lengths and stage windows" if windowed else "Example token lengths and stage row lengths"
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
            ax.set_title(title or default_title)
            return _save(fig, path)
        windows = [_stage_window(st, windowed) for st in stages]
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
        ax.set_title(title or default_title)
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
                              label + f"{summary.documents.unit} token lengths and stage "
                              + ("windows" if applies_windows(summary.kind) else "row lengths (no window applied)"),
                              kind=summary.kind),
        plot_tokens_per_stage(summary.stages, folder / "tokens_per_stage.png", label + "tokens per stage"),
        plot_docs_per_row(summary.stages, folder / "docs_per_row.png", label + "documents per row"),
        plot_loss_share(summary.stages, folder / "loss_share.png", label + "loss-mask share per stage"),
    ]


@dataclass
class FrameGrid:
    path: Path
    frames: list[int]  # frames shown per vision block, in row order
    total_frames: list[int]  # frames each of those blocks holds
    blocks_in_row: int
    undecodable: list[int] = field(default_factory=list)  # per block shown: frames that could not be decoded
    titles: list[str] = field(default_factory=list)  # the panels' titles, in order ("frame 3", "image", ...)

    @property
    def decoded(self) -> int:
        return sum(self.frames) - sum(self.undecodable)


def _frame_problem(codes: np.ndarray, side: int, codebook: int) -> str | None:
    """Why one frame's codes cannot be decoded by this VQGAN (None: they can)."""
    if codes.size != side * side:
        return f"{codes.size} codes, not {side}x{side}"
    if codes.size and (codes.min() < 0 or codes.max() >= codebook):
        bad = int(codes.max() if codes.max() >= codebook else codes.min())
        return f"code {bad} outside this VQGAN's codebook [0, {codebook})"
    return None


def _decode_frames(vqgan: VQGAN, codes: np.ndarray, side: int) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each frame decoded (None where it cannot be) and the reason it could not, in one VQGAN call
    for the decodable ones: a shard made with another VQGAN (a larger codebook) or a damaged row
    must still draw, with the frames it cannot show marked."""
    problems = [_frame_problem(c, side, vqgan.config.num_vq_embeddings) for c in codes]
    good = [i for i, p in enumerate(problems) if p is None]
    out: list[np.ndarray | None] = [None] * len(codes)
    if good:
        try:
            images = vqgan.decode(np.stack([codes[i].reshape(side, side) for i in good]))
        except Exception as err:  # the VQGAN itself fails (e.g. a grid it was not built for): mark, do not crash
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:80]
            return out, [p or reason for p in problems]
        for i, image in zip(good, images):
            out[i] = image
    return out, problems


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
    """A row's videos (or images, for an images job's shards) decoded back to frames (VQGAN.decode
    of their codes), one line per block beside its text (green: trained on, grey: conditioning).
    At most `max_frames` frames per video, spread evenly over it, and `max_blocks` blocks. A frame
    this VQGAN cannot decode (a code outside its codebook) is drawn as a marked empty panel."""
    blocks = row.vision_spans
    if not blocks:
        raise ValueError(f"row {row.row} of stage {row.stage} holds no vision tokens")
    images = row.kind == "images"
    what = "image" if images else "video"
    shown = blocks[:max_blocks]
    side = int(round(np.sqrt(shown[0][1].codes.shape[1])))
    decoded, problems, picks = [], [], []
    for _, span in shown:
        pick = np.unique(np.linspace(0, span.frames - 1, min(max_frames, span.frames)).round().astype(int))
        picks.append(pick)
        frames, why = _decode_frames(vqgan, span.codes[pick], side)
        decoded.append(frames)
        problems.append(why)
    cols = max(len(p) for p in picks)
    titles: list[str] = []
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig = plt.figure(figsize=(3.6 + 1.55 * cols, 1.9 * len(shown) + 0.9))
        grid = fig.add_gridspec(len(shown), cols + 1, width_ratios=[2.4] + [1] * cols)
        for i, ((seg, span), frames, why, pick) in enumerate(zip(shown, decoded, problems, picks)):
            ax = fig.add_subplot(grid[i, 0])
            ax.axis("off")
            size = f"{span.frames} frames" if not images or span.frames != 1 else "1 image"
            head = f"segment {seg.index}: {seg.doc_id} @ {seg.doc_start}\n{size}, {len(span):,} tokens"
            ax.text(0, 1, head, va="top", ha="left", fontsize=9, fontweight="bold", transform=ax.transAxes)
            for j, (line, color) in enumerate(_segment_text(seg.spans, 34, 7)):
                ax.text(0, 0.72 - 0.11 * j, line, va="top", ha="left", fontsize=8, color=color, transform=ax.transAxes)
            for j, (frame, problem, index) in enumerate(zip(frames, why, pick)):
                fax = fig.add_subplot(grid[i, j + 1])
                fax.set_xticks([])
                fax.set_yticks([])
                # doc_start of a video segment is the index of its first sampled frame.
                label = ("image" if span.frames == 1 else f"image {int(index)}") if images else f"frame {seg.doc_start + int(index)}"
                if frame is None:
                    label += ": not decoded"
                    fax.set_facecolor("#fbeaea")
                    fax.text(0.5, 0.5, "\n".join(textwrap.wrap(problem or "", 18)), ha="center", va="center",
                             fontsize=6.5, color="#b03a2e", transform=fax.transAxes)
                else:
                    fax.imshow(frame, interpolation="nearest")
                fax.set_title(label, fontsize=8, color="#b03a2e" if frame is None else "black")
                titles.append(label)
                for spine in fax.spines.values():
                    spine.set_visible(True)
                    spine.set_color("#b03a2e" if frame is None else TRAINED if span.trained else CONDITIONING)
                    spine.set_linewidth(2)
        more = f" (first {len(shown)} of {len(blocks)} {what}s)" if len(blocks) > len(shown) else ""
        noun = "images" if images else "frames"
        fig.suptitle(f"stage {row.stage}, row {row.row}: decoded {noun}{more}", fontweight="bold")
        fig.text(0.01, 0.005, f"text: green = trained on (loss > 0), grey = conditioning (no loss); "
                 f"border: green = {noun} trained on, grey = not, red = could not be decoded", fontsize=7.5, color="#555", va="bottom")
        out = _save(fig, path)
    undecodable = [sum(f is None for f in frames) for frames in decoded]
    return FrameGrid(out, [len(p) for p in picks], [span.frames for _, span in shown], len(blocks), undecodable, titles)


# ----------------------------------------------------------------------------------------------
# A training run's metrics
# ----------------------------------------------------------------------------------------------

# The PNGs `longctx inspect RUN` writes for a training run (learning_rate.png only when logged).
TRAINING_PLOTS = ("train_loss.png", "train_learning_rate.png", "train_grad_norm.png", "train_tokens_per_s.png")


def _run_panel(ax, runs: list[TrainingRun], keys: tuple[str, ...], styles: dict[str, str]) -> int:
    """Each run's `keys` against the global step (stages one after another, a dotted line where a
    stage begins). Returns how many lines were drawn."""
    offset, drawn = 0, 0
    colors = _colors(len(runs))
    for i, (run, color) in enumerate(zip(runs, colors)):
        for key in keys:
            steps, values = run.series(key)
            if not steps.size:
                continue
            label = key.replace("_", " ") + (f" ({run.name})" if len(runs) > 1 else "")
            ax.plot(steps + offset, values, linestyle=styles.get(key, "-"), color=color if len(runs) > 1 else None,
                    linewidth=1.4, marker="o" if steps.size < 30 else None, markersize=3, label=label)
            drawn += 1
        if len(runs) > 1:
            if i:
                ax.axvline(offset, color="#888", linestyle=":", linewidth=1)
            ax.text(offset, 1.0, f" {run.name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color=color)
        offset += max(run.last_step, run.planned_steps or 0) if len(runs) > 1 else 0
    return drawn


def plot_training_runs(runs: list[TrainingRun], folder: str | Path) -> list[Path]:
    """Loss (text and vision when logged), learning rate (when logged), grad norm and tokens/s of
    a run, or of a train-stages folder's stages one after another, as PNGs in `folder`."""
    folder = Path(folder)
    panels = [("train_loss.png", LOSS_KEYS, "loss", "Training loss"),
              ("train_learning_rate.png", LR_KEYS, "learning rate", "Learning rate"),
              ("train_grad_norm.png", ("grad_norm",), "global grad norm", "Gradient norm"),
              ("train_tokens_per_s.png", ("tokens_per_s",), "tokens / s", "Throughput")]
    styles = {"text_loss": "--", "vision_loss": ":"}
    written = []
    for name, keys, ylabel, title in panels:
        if keys is LR_KEYS and not any(run.lr_key for run in runs):
            continue  # the trainer did not log it: no empty picture
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(8.5, 4.2))
            if not _run_panel(ax, runs, keys, styles):
                _empty(ax, f"no {ylabel} logged")
            else:
                ax.set_xlabel("step" + (" (stages one after another)" if len(runs) > 1 else ""))
                ax.set_ylabel(ylabel)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"))
                ax.legend(fontsize=8, frameon=False, loc="best")
            label = runs[0].name if len(runs) == 1 else f"{len(runs)} stages"
            ax.set_title(f"{title}: {label}")
            written.append(_save(fig, folder / name))
    return written
