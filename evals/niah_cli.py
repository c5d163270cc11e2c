"""`longctx eval niah`: the needle-in-a-haystack grid from the command line (longctx/cli.py wires it).

`--format lwm` asks in the LWM release's own words and placement (evals/niah.py).
Writes OUT/results.jsonl (one record per prompt, as it runs; as for `eval ruler`, a rerun into the
same folder keeps the cells already there and runs the others, and a folder made with other
settings is refused: evals/resume.py), OUT/results.csv and OUT/heatmap.png (the cells of this run's
grid, old and new), and prints the score grid. Heavy imports (JAX, torch) wait until a model is actually loaded.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from curation.progress import progress_line
from evals.model_cli import (add_model_arguments, check_at_least_one, model_name, model_weights_saved, parse_depths_flag,
                             parse_lengths_flag, prepare_model)

SAMPLE_BOOKS = Path(__file__).resolve().parents[1] / "data" / "sample" / "books.jsonl.gz"


def add_niah_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, ", run through transformers for comparison")
    parser.add_argument("--tokenizer", help="tokenizer spec as for `longctx books` (default for --hf-model, and for a Hugging Face --checkpoint "
                        "folder holding tokenizer files: the model's own)")
    parser.add_argument("--haystack", default=str(SAMPLE_BOOKS),
                        help="book text: a JSONL/Parquet/txt file, folder or glob, or a stage folder of shards "
                             "(default: the sample books)")
    parser.add_argument("--lengths", default="1k,2k,4k",
                        help="context lengths in tokens: 1k,2k,4k or 1k..32k:8 (8 log-spaced lengths)")
    parser.add_argument("--depths", default="5", help="needle depths: a count (evenly 0..100 %%) or percents 0,25,50")
    parser.add_argument("--needles", type=int, default=1, help="needles inserted per prompt (N)")
    parser.add_argument("--ask", type=int, default=1, help="needles asked for per prompt (R <= N)")
    parser.add_argument("--format", dest="niah_format", choices=("longctx", "lwm"), default="longctx",
                        help="longctx: our needle at an exact token depth; lwm: the LWM release's needle, question, "
                             "instruction and sentence-end placement (default: %(default)s)")
    parser.add_argument("--scoring", choices=("contains", "exact"), default="contains",
                        help="contains (default, as the LWM release scores): the fraction of asked numbers that "
                             "appear in the answer; exact: the answer is those numbers and nothing else")
    parser.add_argument("--samples", type=int, default=1, help="prompts per (length, depth) cell")
    parser.add_argument("--seed", type=int, default=0, help="seeds the facts and the haystack offsets")
    parser.add_argument("--max-new-tokens", type=int, help="answer length limit (default 16 + 12 per asked needle)")


def run_niah(args: argparse.Namespace, console: Console) -> int:
    from evals import niah
    from evals.haystack import load_haystack
    from evals.niah_plot import length_label, plot_heatmap
    from evals.resume import ResultsFolder

    lengths, depths = parse_lengths_flag(args.lengths), parse_depths_flag(args.depths)
    # Before the model loads: no samples would score nothing (a nan mean), and 0 new tokens no answer.
    check_at_least_one("--samples", args.samples)
    check_at_least_one("--max-new-tokens", args.max_new_tokens)
    tokenizer, name, load_model = prepare_model(args, model_name(args), max(lengths),
                                                lambda text: console.print(f"[yellow]note: {text}[/]"))
    # A rerun resumes, as `eval ruler` does: the cells already in OUT/results.jsonl are kept, not
    # recomputed; a damaged line or a folder made with other settings is refused before the weights load.
    settings = niah.niah_settings(name, tokenizer, fmt=args.niah_format, needles=args.needles, ask=args.ask,
                                  scoring=args.scoring, max_new_tokens=args.max_new_tokens, haystack=args.haystack,
                                  weights_saved=model_weights_saved(args))
    folder = ResultsFolder(Path(args.out), "niah", settings, niah.record_from_json)
    records = [niah.record_from_json(r) for r in folder.read()]
    done = {niah.cell_key(r) for r in records}
    total = sum(len(todo) for *_, todo in niah.pending_cells(lengths, depths, args.samples, args.seed, done))
    # Twice the longest context: room for the seeded offsets to pick different text per sample.
    haystack = load_haystack(args.haystack, tokenizer, max_tokens=2 * max(lengths))
    generator = load_model()

    def progress():
        start, count = time.monotonic(), 0
        for record in niah.run_grid(generator, tokenizer, haystack, lengths, depths, needles=args.needles,
                                    ask=args.ask, samples=args.samples, seed=args.seed, scoring=args.scoring,
                                    max_new_tokens=args.max_new_tokens, fmt=args.niah_format,
                                    batch_size=args.batch_size, done=done):
            records.append(record)
            count += 1
            console.print(f"{length_label(record.length):>6} depth {record.depth:5.1f}% sample {record.sample}: "
                          f"score {record.score:.2f} ({record.seconds:.1f} s) expected {' '.join(record.expected)}, "
                          f"answer {record.answer[:60]!r}", highlight=False)
            line = progress_line("scored", "cells", count, total, time.monotonic() - start)
            console.print(f"  {line}", style="dim", highlight=False)
            yield record.as_json()

    for _ in folder.append(progress()):  # written as the grid runs
        pass
    grid = niah.grid_records(records, lengths, depths, args.samples, args.seed)  # old cells and new
    out = folder.out
    niah.write_csv(grid, out / "results.csv")
    grid_lengths, grid_depths, scores = niah.score_grid(grid)
    variant = "" if args.needles == 1 else f", {args.needles} needles, {args.ask} asked"
    variant += ", LWM format" if args.niah_format == "lwm" else ""
    plot_heatmap(grid_lengths, grid_depths, scores, out / "heatmap.png", model=f"{name}{variant} ({args.scoring})")
    console.print(score_table(grid_lengths, grid_depths, scores))
    console.print(f"{name}: mean score {float(np.nanmean(scores)):.2f} over {len(grid)} prompts", highlight=False)
    console.print(f"wrote {out / 'results.csv'}, {out / 'results.jsonl'} and {out / 'heatmap.png'}")
    return 0


def score_table(lengths: list[int], depths: list[float], scores: np.ndarray) -> Table:
    """The grid as a rich table: depths down, lengths across, as in the heatmap."""
    from evals.niah_plot import length_label

    table = Table(title="mean score")
    table.add_column("depth %", justify="right")
    for length in lengths:
        table.add_column(length_label(length), justify="right")
    for depth, row in zip(depths, scores):
        cells = []
        for s in row:
            color = "green" if s >= 0.8 else "yellow" if s >= 0.4 else "red"
            cells.append("-" if math.isnan(s) else f"[{color}]{s:.2f}[/]")
        table.add_row(f"{depth:g}", *cells)
    return table
