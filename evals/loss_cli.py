"""`longctx eval loss-by-position`: mean next-token loss per position bucket over a stage's rows or
over rows cut from raw books (evals/loss_sources.py), for our JAX checkpoints
(evals/loss_by_position.py) or any transformers causal LM (evals/hf_loss.py); longctx/cli.py
wires it. Writes OUT/loss_by_position.json, .csv and .png and prints the table."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from curation.sources import BOOK_FILES
from curation.units import parse_count
from evals.model_cli import check_at_least_one, check_hf_model_path, check_results_folder, check_torch_device, model_name


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="longctx params checkpoint (RUN/checkpoints/final) or HF LLaMA folder, "
                                            "run with our JAX model")
    model.add_argument("--hf-model", help="any local transformers causal LM folder (GPT-2, Qwen, Mistral, ...) or "
                                          "package:DIST/model.gguf, run with torch; remote code is never run")
    parser.add_argument("--data", required=True,
                        help=f"a stage folder of shards (e.g. out/books/32k), or raw books: a {BOOK_FILES} file or a "
                             "folder of them (held-out books, cut into rows of --length tokens)")
    parser.add_argument("--length", help="raw books only: tokens per row (4096, 4k); each book is cut into "
                                         "consecutive rows of exactly this length, the shorter tail left out")
    parser.add_argument("--tokenizer", help="raw books only: tokenizer spec (default: the model's own; for a "
                                            "checkpoint, its training data's)")
    parser.add_argument("--text-field", default="text", help="raw books only: JSONL/Parquet text field (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=64, help="rows scored, evenly spaced over the data (default: %(default)s)")
    parser.add_argument("--batch-rows", type=int, default=4, help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--buckets", default="log",
                        help="log: log-spaced buckets 1, 2, 4, ...; or a window width in tokens (1024, 4k) (default: %(default)s)")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel devices for ring attention (--checkpoint) (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=512, help="ring attention query/key chunk (--checkpoint) (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (--hf-model) (default: %(default)s)")
    parser.add_argument("--name", help="label of the curve (default: from the model path)")
    parser.add_argument("--out", required=True, help="output folder")


def book_tokenizer(args: argparse.Namespace, hf_folder: str | None) -> tuple[Any, int | None, str]:
    """(tokenizer, BOS id to prepend or None, spec) for cutting raw books: --tokenizer, else the HF
    model's own, else the checkpoint's training data's (with its add_bos), else the HF LLaMA folder's."""
    from curation.tokenize import load_tokenizer

    spec, add_bos = args.tokenizer, True
    if spec is None and hf_folder is not None:
        spec = hf_folder
    elif spec is None:
        from training.checkpoint import is_params_checkpoint

        if is_params_checkpoint(args.checkpoint):
            from training.hf import run_data_tokenizer

            recorded, why = run_data_tokenizer(args.checkpoint)
            if recorded is None:
                raise ValueError(f"raw books need a tokenizer: give --tokenizer ({why})")
            spec, add_bos = str(recorded.record["name"]), recorded.add_bos
        else:
            spec = args.checkpoint
    tokenizer, info = load_tokenizer(spec)
    if args.tokenizer and hf_folder is None:  # the books would be cut into ids the checkpoint reads as other text
        from training.hf import check_checkpoint_tokenizer

        check_checkpoint_tokenizer(args.checkpoint, info, spec)
    return tokenizer, (info.bos_id if add_bos else None), spec


def check_hf_data_tokenizer(model_folder: str, data: str, shard_record: dict[str, Any] | None) -> str:
    """Refuse (ValueError, one line) shards whose tokenizer has another vocabulary size or other
    special ids than the --hf-model's own tokenizer: the model would score other text for the
    same ids, with no word. Returns a note when only the file differs (same vocabulary size and
    special ids, e.g. a tokenizer.model and its tokenizer.json) or the model's tokenizer cannot
    be read; "" when they agree or the shards record none."""
    from curation.tokenize import load_tokenizer

    if not shard_record or not shard_record.get("vocab_size"):
        return ""
    try:
        _, info = load_tokenizer(model_folder)
    except (ValueError, OSError) as err:
        return f"the shards' tokenizer was not compared with the model's, whose own cannot be loaded ({err})"
    names = ("vocab_size", "bos_id", "eos_id", "pad_id")
    diff = [f"{n} {getattr(info, n)} != {shard_record.get(n)}" for n in names if getattr(info, n) != shard_record.get(n)]
    if diff:
        raise ValueError(f"--data {data} was made with tokenizer {shard_record.get('name')!r}, not the --hf-model's own "
                         f"({', '.join(diff)}): its ids stand for other text; score shards made with the model's tokenizer")
    if shard_record.get("sha256") and info.sha256 != shard_record["sha256"]:
        return (f"the shards were made with tokenizer {shard_record.get('name')!r}, another file than the model's "
                f"(sha256 {str(shard_record['sha256'])[:12]} != {info.sha256[:12]}); its vocabulary size and special ids match")
    return ""


def check_vision_fits(data_spec: str, shard: Any, model: Any | None, model_flag: str) -> None:
    """Refuse (ValueError, one line) vision shards the model cannot read: a text-only model (a
    transformers --hf-model, `model` None; or a checkpoint without vision_layout) would take the
    VQGAN codes for text ids and score the captions after them as if those were text; a vision
    checkpoint of another layout would read other ids. `shard`: the stage's ShardMetadata. Text
    shards always pass."""
    if shard.vision is None:
        return
    layout = shard.vision.get("layout")
    if model is None or model.vision_layout == "none":
        reader = "a transformers model" if model is None else "the checkpoint's model"
        raise ValueError(f"--data {data_spec} holds vision rows ({layout!r} VQGAN codes beside the text); {reader} "
                         f"reads text only ({model_flag}), so it would read the codes as text ids: score a "
                         "vision-language checkpoint (--checkpoint, a run with vision_layout), or a text stage")
    from training.vision import expected_vision_metadata, vision_problems

    problems = vision_problems(shard, expected_vision_metadata(model))
    if problems:
        raise ValueError(f"--data {data_spec} holds vision rows of another layout than the checkpoint's model reads "
                         f"({'; '.join(problems)})")


def run_loss_by_position(args: argparse.Namespace, console: Console) -> int:
    from evals.loss_by_position import loss_by_position, parse_buckets, summarize_table, write_outputs
    from evals.loss_sources import check_data_file, is_book_source, read_book_rows
    try:
        buckets = parse_buckets(args.buckets)
    except ValueError as err:
        raise ValueError(f"--buckets {err}") from None
    # Every flag is said as itself, before any data or model is read.
    # --sp 0 divided the length by zero; -1 (training.mesh's "every device") made a negative ring chunk.
    for flag, value in (("--chunk", args.chunk), ("--sp", args.sp), ("--rows", args.rows), ("--batch-rows", args.batch_rows)):
        check_at_least_one(flag, value)
    check_results_folder(args.out)
    if args.hf_model:
        check_hf_model_path(args.hf_model)
        check_torch_device(args.device)
    books = is_book_source(args.data)
    if not books:  # a shard file or a file of another kind: say what --data takes, before its flags
        check_data_file(args.data)
    if books and not args.length:
        raise ValueError(f"--data {args.data} holds raw books, not shards: give --length (e.g. 4k), the tokens per row")
    if not books and (args.length or args.tokenizer):
        raise ValueError("--length and --tokenizer are for raw books; a stage folder's rows already have their "
                         "length and tokenizer")
    length = None
    if books:
        try:
            length = parse_count(args.length, minimum=1)
        except ValueError as err:
            raise ValueError(f"--length {err}") from None
    data = None
    if not books:
        from training.data import StageData

        data = StageData.open(args.data)  # before the model: a wrong folder fails fast
    name = model_name(args)
    scorer = config = params = None
    if args.hf_model:
        from curation.hf_models import resolve_generator
        from evals.hf_loss import HFScorer

        if data is not None:
            check_vision_fits(args.data, data.info, None, f"--hf-model {args.hf_model}")
        try:
            if data is not None:  # shards of another vocabulary than the model's tokenizer: other text for the same ids
                note = check_hf_data_tokenizer(resolve_generator(args.hf_model)[0], args.data, data.info.tokenizer)
                if note:
                    console.print(f"[yellow]{note}[/yellow]", highlight=False)
            scorer = HFScorer(args.hf_model, device=args.device)
        except OSError as err:  # transformers' word for a folder or hub id it cannot load
            raise ValueError(f"--hf-model {args.hf_model} cannot be loaded: {' '.join(str(err).split())[:400]}") from None
    else:
        from training.checkpoint import any_model_config, load_any_params
        from training.hf import check_data_tokenizer

        if data is not None:  # shards of another tokenizer than the checkpoint's data: other text for the same ids
            check_vision_fits(args.data, data.info, any_model_config(args.checkpoint),
                              f"--checkpoint {args.checkpoint}")
            check_data_tokenizer(args.checkpoint, args.data, data.info.tokenizer)
        config, params = load_any_params(args.checkpoint)
    extra: dict[str, Any] = {}
    if books:
        tokenizer, bos_id, spec = book_tokenizer(args, scorer.folder if scorer else None)
        data = read_book_rows(args.data, tokenizer, length, bos_id=bos_id, text_field=args.text_field)
        extra = {"source": "books", "tokenizer": spec, "bos": bos_id is not None, **data.describe()}
        console.print(f"{data.books} books -> {data.num_rows} rows of {data.length} tokens"
                      f"{f'; {len(data.skipped)} skipped' if data.skipped else ''}", highlight=False)
    else:
        extra = {"source": "stage"}

    def progress(done: int, total: int) -> None:
        console.print(f"rows {done}/{total}", highlight=False)

    if scorer is not None:
        from evals.hf_loss import hf_loss_by_position

        summary = hf_loss_by_position(scorer, data, rows=args.rows, batch_rows=args.batch_rows, buckets=buckets,
                                      progress=progress)
        where = {"hf_model": args.hf_model, "backend": "transformers"}
    else:
        summary = loss_by_position(config, params, data, rows=args.rows, batch_rows=args.batch_rows, buckets=buckets,
                                   sp=args.sp, chunk=args.chunk, progress=progress)
        where = {"checkpoint": args.checkpoint, "backend": "jax"}
    summary = {"model": name, **where, "data": args.data, **summary, **extra}
    paths = write_outputs(summary, args.out, name)
    table = Table(title=f"{name}: mean next-token loss by position ({summary['tokens']} targets, {summary['rows']} rows)")
    for column in ("positions", "targets", "loss"):
        table.add_column(column, justify="right")
    for row in summarize_table(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
