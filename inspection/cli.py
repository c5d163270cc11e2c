"""`longctx inspect DIR`: what a book, QA, video or images job wrote, as tables and pictures.

Reads DIR's manifest.json, shards and rejects (inspection.output), prints per-stage and
per-reason tables (with near-duplicate clusters, quality rules and contamination when the
curation steps rejected documents: inspection.curation_tables), writes PNG plots
(inspection.plots) and, with `--row N`, one row decoded with its loss-masked spans highlighted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fsspec
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from inspection.curation_tables import print_curation_tables
from inspection.output import OutputSummary, summarize_output
from inspection.rows import RowView, Span, describe_row, find_vision_row
from inspection.training_runs import TrainingRun, training_runs
from curation.shards import join_url
from curation.stages import applies_windows, stage_rule
from curation.units import number, percent

LOSS_STYLE = "bold green"  # trained on (loss_mask > 0)
CONDITIONING_STYLE = "dim"  # in the context, not trained on
VISION_STYLE = "bold magenta"


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `inspect` subcommand and its flags."""
    parser = subparsers.add_parser(
        "inspect",
        help="summarize an output folder (tables + PNG plots) and decode rows",
        description="Read DIR/manifest.json, the shards and rejects of a books, qa, video or images job; print rows, "
        "tokens, packing efficiency, documents per row, loss-mask share and rejects by reason per stage, and write "
        "PNG plots (document lengths with the stage windows, tokens per stage, documents per row, loss-mask share; "
        "for vision shards decoded frames with --vqgan). For a training run folder (config.yaml + metrics.jsonl, "
        "or a train-stages folder of them): loss, learning rate when logged, grad norm and tokens/s as PNGs, and a summary.",
    )
    parser.add_argument("dir", metavar="DIR", help="the job's output folder or a training run folder (local path or fsspec URL)")
    parser.add_argument("--plots", metavar="DIR", help="where to write the PNGs (default: DIR/inspect/)")
    parser.add_argument("--no-plots", action="store_true", help="print the tables only")
    parser.add_argument("--row", type=int, metavar="N", help="print row N of --stage decoded: segments, text, vision blocks, loss spans")
    parser.add_argument("--stage", metavar="S", help="stage for --row and the frame grid (default: the first stage)")
    parser.add_argument("--vqgan", metavar="PATH", help="the VQGAN that encoded the frames, to draw a row's decoded frames "
                        "in the plots folder (vision shards; not with --no-plots)")
    parser.add_argument("--tokenizer", metavar="SPEC", help="with --row (or --vqgan's frame grid), decode with this tokenizer "
                        "instead of the one the shards record")
    parser.add_argument("--full", action="store_true", help="with --row, print every token (default: long text runs keep head and tail)")
    parser.add_argument("--overwrite", action="store_true", help="first remove the PNGs an earlier inspect wrote in the plots folder "
                        "(only the names inspect writes), so none is left from another run")
    # run_inspect's one-line errors go through this parser: `longctx inspect: error: ...`, exit 2.
    parser.set_defaults(inspect_parser=parser)
    return parser


def _pct(x: float | None) -> str:
    return percent(x)  # 12.3%, or - when not known (curation.units: one rule for every table)


def _stage_table(summary: OutputSummary) -> Table:
    vision = summary.has_vision
    table = Table(title=f"{summary.kind}: stages (counted from the shards)", header_style="bold")
    # Books filter documents by a token window; QA, video and images only by the row length.
    rule_column = "window" if applies_windows(summary.kind) else "rule"
    columns = ["stage", "length", rule_column, "shards", "rows", "tokens", "padding", "packing", "docs/row", "loss"]
    columns += ["vision"] if vision else []
    columns += ["manifest"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("stage", rule_column, "docs/row", "manifest") else "right")
    for s in summary.stages:
        ks = sorted(s.docs_per_row)
        spread = f"{s.mean_docs_per_row:.2f}" + (f" ({ks[0]}-{ks[-1]})" if ks else "")
        window = stage_rule(summary.kind, s.min_tokens, s.max_tokens)
        check = "[green]agrees[/green]" if not s.mismatches else "[red]" + "; ".join(s.mismatches) + "[/red]"
        cells = [s.name, f"{s.length:,}", window, str(s.shards), f"{s.rows:,}", f"{s.tokens:,}", f"{s.padding:,}",
                 f"{100 * s.packing_efficiency:.2f}%", spread, _pct(s.loss_share)]
        cells += [_pct(s.vision_share)] if vision else []
        table.add_row(*cells, check)
    return table


def _records_line(summary: OutputSummary) -> str:
    m = summary.manifest
    line = (f"read {m.get('read', 0):,} = kept {m.get('kept', 0):,} + rejected {m.get('rejected_total', 0):,}; "
            f"tokens in {m.get('tokens_in', 0):,}, out {m.get('tokens_out', 0):,}, dropped tails {m.get('dropped_tail_tokens', 0):,}")
    chunks = m.get("chunks")
    if chunks:
        line += f"; chunks read {chunks['read']:,}, accepted {chunks['accepted']:,}"
    return line


def _documents_table(summary: OutputSummary) -> Table | None:
    docs = summary.documents
    if not docs.kept and not docs.rejected:
        return None
    table = Table(title=f"{docs.unit} lengths (tokens)", header_style="bold")
    for col in (f"{docs.unit}s", "count", "min", "median", "max"):
        table.add_column(col, justify="right" if col in ("count", "min", "median", "max") else "left")
    if docs.kept:
        table.add_row("kept", f"{docs.kept_count:,}", *(f"{n:,}" for n in docs.kept_quantiles((0.0, 0.5, 1.0))))
    for reason, values in docs.rejected.items():
        if values:
            ordered = sorted(values)
            table.add_row(Text(f"rejected: {reason}"), f"{len(ordered):,}", f"{ordered[0]:,}", f"{ordered[(len(ordered) - 1) // 2]:,}", f"{ordered[-1]:,}")
    return table


def _rejects_table(summary: OutputSummary) -> Table | None:
    rejects = summary.rejects
    if not rejects.groups:
        return None
    table = Table(title=f"rejects by reason ({rejects.total:,} in {len(rejects.files)} file(s))", header_style="bold", show_lines=True)
    table.add_column("unit")
    table.add_column("reason", style="bold")
    table.add_column("count", justify="right")
    table.add_column("examples (id: detail)", overflow="fold")
    for group in rejects.groups:
        examples = "\n".join(f"{e.id}: {e.detail}" if e.detail else e.id for e in group.examples)
        # Ids and details are the input's own text: Text objects, never parsed as rich markup.
        table.add_row(Text(group.unit), Text(group.reason), f"{group.count:,}", Text(examples))
    return table


def print_output_summary(summary: OutputSummary, console: Console) -> None:
    """The tables of `longctx inspect`."""
    console.print(f"[bold]{escape(summary.output)}[/bold]: a [bold]{escape(summary.kind)}[/bold] job, "
                  f"config {escape(str(summary.manifest.get('config_hash', '?')))}")
    console.print(_records_line(summary))
    console.print(_stage_table(summary))
    documents = _documents_table(summary)
    if documents is not None:
        console.print(documents)
    rejects = _rejects_table(summary)
    if rejects is not None:
        console.print(rejects)
    else:
        console.print("no rejects")
    print_curation_tables(summary.curation, console)
    for problem in summary.rejects.mismatches:
        console.print(f"[red]rejects files and manifest disagree: {escape(problem)}[/red]")


def _span_text(span: Span, kind: str) -> Text:
    style = LOSS_STYLE if span.trained else CONDITIONING_STYLE
    if span.kind == "vision":
        what = "image" if kind == "images" else "video"
        frames = f"{span.frames} frame{'s' if span.frames != 1 else ''}"
        return Text(f"[{what}: {frames} x {span.codes.shape[1]} codes]", style=VISION_STYLE)
    if span.kind == "marker":
        return Text(span.text, style=VISION_STYLE)
    out = Text(span.text, style=style)
    if span.elided:
        out.append(f" … {span.elided:,} tokens not shown (--full) …", style="italic yellow")
        out.append(span.tail, style=style)
    return out


def _loss_label(span: Span) -> Text:
    if span.loss_share >= 1:
        return Text("trained", style=LOSS_STYLE)
    if span.loss_share <= 0:
        return Text("no loss", style=CONDITIONING_STYLE)
    return Text(f"trained on {100 * span.loss_share:.0f}%", style=LOSS_STYLE)


def print_row(view: RowView, console: Console) -> None:
    """One row: a panel per segment, a line per run of text (or vision block) with its loss."""
    console.print(
        f"[bold]row {view.row:,} of stage {escape(view.stage)}[/bold] ({escape(view.url)}, row {view.row_in_shard:,} in the shard): "
        f"{view.tokens:,} tokens in {len(view.segments)} segment(s), {view.padding:,} padding; tokenizer {escape(view.tokenizer)}"
    )
    legend = Text("legend: ")
    legend.append("trained (loss > 0)", style=LOSS_STYLE)
    legend.append("  ")
    legend.append("conditioning (no loss)", style=CONDITIONING_STYLE)
    legend.append("  ")
    legend.append("[vision block]", style=VISION_STYLE)
    console.print(legend)
    for warning in view.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    for seg in view.segments:
        table = Table(show_header=True, header_style="bold", box=None, expand=True, padding=(0, 1))
        table.add_column("positions", justify="right", no_wrap=True)
        table.add_column("loss", no_wrap=True)
        table.add_column("content", ratio=1, overflow="fold")
        for span in seg.spans:
            table.add_row(f"{span.start:,}-{span.end:,}", _loss_label(span), _span_text(span, view.kind))
        title = (f"segment {seg.index}: {seg.doc_id} from {seg.doc_start:,}, {seg.length:,} tokens at {seg.offset:,}, "
                 f"loss on {seg.loss_tokens:,}")
        console.print(Panel(Group(table), title=Text(title), title_align="left", border_style="cyan"))


def _plots_folder(args: argparse.Namespace) -> Path:
    if args.plots:
        return Path(args.plots)
    if "://" in args.dir and not args.dir.startswith("file://"):
        # A remote output: plots go next to where the command runs, not into the bucket.
        return Path("inspect") / Path(args.dir.rstrip("/")).name
    return Path(args.dir.removeprefix("file://")) / "inspect"


def _frame_grid(args: argparse.Namespace, summary: OutputSummary, stage: str, folder: Path, console: Console) -> Path | None:
    if not args.vqgan:
        console.print("[yellow]frame grid skipped: these shards hold VQGAN codes; pass --vqgan PATH (the VQGAN that "
                      "encoded them) to draw a row's decoded frames[/yellow]")
        return None
    row = args.row if args.row is not None else find_vision_row(summary.output, stage)
    if row is None:
        console.print(f"[yellow]frame grid skipped: no row of stage {stage} holds vision tokens[/yellow]")
        return None
    from inspection.plots import plot_frame_grid
    from curation.vqgan import load_vqgan

    view = describe_row(summary.output, stage, row, args.tokenizer, manifest=summary.manifest)
    if not view.vision_spans:
        console.print(f"[yellow]frame grid skipped: row {row} of stage {stage} holds no vision tokens[/yellow]")
        return None
    noun = "images" if view.kind == "images" else "frames"
    console.print(f"decoding up to {min(len(view.vision_spans), 4)} vision block(s) of row {row} with the VQGAN ...")
    grid = plot_frame_grid(view, load_vqgan(args.vqgan), folder / f"frames_{stage}_row{row}.png")
    console.print(f"frame grid: row {row} of stage {escape(stage)}, {grid.decoded} of {sum(grid.total_frames)} {noun} decoded "
                  f"from {len(grid.frames)} of {grid.blocks_in_row} vision block(s)")
    if sum(grid.undecodable):
        console.print(f"[yellow]{sum(grid.undecodable)} {noun} could not be decoded by this VQGAN (marked red in the grid: "
                      "a code outside its codebook, or a grid it was not built for)[/yellow]")
    return grid.path


# Every PNG name inspect writes (data job, frame grids, training run): what --overwrite removes.
OUR_PNGS = ("document_lengths.png", "tokens_per_stage.png", "docs_per_row.png", "loss_share.png", "frames_*_row*.png",
            "train_loss.png", "train_learning_rate.png", "train_grad_norm.png", "train_tokens_per_s.png")


def _earlier_pngs(folder: Path) -> set[Path]:
    return {p for pattern in OUR_PNGS for p in folder.glob(pattern) if p.is_file()} if folder.is_dir() else set()


def _report_plots(folder: Path, written: list[str], earlier: set[Path], console: Console) -> None:
    console.print(f"plots written to [bold]{escape(str(folder))}[/bold]:")
    for path in written:
        console.print(Text(f"  {path}"))
    stale = sorted(earlier - {Path(p) for p in written})
    if stale:
        console.print(f"[yellow]{len(stale)} PNG(s) from an earlier inspect are still in {escape(str(folder))} "
                      f"({escape(', '.join(p.name for p in stale[:4]))}{', ...' if len(stale) > 4 else ''}); "
                      "--overwrite removes them[/yellow]")


def _prepare_plots(args: argparse.Namespace, folder: Path, console: Console) -> set[Path]:
    """The PNGs of ours already in `folder`: removed with --overwrite (then none is left)."""
    earlier = _earlier_pngs(folder)
    if args.overwrite and earlier:
        for path in earlier:
            path.unlink()
        console.print(f"removed {len(earlier)} PNG(s) of an earlier inspect from {escape(str(folder))}")
        return set()
    return earlier


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return number(x, spec)  # - when not known, as every table prints it (curation.units)


def print_training_runs(runs: list[TrainingRun], console: Console) -> None:
    """One line per run (per stage of a train-stages folder): steps, last losses, grad norm,
    throughput and the checkpoints found."""
    table = Table(title=f"training run{'s' if len(runs) > 1 else ''} (from metrics.jsonl)", header_style="bold")
    vision = any(run.has("vision_loss") for run in runs)
    columns = ["run", "steps", "last loss"] + (["text loss", "vision loss"] if vision else [])
    columns += ["lr", "grad norm", "tokens/s (last 10)", "checkpoints"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "checkpoints") else "right")
    for run in runs:
        planned = f" of {run.planned_steps:,}" if run.planned_steps else ""
        ckpts = ", ".join(str(s) for s in run.checkpoint_steps)
        ckpts = (f"steps {ckpts}" if ckpts else "no step checkpoint") + ("; final" if run.final else "; no final")
        cells = [Text(run.name), f"{run.last_step:,}{planned}", _fmt(run.last("loss"))]
        cells += [_fmt(run.last("text_loss")), _fmt(run.last("vision_loss"))] if vision else []
        cells += [_fmt(run.last(run.lr_key), ".3g") if run.lr_key else "not logged", _fmt(run.last("grad_norm"), ".3g"),
                  _fmt(run.mean("tokens_per_s"), ",.0f"), Text(ckpts)]
        table.add_row(*cells)
    console.print(table)
    for run in runs:
        first = run.series("loss")[1]
        if first.size:
            console.print(Text(f"{run.name}: loss {first[0]:.3f} at step {int(run.series('loss')[0][0])} -> {first[-1]:.3f} "
                               f"at step {run.last_step}; checkpoints under {join_url(run.path, 'checkpoints')}"))
        if run.bad_lines:
            console.print(f"[yellow]{escape(run.name)}: {run.bad_lines} line(s) of metrics.jsonl could not be read (skipped)[/yellow]")


def run_training_inspect(args: argparse.Namespace, runs: list[TrainingRun], console: Console) -> int:
    """`longctx inspect RUN` on a training run (or a train-stages folder): summary and PNGs."""
    flags = (("--row", args.row), ("--stage", args.stage), ("--vqgan", args.vqgan), ("--tokenizer", args.tokenizer),
             ("--full", args.full or None))
    given = [flag for flag, value in flags if value is not None]
    if given:
        raise InspectUsageError(f"{' and '.join(given)}: {args.dir} is a training run; --row, --stage, --vqgan, --tokenizer "
                                "and --full read a data job's shards")
    print_training_runs(runs, console)
    if args.no_plots:
        return 0
    from inspection.plots import plot_training_runs

    folder = _plots_folder(args)
    earlier = _prepare_plots(args, folder, console)
    written = [str(p) for p in plot_training_runs(runs, folder)]
    _report_plots(folder, written, earlier, console)
    return 0


class InspectUsageError(ValueError):
    """DIR or a flag does not fit what DIR holds (no output there, no such stage or row, --vqgan
    on shards without vision codes), or a flag that nothing would use in the combination given
    (_check_flags_apply): reported like every other error of inspect."""


def _check_flags_apply(args: argparse.Namespace, summary: OutputSummary) -> None:
    """Refuse a flag the flags given leave unused, rather than ignore it: --vqgan only draws the
    frame grid (a PNG, so not with --no-plots; a --row prints its vision blocks without it),
    --full only affects the row --row prints, and --tokenizer only decodes that row's text or the
    text beside the frame grid (vision shards with --vqgan)."""
    if args.vqgan and args.no_plots:
        raise InspectUsageError(f"--vqgan {args.vqgan} needs the plots: it only draws the frame grid, a PNG, and --no-plots "
                                "writes none (--row prints a row's vision blocks without it)")
    if args.full and args.row is None:
        raise InspectUsageError("--full needs --row N: it prints one row whole")
    if args.tokenizer and args.row is None and not (summary.has_vision and args.vqgan):
        if summary.has_vision:
            raise InspectUsageError(f"--tokenizer {args.tokenizer} needs --row N or --vqgan PATH: it decodes the text of "
                                    "the row --row prints or of the frame grid --vqgan draws")
        raise InspectUsageError(f"--tokenizer {args.tokenizer} needs --row N: it decodes the text of the row --row prints")
    if args.stage is not None and args.row is None and not (summary.has_vision and args.vqgan):
        raise InspectUsageError(f"--stage {args.stage} needs --row N"
                                + (" or --vqgan PATH: it picks the stage of the row --row prints or of the frame grid --vqgan "
                                   "draws" if summary.has_vision else ": it picks the stage of the row --row prints")
                                + "; the tables and plots cover every stage")


def _check_plot_flags(args: argparse.Namespace) -> None:
    """Refuse --plots DIR or --overwrite with --no-plots: both are about PNGs that would not be written."""
    given = [flag for flag, value in (("--plots", args.plots), ("--overwrite", args.overwrite or None)) if value is not None]
    if given and args.no_plots:
        raise InspectUsageError(f"{' and '.join(given)} with --no-plots: {'they say' if len(given) > 1 else 'it says'} "
                                "where and how to write the PNGs, and --no-plots writes none")


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    """`longctx inspect`: 0 on success. DIR or a flag that does not fit the output, a damaged
    file (manifest.json, a shard, a run's config.yaml) or a tokenizer that cannot be loaded stops
    it with the usage and one line on stderr, `longctx inspect: error: ...`, and exit code 2
    (SystemExit), as every command reports a user's mistake."""
    try:
        return _run_inspect(args, console)
    except (ValueError, OSError) as err:  # ManifestError, a truncated shard, TokenizerLoadError, bad YAML ...
        parser = getattr(args, "inspect_parser", None) or argparse.ArgumentParser(prog="longctx inspect")
        parser.error(" ".join(str(err).split()) or type(err).__name__)


def _check_folder(path: str) -> None:
    """DIR, which has no manifest.json, is at least a folder (InspectUsageError otherwise)."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        return
    if fs.exists(root):
        raise InspectUsageError(f"{path} is a file, not a folder: pass a data job's output folder (its --output) "
                                "or a training run folder")
    raise InspectUsageError(f"{path}: no such folder, so nothing to inspect: pass a data job's output folder (its --output) "
                            "or a training run folder")


def _run_inspect(args: argparse.Namespace, console: Console) -> int:
    _check_plot_flags(args)
    fs, manifest_path = fsspec.core.url_to_fs(join_url(args.dir, "manifest.json"))
    if not fs.exists(manifest_path):
        _check_folder(args.dir)
        runs = training_runs(args.dir)
        if runs:
            return run_training_inspect(args, runs, console)
        raise InspectUsageError(f"{args.dir} has no manifest.json (a data job's output) and no config.yaml + metrics.jsonl "
                                "(a training run, or a train-stages folder of them): nothing to inspect")
    summary = summarize_output(args.dir)
    stages = [s.name for s in summary.stages]
    if args.stage is not None and args.stage not in stages:
        raise InspectUsageError(f"no stage {args.stage!r} in {args.dir}; stages are {', '.join(stages)}")
    stage = args.stage or (stages[0] if stages else None)
    if args.row is not None:
        rows = summary.stage(stage).rows if stage else 0
        if not 0 <= args.row < rows:
            raise InspectUsageError(f"--row {args.row}: stage {stage} has {rows:,} rows"
                                    + (f" (0 to {rows - 1:,})" if rows else ""))
    if args.vqgan and not summary.has_vision:
        # The VQGAN only decodes vision codes: on a books or QA output it would be ignored.
        raise InspectUsageError(f"--vqgan {args.vqgan}: {args.dir} holds no vision rows (kind {summary.kind})")
    _check_flags_apply(args, summary)

    print_output_summary(summary, console)

    if args.row is not None:
        view = describe_row(args.dir, stage, args.row, args.tokenizer, None if args.full else 400, summary.manifest)
        print_row(view, console)

    if args.no_plots:
        return 0
    from inspection.plots import write_summary_plots  # matplotlib loads only when plots are asked for

    folder = _plots_folder(args)
    earlier = _prepare_plots(args, folder, console)
    written = [str(p) for p in write_summary_plots(summary, folder)]
    if summary.has_vision:
        vision_stage = args.stage or next(s.name for s in summary.stages if s.vision_tokens is not None)
        grid = _frame_grid(args, summary, vision_stage, folder, console)
        if grid is not None:
            written.append(str(grid))
    _report_plots(folder, written, earlier, console)
    return 0
