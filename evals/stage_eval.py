"""Evaluating a training stage when it ends: the `eval:` section of a `train-stages` plan.

    eval:
      ruler: {tasks: "niah_single_1,niah_multikey_2,vt,cwe,fwe", samples: 5}
      niah: {format: lwm, depths: "0,25,50,75,100"}
      loss_by_position: {rows: 32}

Each stage is evaluated at its own length: `lengths` (when given) are cut at the stage's
`seq_len`; by default a stage of length L runs L/8, L/4, L/2 and L (those of at least 1K, and L
itself always). Outputs go to STAGE_OUT/eval/ (ruler/, niah/, loss_by_position/) and a
STAGE_OUT/eval/summary.json that lays the headline numbers side by side. The model is the stage's
final checkpoint, run with our JAX decoder; the tokenizer is the one the stage's shards record
unless the section names one. As `eval ruler` and `eval niah` do (evals/resume.py), a rerun keeps
the cells already in ruler/results.jsonl and niah/results.jsonl and runs only the others; a
folder made with other settings (format, tokenizer, haystack, ...) is refused.

`check_stages` runs before the first stage trains: every value of the section is read then, and a
RULER task whose shortest prompt (with its answer budget) does not fit one of a stage's lengths
stops the plan in one line naming the stage, the task, the length and the least context it needs.
`tasks: all` is the synthetic tasks (a plan gives no QA files).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.units import parse_count
from evals.haystack import SAMPLE_BOOKS

DEFAULT_RULER_TASKS = "niah_single_1,niah_single_2,niah_multikey_2,niah_multivalue,niah_multiquery,vt,cwe,fwe"


class RulerSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: str = Field(DEFAULT_RULER_TASKS, description="`all` or comma-separated RULER task names")
    samples: int = Field(5, ge=1, description="prompts per (task, length)")
    threshold: float = Field(85.6, description="effective length bar (all-task average, percent)")
    max_new_tokens: int | None = Field(None, ge=1, description="answer budget for every task (default: RULER's)")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: str) -> str:  # each value is checked when the plan is read, not after stage 1
        ruler_task_names(tasks)
        return tasks


class NiahSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["longctx", "lwm"] = "lwm"
    depths: str = Field("5", description="a count (evenly 0..100 %) or percents 0,25,50")
    samples: int = Field(1, ge=1)
    needles: int = Field(1, ge=1)
    ask: int = Field(1, ge=1)

    @field_validator("depths")
    @classmethod
    def _readable_depths(cls, depths: str) -> str:
        from evals.niah import parse_depths

        try:
            parse_depths(depths)
        except ValueError as err:  # float('x') says nothing about depths
            raise ValueError(f"depths are a count or percents such as 0,25,50 ({err})") from None
        return depths


class LossSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: int = Field(32, ge=1, description="rows of the stage scored, evenly spaced")
    batch_rows: int = Field(2, ge=1)
    buckets: str = Field("log", description="log, or a window width in tokens")

    @field_validator("buckets")
    @classmethod
    def _readable_buckets(cls, buckets: str) -> str:
        from evals.loss_by_position import parse_buckets

        parse_buckets(buckets)
        return buckets


class EvalSection(BaseModel):
    """What to run after each stage (any of the three may be left out with `null`)."""

    model_config = ConfigDict(extra="forbid")
    lengths: list[int | str] | None = Field(None, description="context lengths (4k, 8192, ...), cut at the stage's")
    tokenizer: str | None = Field(None, description="default: the tokenizer the stage's shards record")
    haystack: str = Field(str(SAMPLE_BOOKS), description="book text for the haystacks")
    seed: int = 0
    sp: int = Field(1, ge=1, description="sequence-parallel devices for prefill and loss")
    chunk: int = Field(512, ge=1, description="ring attention query/key chunk")
    batch_size: int = Field(8, ge=1, description="prompts decoded together (greedy answers as one at a time)")
    ruler: RulerSection | None = Field(default_factory=RulerSection)
    niah: NiahSection | None = Field(default_factory=NiahSection)
    loss_by_position: LossSection | None = Field(default_factory=LossSection)

    @field_validator("lengths")
    @classmethod
    def _readable_lengths(cls, lengths: list[int | str] | None) -> list[int | str] | None:
        for length in lengths or []:
            parse_count(length if isinstance(length, int) else str(length), minimum=1)
        return lengths

    @field_validator("tokenizer")
    @classmethod
    def _loadable_tokenizer(cls, tokenizer: str | None) -> str | None:
        if tokenizer:
            from curation.tokenize import load_tokenizer

            load_tokenizer(tokenizer)  # TokenizerLoadError (a ValueError) says why, in one line
        return tokenizer


def check_stages(section: EvalSection, stages: Sequence[tuple[str, int] | tuple[str, int, str | None]]) -> None:
    """What the section asks of each stage of a plan, (name, seq_len) or (name, seq_len, data
    spec), before the first stage trains (ValueError naming the stage otherwise): some of its
    lengths fit the stage, and every RULER task's prompt fits each length it is evaluated at
    (`evals.common.check_min_context`, with the tokenizer the evaluation will use: the section's,
    else the one the stage's shards record; without either nothing is tokenized)."""
    tokenizers: dict[str, Any] = {}
    tasks: dict[int, list[Any]] = {}
    for stage in stages:
        name, seq_len = stage[0], stage[1]
        data = stage[2] if len(stage) > 2 else None
        try:
            lengths = stage_lengths(seq_len, section.lengths)
            if section.ruler is not None:
                _check_ruler_fits(section, lengths, data, tokenizers, tasks)
        except ValueError as err:
            raise ValueError(f"stage {name}: {err}") from None


def _check_ruler_fits(section: EvalSection, lengths: list[int], data: str | None, tokenizers: dict[str, Any],
                      tasks: dict[int, list[Any]]) -> None:
    """The section's RULER tasks built as `evaluate_stage` builds them (so a bad haystack is found
    now), and their shortest prompts measured at `lengths` with the evaluation's tokenizer."""
    from evals import niah
    from evals.common import PromptBuilder, check_min_context
    from evals.generators import load_niah_tokenizer
    from evals.tasks import build_tasks

    rs = section.ruler
    book_words = _book_words(lengths)
    if book_words not in tasks:
        tasks[book_words] = build_tasks(ruler_task_names(rs.tasks), haystack=section.haystack, book_words=book_words)
    spec = section.tokenizer or (_recorded_tokenizer(data) if data else None)
    if not spec:
        return  # said when the stage is evaluated (no tokenizer recorded), or by the data checks (no shards)
    if spec not in tokenizers:
        tokenizers[spec] = load_niah_tokenizer(spec)
    tokenizer = tokenizers[spec]
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    check_min_context(tasks[book_words], builder, lengths, rs.samples, section.seed, rs.max_new_tokens)


def _book_words(lengths: list[int]) -> int:
    return max(400_000, 2 * max(lengths))


def ruler_task_names(spec: str) -> list[str]:
    """The section's `tasks`: `all` is the synthetic ones, as for `eval ruler` without QA files
    (a plan names none); a QA task named on its own is refused, as it has no file here."""
    from evals.tasks import QA_FILES, parse_tasks

    names = parse_tasks(spec)
    if "all" in [p.strip() for p in spec.split(",")]:
        return [n for n in names if n not in QA_FILES]
    qa = [n for n in names if n in QA_FILES]
    if qa:
        raise ValueError(f"{', '.join(qa)} {'needs' if len(qa) == 1 else 'need'} a QA file, which an eval: section "
                         f"cannot give; run {'it' if len(qa) == 1 else 'them'} with "
                         f"`longctx eval ruler {' '.join(QA_FILES[n] + ' FILE' for n in qa)}`")
    return names


def stage_lengths(seq_len: int, lengths: list[int | str] | None) -> list[int]:
    """The lengths a stage of `seq_len` is evaluated at (see module docstring)."""
    if lengths:
        chosen = sorted({n for n in (parse_count(str(x), minimum=1) for x in lengths) if n <= seq_len})
        if not chosen:
            raise ValueError(f"eval lengths {lengths} are all longer than the stage's {seq_len} tokens")
        return chosen
    return sorted({n for n in (seq_len // 8, seq_len // 4, seq_len // 2) if n >= 1024} | {seq_len})


def _first_source(data: str) -> str:
    """The first folder of a data spec (a mixture's sources share one tokenizer: training.data.check_plan_data)."""
    from training.data import parse_data_mix

    return parse_data_mix(data)[0][0]


def _tokenizer_name(stage: Any, data: str) -> str:
    name = stage.info.tokenizer.get("name")
    if not name:
        raise ValueError(f"the shards under {data} record no tokenizer name: give eval.tokenizer")
    return str(name)


def _recorded_tokenizer(data: str) -> str | None:
    """The tokenizer name the stage's shards record (ValueError when they record none); None when
    they cannot be opened yet (training.data.check_plan_data says why, in its own words)."""
    from training.data import StageData

    try:
        stage = StageData.open(_first_source(data))
    except (OSError, ValueError):
        return None
    return _tokenizer_name(stage, data)


def _stage_tokenizer(data: str, section: EvalSection) -> str:
    if section.tokenizer:
        return section.tokenizer
    from training.data import StageData

    return _tokenizer_name(StageData.open(_first_source(data)), data)


def evaluate_stage(stage_config: Any, section: EvalSection, checkpoint: str | None = None,
                   log: Any = None) -> dict[str, Any]:
    """Run the section's evaluations on a finished stage (`stage_config`: its TrainConfig) and
    return (and write to STAGE_OUT/eval/summary.json) their headline numbers."""
    from evals import niah
    from evals.generators import load_niah_tokenizer
    from evals.haystack import load_haystack
    from evals.common import PromptBuilder
    from evals.generators import FlaxGenerator
    from evals.loss_by_position import loss_by_position, write_outputs
    from evals.resume import ResultsFolder, set_aside_stale
    from evals.runner import GeneratorBackend, ruler_settings, run_suite
    from evals.tasks import build_tasks
    from training.checkpoint import load_any_params, weights_saved

    say = log or (lambda message: None)
    checkpoint = checkpoint or f"{str(stage_config.out).rstrip('/')}/checkpoints/final"
    out = Path(str(stage_config.out)) / "eval"
    lengths = stage_lengths(stage_config.seq_len, section.lengths)
    name = Path(str(stage_config.out)).name

    tokenizer = niah_folder = None
    weights = weights_saved(checkpoint)
    for part, asked in (("ruler", section.ruler), ("niah", section.niah)):
        moved = set_aside_stale(out / part, "weights_saved", weights) if asked is not None else None
        if moved is not None:  # the stage was retrained into its folder: those cells scored other weights
            say(f"stage {name}: {part} results of earlier weights set aside to {moved}")
    if section.ruler is not None or section.niah is not None:
        tokenizer = load_niah_tokenizer(_stage_tokenizer(stage_config.data, section))
    if section.niah is not None:
        # A rerun resumes, as `eval niah` does (evals/resume.py): the cells already in
        # niah/results.jsonl are kept and not asked again; a folder made with other settings (the
        # format, needles, the tokenizer, the haystack...) is refused now, before the model loads.
        ns = section.niah
        niah_folder = ResultsFolder(out / "niah", "niah",
                                    niah.niah_settings(name, tokenizer, fmt=ns.format, needles=ns.needles, ask=ns.ask,
                                                       scoring="contains", max_new_tokens=None,
                                                       haystack=section.haystack, weights_saved=weights),
                                    niah.record_from_json)
        niah_records = [niah.record_from_json(r) for r in niah_folder.read()]

    config, params = load_any_params(checkpoint)
    summary: dict[str, Any] = {"stage": name, "checkpoint": checkpoint, "weights_saved": weights,
                               "seq_len": stage_config.seq_len, "lengths": lengths}

    if section.loss_by_position is not None:
        from training.data import StageData

        lp = section.loss_by_position
        from evals.loss_by_position import parse_buckets

        result = loss_by_position(config, params, StageData.open(stage_config.data), rows=lp.rows,
                                  batch_rows=lp.batch_rows, buckets=parse_buckets(lp.buckets), sp=section.sp,
                                  chunk=section.chunk)
        result = {"model": name, "checkpoint": checkpoint, "data": stage_config.data, **result}
        write_outputs(result, out / "loss_by_position", name)
        summary["loss_by_position"] = {"loss": result["loss"], "tokens": result["tokens"],
                                       "buckets": {f"{b['start']}-{b['end'] - 1}": b["loss"] for b in result["buckets"]}}
        say(f"stage {name}: loss by position written ({result['tokens']} targets, mean {result['loss']:.4f})")

    if tokenizer is not None:
        generator = FlaxGenerator(config, params, tokenizer.eos_ids, sp=section.sp, name=name,
                                  q_chunk=section.chunk, kv_chunk=section.chunk)
        if section.ruler is not None:
            rs = section.ruler
            tasks = build_tasks(ruler_task_names(rs.tasks), haystack=section.haystack,
                                book_words=_book_words(lengths))
            builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
            ruler = run_suite(GeneratorBackend(generator, tokenizer, name), builder, tasks, lengths, rs.samples,
                              out / "ruler", seed=section.seed, threshold=rs.threshold, max_new_tokens=rs.max_new_tokens,
                              batch_size=section.batch_size,
                              settings=ruler_settings(name, tokenizer, rs.max_new_tokens, section.haystack, weights))
            from evals.plots import write_ruler_plots

            write_ruler_plots(ruler, out / "ruler")  # as `eval ruler` does: scores by length, heatmap
            summary["ruler"] = {"average": ruler["average"], "effective_length": ruler["effective_length"],
                                "threshold": ruler["threshold"]}
            say(f"stage {name}: RULER effective length {ruler['effective_length']}")
        if niah_folder is not None:
            ns = section.niah
            depths = niah.parse_depths(ns.depths)
            done = {niah.cell_key(r) for r in niah_records}
            kept = len(niah.grid_records(niah_records, lengths, depths, ns.samples, section.seed))
            grid = iter(())  # every cell recorded: the haystack is not even read
            if niah.pending_cells(lengths, depths, ns.samples, section.seed, done):
                haystack = load_haystack(section.haystack, tokenizer, max_tokens=2 * max(lengths))
                grid = niah.run_grid(generator, tokenizer, haystack, lengths, depths, needles=ns.needles, ask=ns.ask,
                                     samples=ns.samples, seed=section.seed, fmt=ns.format,
                                     batch_size=section.batch_size, done=done)
            new = 0
            for record in niah_folder.append(r.as_json() for r in grid):  # written as the grid runs
                niah_records.append(niah.record_from_json(record))
                new += 1
            records = niah.grid_records(niah_records, lengths, depths, ns.samples, section.seed)  # old cells and new
            niah.write_csv(records, out / "niah" / "results.csv")
            grid_lengths, grid_depths, scores = niah.score_grid(records)
            from evals.niah_plot import plot_heatmap

            plot_heatmap(grid_lengths, grid_depths, scores, out / "niah" / "heatmap.png", model=f"{name} ({ns.format})")
            summary["niah"] = {"format": ns.format, "mean": {str(n): float(scores[:, j].mean())
                                                             for j, n in enumerate(grid_lengths)}}
            say(f"stage {name}: NIAH ({ns.format}) written ({new} cell{'' if new == 1 else 's'} scored, {kept} kept "
                "from an earlier run)")

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
