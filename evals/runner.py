"""Running RULER tasks x lengths x samples against a model, and the summary with effective length.

OUT/results.jsonl gets one record per prompt as it is scored (task, length, sample, seed, prompt
tokens, references, prediction, score in [0, 1]); a rerun into the same folder skips the cells
already there (same task, length, sample and seed) and refuses a folder made with other settings
(model, tokenizer, answer budget, haystack: OUT/settings.json, evals/resume.py). OUT/summary.json holds the mean score per task
and length in percent (RULER's scale), the all-task average per length, and the effective length:
the longest length up to which the average stays at or above the threshold (default 85.6,
Llama-2-7B's RULER average at 4K), or null when the shortest length already falls below it.
OUT/summary.csv is the same table (tasks down, lengths across, an `average` row).

Batching: the samples of one (length, task) cell group go to the model `batch_size` at a time
when the backend decodes batches (`Backend.batch`; ours and transformers' do, greedy answers
identical to one at a time); a record's `seconds` is then its batch's wall time over its rows.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evals.common import PromptBuilder, Sample, Task, make_sample, score
from evals.resume import ResultsFolder, haystack_identity, read_records, tokenizer_identity

DEFAULT_THRESHOLD = 85.6  # Llama-2-7B's 4K RULER average, the paper's bar for "effective"


class Backend(Protocol):
    """A model under test: a sample (its prompt text, ids and answer budget) -> generated text."""

    name: str

    def __call__(self, sample: Sample) -> str: ...


def predict(backend: Backend, samples: Sequence[Sample]) -> list[str]:
    """Predictions of samples that share an answer budget: one batch through the backend's `batch`
    when it has one, else one call per sample."""
    batch = getattr(backend, "batch", None)
    if batch is not None and len(samples) > 1:
        return batch(samples)
    return [backend(sample) for sample in samples]


@dataclass
class GeneratorBackend:
    """evals/generators.py's models (our JAX checkpoints, transformers models): prompt ids in,
    greedy answer ids out, decoded with the model's tokenizer."""

    generator: Any  # generators.Generator
    tokenizer: Any  # niah.NiahTokenizer
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or getattr(self.generator, "name", "model")

    def __call__(self, sample: Sample) -> str:
        return self.batch([sample])[0]

    def batch(self, samples: Sequence[Sample]) -> list[str]:
        """Samples sharing one answer budget, decoded as one batch."""
        from evals.generators import generate_all

        budgets = {s.max_new_tokens for s in samples}
        if len(budgets) != 1:
            raise ValueError(f"a batch needs one answer budget, got {sorted(budgets)}")
        answers = generate_all(self.generator, [s.prompt_ids for s in samples], budgets.pop())
        return [self.tokenizer.decode(ids) for ids in answers]


@dataclass
class TextBackend:
    """Any function of prompt text to generated text (e.g. a completions endpoint). It gets the
    prompt after the frame's head: the task text, the frame's tail and the answer prefix."""

    fn: Callable[[str], str]
    name: str = "text"

    def __call__(self, sample: Sample) -> str:
        return self.fn(sample.body)


def cell_key(record: dict[str, Any]) -> tuple[str, int, int, int]:
    return (record["task"], int(record["length"]), int(record["sample"]), int(record["seed"]))


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl (none if it does not exist); a damaged line is an error
    naming it, so a rerun never silently redoes or drops cells (evals/resume.py)."""
    return read_records(path, cell_key)


def ruler_settings(model: str, tokenizer: Any, max_new_tokens: int | None,
                   haystack: str | Path | None, weights_saved: str | None = None) -> dict[str, Any]:
    """What a RULER cell's score depends on besides its coordinates (task, length, sample, seed):
    a rerun into a folder made with other settings is refused (evals/resume.py). `weights_saved`
    (training.checkpoint.weights_saved) tells apart two models of one name, such as a run retrained
    into the same folder."""
    return {"model": model, "weights_saved": weights_saved, "tokenizer_sha256": tokenizer_identity(tokenizer),
            "max_new_tokens": max_new_tokens, "haystack": haystack_identity(haystack)}


def run_cells(backend: Backend, builder: PromptBuilder, tasks: Sequence[Task], lengths: Sequence[int], samples: int,
              seed: int = 0, *, done: set[tuple[str, int, int, int]] = frozenset(),
              max_new_tokens: int | None = None, batch_size: int = 1) -> Iterator[dict[str, Any]]:
    """One record per (length, task, sample) not in `done`; lengths outermost, so a model compiles
    or warms up each length once. Samples of one (length, task) go `batch_size` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for group in cell_batches(pending_cells(tasks, lengths, samples, seed, done), batch_size):
        built = [make_sample(task, builder, length, index, seed, max_new_tokens) for length, task, index in group]
        # A task's samples share its answer budget; split anyway where one differs.
        for budget in dict.fromkeys(s.max_new_tokens for s in built):
            batch = [s for s in built if s.max_new_tokens == budget]
            start = time.perf_counter()
            predictions = predict(backend, batch)
            seconds = (time.perf_counter() - start) / len(batch)
            for sample, prediction in zip(batch, predictions):
                yield {
                    "model": backend.name, "task": sample.task, "length": sample.length, "sample": sample.index,
                    "seed": seed, "prompt_tokens": sample.prompt_tokens, "units": sample.units,
                    "metric": sample.metric, "references": sample.references, "prediction": prediction,
                    "score": score(prediction, sample.references, sample.metric),
                    "evidence_tokens": [e["token"] for e in sample.evidence], "seconds": round(seconds, 3),
                }


def cell_batches(cells: Sequence[tuple[int, Task, int]], batch_size: int) -> list[list[tuple[int, Task, int]]]:
    """Consecutive cells of one (length, task), at most `batch_size` per batch, in order."""
    batches: list[list[tuple[int, Task, int]]] = []
    for cell in cells:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (last[0][0], last[0][1].name) == (cell[0], cell[1].name):
            last.append(cell)
        else:
            batches.append([cell])
    return batches


def pending_cells(tasks: Sequence[Task], lengths: Sequence[int], samples: int, seed: int,
                  done: set[tuple[str, int, int, int]] = frozenset()) -> list[tuple[int, Task, int]]:
    """(length, task, sample index) of every cell not in `done`, in the order `run_cells` runs them
    (its length is a run's progress total)."""
    return [(length, task, index) for length in lengths for task in tasks for index in range(samples)
            if (task.name, length, index, seed) not in done]


def effective_length(average: dict[int, float], threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """The longest length L such that the average is >= threshold at every length up to L."""
    best = None
    for length in sorted(average):
        if average[length] < threshold:
            break
        best = length
    return best


def summarize(records: Sequence[dict[str, Any]], tasks: Sequence[str], lengths: Sequence[int], seed: int,
              threshold: float = DEFAULT_THRESHOLD, model: str = "") -> dict[str, Any]:
    """Mean score (percent) per task and length over the records of `seed`; the average over tasks
    at each length where every task has records; the effective length over those lengths."""
    scores: dict[str, dict[int, list[float]]] = {t: {} for t in tasks}
    for r in records:
        if r["task"] in scores and int(r["length"]) in lengths and int(r["seed"]) == seed:
            scores[r["task"]].setdefault(int(r["length"]), []).append(float(r["score"]))
    table = {t: {length: 100 * sum(v) / len(v) for length, v in sorted(by.items())} for t, by in scores.items()}
    average = {length: sum(table[t][length] for t in tasks) / len(tasks)
               for length in sorted(lengths) if tasks and all(length in table[t] for t in tasks)}
    return {
        "model": model, "seed": seed, "threshold": threshold,
        "lengths": sorted(lengths),
        "tasks": {t: {str(length): round(s, 4) for length, s in by.items()} for t, by in table.items()},
        "samples": {t: {str(length): len(v) for length, v in sorted(by.items())} for t, by in scores.items()},
        "average": {str(length): round(s, 4) for length, s in average.items()},
        "effective_length": effective_length(average, threshold),
    }


def write_summary(summary: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    json_path, csv_path = out / "summary.json", out / "summary.csv"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lengths = [str(length) for length in summary["lengths"]]
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", *lengths])
        for task, by in summary["tasks"].items():
            writer.writerow([task, *(by.get(length, "") for length in lengths)])
        writer.writerow(["average", *(summary["average"].get(length, "") for length in lengths)])
    return json_path, csv_path


def run_suite(backend: Backend, builder: PromptBuilder, tasks: Sequence[Task], lengths: Sequence[int], samples: int,
              out: str | Path, *, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
              max_new_tokens: int | None = None, batch_size: int = 1,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              on_progress: Callable[[int, int, float], None] | None = None,
              settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the missing cells into OUT/results.jsonl, then write OUT/summary.json and summary.csv.

    `settings` (default: `ruler_settings` of the backend, the builder's tokenizer and
    `max_new_tokens`, no haystack named) must match those the folder's records were made with
    (evals/resume.py). `on_progress(done, total, elapsed_s)` follows each record (`on_record`):
    cells scored in this run, cells this run has to score, seconds since it started
    (curation.progress.progress_line)."""
    if settings is None:
        settings = ruler_settings(backend.name, builder.tokenizer, max_new_tokens, None)
    folder = ResultsFolder(Path(out), "ruler", settings, cell_key)
    records = folder.read()
    done = {cell_key(r) for r in records}
    total = len(pending_cells(tasks, lengths, samples, seed, done))  # a rerun skips the done ones
    start = time.monotonic()
    new = run_cells(backend, builder, tasks, lengths, samples, seed, done=done, max_new_tokens=max_new_tokens,
                    batch_size=batch_size)
    for count, record in enumerate(folder.append(new), 1):
        records.append(record)
        if on_record is not None:
            on_record(record)
        if on_progress is not None:
            on_progress(count, total, time.monotonic() - start)
    names = [t.name for t in tasks]
    wanted = [r for r in records if r["task"] in names and int(r["sample"]) < samples]
    summary = summarize(wanted, names, lengths, seed, threshold, backend.name)
    write_summary(summary, folder.out)
    return summary
