"""`longctx eval ruler`: the RULER-class suite from the command line (longctx/cli.py wires it).

Writes OUT/results.jsonl (one record per prompt, as it runs; cells already there are skipped on a
rerun, and a folder made with other settings is refused: evals/resume.py), OUT/summary.json and OUT/summary.csv (mean score in percent per task and length, the
all-task average, the effective length), OUT/scores_by_length.png (score against length per task,
the threshold dashed) and OUT/heatmap.png (tasks x lengths), and prints the table. Models load as for `longctx eval
niah` (evals/model_cli.py, evals/generators.py): our JAX checkpoints, any local transformers causal LM
(both `--batch-size` prompts at a time), or an OpenAI-compatible completions server (`--endpoint URL`,
evals/endpoint.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from curation.progress import progress_line
from evals.haystack import SAMPLE_BOOKS
from evals.model_cli import (add_model_arguments, check_at_least_one, model_name, model_weights_saved, parse_lengths_flag,
                             prepare_model)
from evals.runner import DEFAULT_THRESHOLD
from evals.tasks import TASK_NAMES


def add_ruler_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "")
    parser.add_argument("--tokenizer", help="tokenizer spec as for `longctx books` (default for --hf-model: the model's own)")
    parser.add_argument("--tasks", default="all", help=f"`all` or comma-separated names: {', '.join(TASK_NAMES)}")
    parser.add_argument("--lengths", default="4k", help="context lengths in tokens: 4k,8k,16k, 4096, or 4k..32k:4")
    parser.add_argument("--samples", type=int, default=10, help="prompts per (task, length)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every prompt (keys, values, haystack, order)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="effective length bar: the all-task average score in percent (default: Llama-2-7B's 4K, 85.6)")
    parser.add_argument("--squad", help="SQuAD JSON file for qa_1 (e.g. dev-v2.0.json; nothing is downloaded)")
    parser.add_argument("--hotpotqa", help="HotpotQA JSON file for qa_2 (e.g. hotpot_dev_distractor_v1.json)")
    parser.add_argument("--haystack", default=str(SAMPLE_BOOKS),
                        help="book text for the book haystacks: JSONL/Parquet/txt file, folder or glob (default: sample books)")
    parser.add_argument("--max-new-tokens", type=int, help="answer budget for every task (default: RULER's per task)")


def _select_tasks(args: argparse.Namespace, console: Console) -> list[str]:
    from evals.tasks import QA_FILES, parse_tasks

    names = parse_tasks(args.tasks)
    if "all" in [p.strip() for p in args.tasks.split(",")]:
        # `all` runs the QA tasks only when their files are given (nothing is downloaded).
        missing = [n for n in QA_FILES if getattr(args, QA_FILES[n][2:]) is None]
        if missing:
            console.print(f"[yellow]note: skipping {', '.join(missing)} (give "
                          f"{' and '.join(QA_FILES[n] for n in missing)} FILE to run them)[/]")
            names = [n for n in names if n not in missing]
    return names


def run_ruler(args: argparse.Namespace, console: Console) -> int:
    from evals.common import PromptBuilder, check_min_context
    from evals.resume import ResultsFolder
    from evals.runner import GeneratorBackend, cell_key, ruler_settings, run_suite
    from evals.tasks import build_tasks
    from evals import niah

    lengths = parse_lengths_flag(args.lengths)
    check_at_least_one("--samples", args.samples)
    check_at_least_one("--max-new-tokens", args.max_new_tokens)  # 0 would fall back to RULER's budgets
    names = _select_tasks(args, console)
    if not names:
        raise ValueError("no task to run")
    # Build the tasks (and read the QA files) before loading a model: bad input fails fast.
    tasks = build_tasks(names, squad=args.squad, hotpotqa=args.hotpotqa, haystack=args.haystack,
                        book_words=max(400_000, 2 * max(lengths)))
    tokenizer, name, load_model = prepare_model(args, model_name(args), max(lengths),
                                                lambda text: console.print(f"[yellow]note: {text}[/]"))
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    # Still before the weights load: a length too short for a task's prompt, a results folder of
    # another model or other settings, a damaged results line.
    check_min_context(tasks, builder, lengths, args.samples, args.seed, args.max_new_tokens)
    settings = ruler_settings(name, tokenizer, args.max_new_tokens, args.haystack, model_weights_saved(args))
    ResultsFolder(Path(args.out), "ruler", settings, cell_key).read()
    generator = load_model()
    if getattr(args, "endpoint", None):
        from evals.endpoint import EndpointBackend

        backend = EndpointBackend(generator, name)  # the served model's name, unless --name
    else:
        backend = GeneratorBackend(generator, tokenizer, name)

    def show(record: dict) -> None:
        console.print(f"{record['task']:>16} {record['length']:>7} sample {record['sample']}: score "
                      f"{record['score']:.2f} ({record['prompt_tokens']} tokens, {record['seconds']:.1f} s) "
                      f"answer {record['prediction'][:60]!r}", highlight=False)

    def progress(done: int, total: int, elapsed_s: float) -> None:
        console.print(f"  {progress_line('scored', 'cells', done, total, elapsed_s)}", style="dim", highlight=False)

    summary = run_suite(backend, builder, tasks, lengths, args.samples, args.out, seed=args.seed,
                        threshold=args.threshold, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        on_record=show, on_progress=progress, settings=settings)
    console.print(summary_table(summary))
    effective = summary["effective_length"]
    console.print(f"{name}: effective length {effective if effective is not None else 'below the shortest length'} "
                  f"(average >= {summary['threshold']})", highlight=False)
    from evals.plots import write_ruler_plots

    out = Path(args.out)
    pictures = write_ruler_plots(summary, out)
    console.print(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {out / 'summary.csv'}, "
                  f"{' and '.join(str(p) for p in pictures)}")
    return 0


def summary_table(summary: dict) -> Table:
    """Tasks down, lengths across, the average last; cells in percent, green at or above the threshold."""
    from evals.niah_plot import length_label

    lengths = [str(length) for length in summary["lengths"]]
    table = Table(title=f"RULER score (%), threshold {summary['threshold']}")
    table.add_column("task")
    for length in lengths:
        table.add_column(length_label(int(length)), justify="right")

    def cell(value: float | None) -> str:
        if value is None:
            return "-"
        color = "green" if value >= summary["threshold"] else "red"
        return f"[{color}]{value:.1f}[/]"

    for task, by in summary["tasks"].items():
        table.add_row(task, *(cell(by.get(length)) for length in lengths))
    table.add_row("[bold]average[/]", *(cell(summary["average"].get(length)) for length in lengths))
    return table
