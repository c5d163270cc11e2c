"""`longctx eval loss-by-position`: mean next-token loss per position bucket over a stage's rows
(evals/loss_by_position.py); longctx/cli.py wires it. Writes OUT/loss_by_position.json, .csv
and .png and prints the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="longctx params checkpoint (RUN/checkpoints/final) or HF LLaMA folder")
    parser.add_argument("--data", required=True, help="a stage folder of shards (e.g. out/books/32k)")
    parser.add_argument("--rows", type=int, default=64, help="rows scored, evenly spaced over the stage (default: %(default)s)")
    parser.add_argument("--batch-rows", type=int, default=4, help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--buckets", default="log",
                        help="log: log-spaced buckets 1, 2, 4, ...; or a window width in tokens (1024, 4k) (default: %(default)s)")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel devices for ring attention (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=512, help="ring attention query/key chunk (default: %(default)s)")
    parser.add_argument("--name", help="label of the curve (default: from the checkpoint path)")
    parser.add_argument("--out", required=True, help="output folder")


def run_loss_by_position(args: argparse.Namespace, console: Console) -> int:
    from evals.loss_by_position import loss_by_position, parse_buckets, summarize_table, write_outputs
    from training.checkpoint import load_any_params
    from training.data import StageData

    buckets = parse_buckets(args.buckets)
    data = StageData.open(args.data)  # before the model: a wrong folder fails fast
    config, params = load_any_params(args.checkpoint)
    path = Path(args.checkpoint)
    name = args.name or (path.parents[1].name if path.name == "final" and path.parent.name == "checkpoints" else path.name)

    def progress(done: int, total: int) -> None:
        console.print(f"rows {done}/{total}", highlight=False)

    summary = loss_by_position(config, params, data, rows=args.rows, batch_rows=args.batch_rows, buckets=buckets,
                               sp=args.sp, chunk=args.chunk, progress=progress)
    summary = {"model": name, "checkpoint": args.checkpoint, "data": args.data, **summary}
    paths = write_outputs(summary, args.out, name)
    table = Table(title=f"{name}: mean next-token loss by position ({summary['tokens']} targets, {summary['rows']} rows)")
    for column in ("positions", "targets", "loss"):
        table.add_column(column, justify="right")
    for row in summarize_table(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
