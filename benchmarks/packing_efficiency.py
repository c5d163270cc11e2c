"""Packing efficiency of best-fit-decreasing (`plan_rows`) on synthetic book lengths.

Document lengths are log-normal around a median of 100K tokens, wide enough that about 1% of
documents pass 1M. For every LWM stage the documents in its window are cut into windows with
`cut_windows` and the windows packed with `plan_rows`; first-fit in arrival order (a naive
packer written here) runs on the same windows for comparison.

    python benchmarks/packing_efficiency.py [--docs 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/packing_efficiency.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import LoadSpan  # noqa: E402
from curation.packing import SegmentRef, packing_efficiency, plan_rows  # noqa: E402
from curation.stages import LWM_STAGES, Stage, cut_windows  # noqa: E402


def synthetic_lengths(docs: int, seed: int, median: float, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(math.log(median), sigma, docs)).astype(np.int64)


def stage_segments(lengths: np.ndarray, stage: Stage, min_tail: int) -> tuple[list[SegmentRef], int, int]:
    """The windows of the stage's documents in arrival order; and documents and dropped tokens."""
    segments, docs, dropped = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        if not stage.accepts(n):
            continue
        docs += 1
        windows, lost = cut_windows(n, stage.length, min_tail)
        dropped += lost
        segments += [SegmentRef(f"d{i}@{w.start}", f"d{i}", w.start, w.length) for w in windows]
    return segments, docs, dropped


def first_fit(sizes: list[int], capacity: int) -> int:
    """Rows used by first-fit in arrival order: each window goes to the lowest-numbered row with
    room. A max segment tree over rows' free space finds that row in O(log n), where a plain
    scan would be quadratic in the tens of thousands of rows here."""
    size = 1
    while size < max(1, len(sizes)):
        size *= 2
    tree = [capacity] * (2 * size)  # leaves: free space of rows 0..size-1 (unopened rows are empty)
    used = 0
    for s in sizes:
        node = 1
        while node < size:  # descend to the leftmost leaf with free >= s
            node = 2 * node if tree[2 * node] >= s else 2 * node + 1
        used = max(used, node - size + 1)
        tree[node] -= s
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return used


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="synthetic documents")
    parser.add_argument("--seed", type=int, default=0, help="numpy RNG seed")
    parser.add_argument("--median", type=float, default=100_000, help="median document length in tokens")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma (1.0: about 1%% of documents over 1M)")
    parser.add_argument("--min-tail", type=int, default=1024, help="min_tail_tokens passed to cut_windows")
    args = parser.parse_args(argv)

    lengths = synthetic_lengths(args.docs, args.seed, args.median, args.sigma)
    print(
        f"{args.docs} documents, seed {args.seed}: median {np.median(lengths):,.0f} tokens, "
        f"mean {lengths.mean():,.0f}, max {lengths.max():,}, over 1M: {(lengths >= 1_000_000).sum()}, "
        f"min_tail {args.min_tail}"
    )
    print(
        "\n| stage | L | docs | windows | tokens | dropped tail | lower-bound rows "
        "| BFD rows | BFD eff. | BFD plan s | first-fit rows | first-fit eff. | first-fit s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with LoadSpan() as load:  # the plan times are only as good as how idle the CPUs were
        for stage in LWM_STAGES.values():
            segments, docs, dropped = stage_segments(lengths, stage, args.min_tail)
            tokens = sum(s.length for s in segments)
            start = time.perf_counter()
            rows = len(plan_rows(segments, stage.length, seed=args.seed))
            bfd_s = time.perf_counter() - start
            start = time.perf_counter()
            ff_rows = first_fit([s.length for s in segments], stage.length)
            ff_s = time.perf_counter() - start
            bound = -(-tokens // stage.length)  # no packing can use fewer rows
            print(
                f"| {stage.name} | {stage.length} | {docs} | {len(segments)} | {tokens:,} | {dropped:,} | {bound} "
                f"| {rows} | {packing_efficiency(tokens, rows, stage.length):.4f} | {bfd_s:.2f} "
                f"| {ff_rows} | {packing_efficiency(tokens, ff_rows, stage.length):.4f} | {ff_s:.2f} |"
            )
    print(f"\nload average before -> after: {load}")


if __name__ == "__main__":
    main()
