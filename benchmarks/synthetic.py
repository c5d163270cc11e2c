"""Synthetic inputs that benchmarks and tests both need, made here so neither imports the other.

- **Videos** (`write_video`): a bright square moving over a blue gradient, written with PyAV; the
  square's position in every frame is known (`square_center`), so tests can check decoded frames.
- **Book corpora** (`make_blocks`): blocks of synthetic books whose token lengths are log-normal
  around a median, stratified per block with at least one book per block past `tail_factor` x the
  median. Each book is paragraphs sampled from the 7 real sample novels, so tokenizing costs what
  it costs on real prose, under a unique first line, so deduplication keeps it. The corpus of size
  k is blocks 0..k-1: 1x is inside 4x is inside 16x, and every 1x of data has the same length
  distribution. `block_lengths` gives the same lengths without writing any book.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"

# ---------------------------------------------------------------------------------------------
# Videos

SQUARE = 24  # side of the moving bright square, in pixels


def square_center(t: int, w: int, h: int) -> tuple[float, float]:
    """Center (x, y) of the bright square in frame t of a w x h video, in source pixels: it moves
    along the long side, inside the centered square the crop keeps (70..250 for 320 px)."""
    x0 = 75 + 3 * t if w >= h else (w - SQUARE) // 2
    y0 = (h - SQUARE) // 2 if w >= h else 75 + 3 * t
    return x0 + SQUARE / 2, y0 + SQUARE / 2


def write_video(path: Path, w: int, h: int, n: int = 40, fps: int = 10, faststart: bool = False) -> Path:
    """An n-frame w x h video at `fps` (H.264 if this PyAV has x264, else MPEG-4 part 2) at `path`;
    `faststart` puts the index before the frames."""
    import av  # only the callers that write videos need PyAV

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        try:
            stream = out.add_stream("libx264", rate=fps)
            stream.options = {"preset": "ultrafast", "g": "10"}
        except Exception:  # a PyAV build without x264
            stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(n):
            img = np.full((h, w, 3), 30, np.uint8)
            img[:, :, 2] = np.linspace(0, 80, w, dtype=np.uint8)[None, :]  # a blue gradient
            cx, cy = square_center(t, w, h)
            x0, y0 = int(cx - SQUARE / 2), int(cy - SQUARE / 2)
            img[y0:y0 + SQUARE, x0:x0 + SQUARE] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------
# Book corpora


def add_corpus_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say which synthetic book corpora a benchmark builds (`scaling.py` and
    `packing_memory.py` take the same ones, so their corpora agree)."""
    parser.add_argument("--sizes", default="1,4,16", help="corpus sizes as multiples of the base corpus")
    parser.add_argument("--base-books", type=int, default=12, help="books per block (= the 1x corpus); 12 at the default median is ~2.5M tokens, ~40%% of them in the tail book; with --median-tokens 20000, 72 books is ~2M tokens with a smaller tail share")
    parser.add_argument("--median-tokens", type=int, default=100_000, help="median book length in tokens (log-normal)")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of book lengths")
    parser.add_argument("--tail-factor", type=float, default=10.0, help="every block has a book of at least this x the median tokens")
    parser.add_argument("--files-per-x", type=int, default=4, help="JSONL.gz files per block (file size stays constant as the corpus grows)")
    parser.add_argument("--stages", help="stage list (default: LWM-like windows scaled to --median-tokens)")


def corpus_spec(args: argparse.Namespace) -> tuple[list[int], str]:
    """(sizes, stages) from the `add_corpus_args` flags; stages default to `default_stages`."""
    return [int(s) for s in args.sizes.split(",") if s], args.stages or default_stages(args.median_tokens)


def corpus_header(args: argparse.Namespace, sizes: list[int], stages: str) -> str:
    """What a benchmark on these corpora prints first: a NOTE when lengths are scaled down from the
    default 100K-token median, then the corpus and packing-group settings."""
    lines = []
    if args.median_tokens != 100_000:
        lines.append(f"NOTE: book lengths scaled down: median {args.median_tokens:,} tokens instead of 100K "
                     f"(tail book >= {args.tail_factor * args.median_tokens:,.0f} tokens instead of 1M); stages scaled alike.")
    lines.append(f"sizes {sizes} x {args.base_books} books; lengths log-normal(median {args.median_tokens:,}, sigma {args.sigma}); "
                 f"stages {stages}; pack_group_tokens {args.pack_group_tokens:,}")
    return "\n".join(lines)


def paragraph_pool(spec: str, corpus: Path = SAMPLE) -> tuple[list[str], np.ndarray]:
    """The sample novels' paragraphs (Gutenberg header/footer stripped) and their token counts."""
    from curation.text import strip_gutenberg
    from curation.tokenize import load_tokenizer

    paragraphs: list[str] = []
    with gzip.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = strip_gutenberg(json.loads(line)["text"].replace("\r\n", "\n"))
                paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    tok, _ = load_tokenizer(spec)
    counts = np.array([len(e.ids) for e in tok.encode_batch(paragraphs, add_special_tokens=False)], dtype=np.int64)
    return paragraphs, counts


def book_lengths(n: int, median: int, sigma: float, tail_factor: float, rng: np.random.Generator) -> np.ndarray:
    """n log-normal token lengths, stratified (one draw per 1/n quantile band, then shuffled) so
    that every block has about the same total. If none reaches tail_factor x median, the longest
    is redrawn from the log-normal's own tail beyond that point, so every block has a book past it."""
    normal = NormalDist()
    bands = (np.arange(n) + rng.uniform(0.0, 1.0, n)) / n
    z = np.array([normal.inv_cdf(min(max(u, 1e-12), 1 - 1e-12)) for u in bands])
    lengths = np.exp(math.log(median) + sigma * z)
    threshold = tail_factor * median
    if n and lengths.max() < threshold:
        p0 = normal.cdf((math.log(threshold) - math.log(median)) / sigma)
        tail_z = normal.inv_cdf(p0 + (1 - p0) * rng.uniform(0.05, 0.95))
        lengths[int(lengths.argmax())] = math.exp(math.log(median) + sigma * tail_z)
    return np.maximum(rng.permutation(lengths).round().astype(np.int64), 64)


def block_lengths(blocks: int, books: int, median: int, sigma: float, tail_factor: float, seed: int) -> list[list[int]]:
    """The book token lengths `make_blocks` draws (its first draw from each block's generator),
    without writing the books: the same corpora, for measurements that need only lengths."""
    return [book_lengths(books, median, sigma, tail_factor, np.random.default_rng([seed, block])).tolist()
            for block in range(blocks)]


def book_path(block: int, b: int, files: int) -> str:
    """The file (relative to the corpus folder) `make_blocks` writes book b of a block to."""
    return f"block-{block:04d}-part-{b % files:03d}.jsonl.gz"


def book_id(block: int, b: int) -> str:
    return f"synth-{block:04d}-{b:05d}"


def make_blocks(folder: Path, blocks: int, books: int, files: int, median: int, sigma: float, tail_factor: float,
                paragraphs: list[str], counts: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """`blocks` independent blocks of `books` synthetic books, each block in `files` JSONL.gz files.
    The corpus of size k is blocks 0..k-1, so 1x is inside 4x is inside 16x and every 1x of data
    has the same length distribution (one tail book per block included)."""
    folder.mkdir(parents=True, exist_ok=True)
    mean_par = float(counts.mean())
    out = []
    for block in range(blocks):
        rng = np.random.default_rng([seed, block])
        lengths = book_lengths(books, median, sigma, tail_factor, rng)
        paths = [folder / book_path(block, i, files) for i in range(files)]
        made_tokens = 0
        text_bytes = 0
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(gzip.open(p, "wt", encoding="utf-8", compresslevel=1)) for p in paths]
            for b, target in enumerate(lengths):
                picked: list[int] = []
                have = 0
                while have < target:
                    draw = rng.integers(0, len(paragraphs), int((target - have) / mean_par * 1.2) + 8)
                    cum = have + np.cumsum(counts[draw])
                    stop = int(np.searchsorted(cum, target)) + 1  # first index reaching the target
                    picked += draw[:stop].tolist()
                    have = int(cum[min(stop, len(cum)) - 1])
                bid = book_id(block, b)
                # A unique first line: distinct content hash, so deduplication keeps every book.
                head = f"Synthetic book {bid} (seed {seed}), {int(target)} tokens of sampled paragraphs."
                text = head + "\n\n" + "\n\n".join(paragraphs[i] for i in picked)
                made_tokens += have
                text_bytes += len(text.encode("utf-8"))
                handles[b % files].write(json.dumps({"id": bid, "text": text}) + "\n")
        out.append({
            "files": [str(p) for p in paths],
            "gz_bytes": sum(p.stat().st_size for p in paths),
            "text_bytes": text_bytes,
            "sampled_tokens": made_tokens,
            "lengths": lengths.tolist(),
        })
    return out


def corpus_of(blocks: list[dict[str, Any]], size: int, median: int, tail_factor: float) -> dict[str, Any]:
    """The corpus of the first `size` blocks, with its statistics."""
    part = blocks[:size]
    lengths = np.array([n for b in part for n in b["lengths"]])
    return {
        "inputs": [f for b in part for f in b["files"]],
        "books": len(lengths),
        "files": sum(len(b["files"]) for b in part),
        "gz_bytes": sum(b["gz_bytes"] for b in part),
        "text_bytes": sum(b["text_bytes"] for b in part),
        "sampled_tokens": sum(b["sampled_tokens"] for b in part),
        "median_tokens": int(np.median(lengths)),
        "mean_tokens": int(lengths.mean()),
        "max_tokens": int(lengths.max()),
        "over_tail": int((lengths >= tail_factor * median).sum()),
    }


def default_stages(median: int) -> str:
    """LWM-like stages scaled to the median: short books -> 8k rows, mid -> 32k, long -> 128k.
    At the default median 100K: 8k=[10K,100K), 32k=[100K,300K), 128k=[300K,inf)."""
    m = median
    return f"8k=8192:{m // 10}-{m},32k=32768:{m}-{3 * m},128k=131072:{3 * m}-"
